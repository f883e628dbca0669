#!/usr/bin/env bash
# Sixth session, second call (one H200, about 9 minutes of device time left): issue 27's nf4 goal with the new Triton
# batch-1 kernel for bitsandbytes 4-bit weights (quant.gemv4bit, option bnb4_kernel=triton).
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01d-h200.sh"; then `wait` within 30 s.
# Lane 0 (timed): bf16, nf4 on bitsandbytes' kernel and nf4 on the Triton kernel at 8B, one run (the ratio to bf16).
# Lane 0t (same GPU, its first ~2 minutes overlap lane 0's checkpoint build): the kernel's GPU test (nf4/fp4 eager
# against bitsandbytes' kernel, compiled against eager).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
lane 0t "timeout 240 $PYTEST tests/gpu/test_gpu_methods.py -k triton_4bit" &
lane 0 "timeout 420 python3 bench/methods_bench.py --shapes 8b --modes 'bf16,nf4,nf4[bnb4_kernel=triton]' --work /tmp/bench0 --out $out --tag=-nf4-triton" &
wait
