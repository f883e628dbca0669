#!/usr/bin/env bash
# Tenth session (2026-12-01), ONE H200, a short call (the rest of the device time kept for two GPUs if they are lent
# again): the row-wise all-reduce (quant.tensor_parallel.RowwiseLinear) inside a captured decode step, with a one-rank
# nccl group: the part of the compiled path over the ranks that one GPU can check.
source "$(dirname "$0")/lanes.sh"
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
lane 0 "timeout 220 $PYTEST tests/gpu/test_gpu_tensor_parallel.py -k one_gpu"
