#!/usr/bin/env bash
# Run 2026-12-01 (fifth session), as written: the plan: only `nvidia-h200` (one H200) is lent, so the next-h200x2.sh plan's two-GPU
# part waits; its one-GPU steps run here in two lanes on the same GPU:
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
# Lane 0t: the GPU tests of the CPU work since the last machine (correctness: they share the GPU with the benches).
# Lane 0: the benches, in the order of what closes an issue. They share the GPU with lane 0t while it runs: their
# ratios are inside one run, but absolute tok/s may read low (the results' notes say which ran alongside the tests).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
INT4=tests/gpu/test_gpu_torchao.py::test_compiled_path_matches_eager[int4-g128]
lane 0t \
  "timeout 480 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_segments.py" \
  "timeout 600 $PYTEST tests/gpu/test_gpu_fastpath.py -k seq2seq" \
  "timeout 480 $PYTEST tests/gpu/test_gpu_torchao.py --deselect '$INT4'" \
  "timeout 330 python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=240 '$INT4'" &
lane 0 \
  "python3 bench/api_latency.py --shape 8b-demo-vocab --mode bf16 --device-map cuda:0 --new-tokens 256 --runs 4 --work /tmp/bench0 --out $out --tag=-onstart" \
  "python3 bench/methods_bench.py --shapes 1b --quality --modes 'bf16,torchao_int8,torchao_int4,fp8' --new-tokens 32 --batch-size 8 --work /tmp/bench0 --out $out --tag=-compare-quality-settings2" \
  "python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out" \
  "python3 bench/seq2seq_bench.py --modes bf16,int8,nf4 --repeats 2 --profile --work /tmp/bench0 --out $out" \
  "python3 bench/multi_gpu.py --decode-paths --shapes 8b --modes bf16 --work /tmp/bench0 --out $out --tag=-one-gpu" \
  "python3 bench/startup.py --shape 8b --modes bf16 --device-map cuda:0 --work /tmp/bench0 --out $out" \
  "python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 32 --out $out" &
wait
