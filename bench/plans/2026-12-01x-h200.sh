#!/usr/bin/env bash
# Twelfth session (2026-12-01), ONE H200, the third run:
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01x-h200.sh"; then `wait 480` within 30 s.
# quant.int4_dequant's kernel by block shape inside CUDA graphs (picks its BLOCK), then the GPU tests of every
# int4pack layer (GPTQ, AWQ, HQQ; prompts of 64 tokens or more now dequantize with the Triton kernel by default).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
lane 0 \
  "timeout 240 python3 bench/int4_dequant_blocks.py --out $out" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'test_compiled_gptq_matches_eager or test_int4pack_gives'" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_methods.py -k 'int4pack'"
