#!/usr/bin/env bash
# Tenth session (2026-12-01), two H200s lent (nvidia-h200-x2): issue 29's runs, in the order that closes it.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01p-h200x2.sh"; then `wait 480` within 30 s.
# next-h200x2.sh's steps without its lane 0 (one-GPU work, left to next-h200.sh): the device time goes to what only
# two GPUs can measure.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
nvidia-smi topo -m > $R/topo.log 2>&1
both "timeout 420 $PYTEST tests/gpu/test_gpu_segments.py tests/gpu/test_gpu_tensor_parallel.py" step1
both "timeout 420 python3 bench/tp_bench.py --shape 8b --new-tokens 256 --work /tmp/bench0 --out $out" step2
both "timeout 600 python3 bench/multi_gpu.py --decode-paths --shapes 8b --modes bf16 --work /tmp/bench0 --out $out" step3
rm -rf /tmp/bench0/llama-8b
both "timeout 1200 python3 bench/multi_gpu.py --decode-paths --shapes 70b-40layers --modes bf16 --new-tokens 32 --work /tmp/bench0 --out $out --tag=-70b" step4
