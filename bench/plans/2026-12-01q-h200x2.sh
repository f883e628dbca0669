#!/usr/bin/env bash
# Tenth session (2026-12-01), if two H200s are lent again for the last ~9 minutes of device time: tp_bench at 8B with
# its compiled row (issue 29's TP >= 1.3x one GPU) and the split in the same run, then the tensor-parallel GPU tests
# (gloo control channel, localize, the compiled path over the ranks).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
both "timeout 270 python3 bench/tp_bench.py --shape 8b --new-tokens 128 --work /tmp/bench0 --out $out --tag=-compiled" step1
both "timeout 220 $PYTEST tests/gpu/test_gpu_tensor_parallel.py" step2
