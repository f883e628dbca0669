#!/usr/bin/env bash
# The next device session's plan (written 2026-12-01, fifth session, not yet run), for nvidia-h200-x2 (two H200s):
#   bash bench/device_session.sh start "bash bench/plans/next-h200x2.sh"; then `wait 480` (timeout_s 560) within 30 s,
#   repeatedly; give the machine back when `done` shows. About 25 minutes in all; the order is what closes issues.
# Done on 2026-12-01 (one H200, bench/plans/2026-12-01-h200.sh): batching/torchao/seq2seq GPU tests, the batch engines
# at 8B, the API's first words, the torchao Compare timing, start-up at 8B, chat during batch, segments on one GPU;
# on two H200s only tests/gpu/test_gpu_segments.py (one split passed; the embedding-alone split failed its capture,
# now refused before compiling: the new test checks that).
# With only one GPU lent: run next-h200.sh instead. Sixth session (2026-12-01, one H200): the on-demand batch, GemLite,
# nf4's profile and Triton kernel, GPTQ under a 10 GiB cap ran (bench/plans/2026-12-01c-h200.sh, -d-h200.sh); the
# steps below that they covered are gone, next-h200.sh's are added. New since: the Load choice
# device_map=tensor_parallel (tests/gpu/test_gpu_tensor_parallel.py's second test runs it on two GPUs). Seventh
# session (one H200, 2026-12-01e-h200.sh): the regional compile, the grouped prefill at 8B and the GPU tests ran; the
# segments over two GPUs now compile one layer for all (QUANT_COMPILE_REGIONS=layers) too. Eighth session (one H200,
# 2026-12-01f..i-h200.sh): architectures on the regional compile, 4-bit kernels from graphs, the job-length batch cache.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
both() {  # a step on both GPUs, logged like a lane's
  echo "$(date +%T) both: $1" >> $R/steps.log
  (export NCCL_NVLS_ENABLE=0 QUANT_KERNEL_CACHE=/tmp/kcache-both; eval "$1") > $R/both-$2.log 2>&1
  echo "$(date +%T) both: exit $?" >> $R/steps.log
}
# Issue 29 on both GPUs: the segments' and TP's GPU tests, then the 8B goals (split >= 0.8x, TP >= 1.3x one GPU).
both "timeout 420 $PYTEST tests/gpu/test_gpu_segments.py tests/gpu/test_gpu_tensor_parallel.py" step1
both "timeout 600 python3 bench/multi_gpu.py --decode-paths --shapes 8b --modes bf16 --work /tmp/bench0 --out $out" step2
both "timeout 420 python3 bench/tp_bench.py --shape 8b --new-tokens 256 --work /tmp/bench0 --out $out" step3
# Lane 0: next-h200.sh's steps (start-up of nf4 and GPTQ, the GPU tests; the ninth session ran the chat during a
# compiled job and the on-demand batch in every mode); lane 1: nothing else, so that lane 0's timings have their GPU alone.
lane 0 \
  "timeout 420 python3 bench/startup.py --shape 8b --modes nf4,gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-nf4-gptq" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'not kernel_cache_survives'" &
wait
# Issue 29's 70B-class shape (Llama-3.1-70B widths, 40 layers, 72.7 GB): one GPU vs split over both, against its floor.
both "timeout 1200 python3 bench/multi_gpu.py --decode-paths --shapes 70b-40layers --modes bf16 --new-tokens 32 --work /tmp/bench0 --out $out --tag=-70b" step4
