#!/usr/bin/env bash
# The next device session's plan (written 2026-11-30, fourth session, not yet run): the GPU checks and measurements of
# the CPU work since the last machine. nvidia-h200-x2 (two H200s):
#   bash bench/device_session.sh start "bash bench/plans/next-h200x2.sh"; then `wait 480` (timeout_s 560) within 30 s,
#   repeatedly. Priority order: the two-GPU part first (issue 29 needs both GPUs), then two lanes, one per GPU.
# Every pytest step prints each test's name as it ends (-v) and dumps all threads' stacks when a test runs past 300 s
# (faulthandler_timeout): the fourth session lost the failure text of four tests and could not tell a hang from a
# slow compile, because -q prints failures only at the end and the machine was given back first.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
# Both GPUs: the split model's compiled segments (issue 29), tests then the 8B bench.
echo "$(date +%T) both: segments tests" >> $R/steps.log
timeout 420 $PYTEST tests/gpu/test_gpu_segments.py tests/gpu/test_gpu.py -k "segment or split" > $R/both-step1.log 2>&1
echo "$(date +%T) both: exit $?; multi_gpu --decode-paths" >> $R/steps.log
NCCL_NVLS_ENABLE=0 timeout 600 python3 bench/multi_gpu.py --decode-paths --shapes 8b --modes bf16 --work /tmp/bench0 \
  --out $out > $R/both-step2.log 2>&1
echo "$(date +%T) both: exit $?; tensor parallel: test, then tp_bench" >> $R/steps.log
NCCL_NVLS_ENABLE=0 timeout 300 $PYTEST tests/gpu/test_gpu_tensor_parallel.py > $R/both-step3.log 2>&1
echo "$(date +%T) both: exit $?; tp_bench 8b bf16" >> $R/steps.log
NCCL_NVLS_ENABLE=0 timeout 360 python3 bench/tp_bench.py --shape 8b --new-tokens 256 --work /tmp/bench0 --out $out \
  > $R/both-step4.log 2>&1
echo "$(date +%T) both: exit $?" >> $R/steps.log
lane 0 \
  "timeout 600 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 900 $PYTEST tests/gpu/test_gpu_torchao.py" \
  "python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out" \
  "python3 bench/api_latency.py --shape 8b-demo-vocab --mode bf16 --device-map cuda:0 --new-tokens 256 --runs 4 --work /tmp/bench0 --out $out --tag=-onstart" \
  "python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 32 --out $out" &
lane 1 \
  "python3 bench/startup.py --shape 8b --modes bf16,nf4 --device-map cuda:0 --work /tmp/bench1 --out $out" \
  "timeout 900 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'seq2seq or t5 or bart'" \
  "python3 bench/seq2seq_bench.py --profile --work /tmp/bench1 --out $out" \
  "python3 bench/methods_bench.py --shapes 1b --quality --modes 'bf16,torchao_int8,torchao_int4,fp8' --new-tokens 32 --batch-size 8 --work /tmp/bench1 --out $out --tag=-compare-quality-settings2" \
  "timeout 900 $PYTEST tests/gpu/test_gpu.py tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_methods.py" \
  "python3 bench/quantize_time.py --method gptq --shape 8b --samples 16 --seq-len 256 --gpu-memory-cap 10 --work /tmp/bench1 --out $out" &
wait
