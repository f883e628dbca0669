#!/usr/bin/env bash
# Eleventh session (2026-12-01), ONE H200 (two not lent):
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01s-h200.sh"; then `wait 480` within 30 s.
# 1. Issue 27: do q/k/v and gate/up gain from one matmul over concatenated weights at batch 1 (bf16 cuBLAS and
#    int4pack), kernels alone, before building it (bench/fused_projections.py).
# 2. The GPU tests left from the tenth session: test_gpu_methods.py (2-bit gemlite now refused) and test_gpu_torchao.py,
#    then the rest of test_gpu_fastpath.py.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=280"
lane 0 \
  "timeout 300 python3 bench/fused_projections.py --rows 1 4 --out $out" \
  "timeout 500 $PYTEST tests/gpu/test_gpu_methods.py tests/gpu/test_gpu_torchao.py" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'not kernel_cache_survives'"
