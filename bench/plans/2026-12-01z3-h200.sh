#!/usr/bin/env bash
# Fourteenth session, third device call (one H200, ~6 minutes of device time left): 2026-12-01z2 found the kernel v2
# failing under Inductor (its scores became float64: Inductor passes the scale as a float64) and the sweep's eager
# timings (decode-attention-sweep's log) fastest at block=64,warps=4,stages=3,masked_loads=1,programs_per_sm=8, now
# KernelConfig's defaults. Mended; once more: the GPU test, the table of the default setting compiled, the goal job on
# the kernel then on the matmuls (back to back).
#   timeout 300 bash bench/device_session.sh start "bash bench/plans/2026-12-01z3-h200.sh"; bash bench/device_session.sh wait 1
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 100 $PYTEST tests/gpu/test_gpu_fastpath.py -k decode_attention_kernel" \
  "timeout 100 python3 bench/decode_attention_bench.py --out $out --tag=-v2" \
  "QUANT_DECODE_ATTENTION=triton timeout 120 $BATCH --batch-size 128 --modes bf16 --tag=-bf16-triton-attention-v2" \
  "timeout 120 $BATCH --batch-size 128 --modes bf16 --tag=-bf16-matmul-attention-v2b"
