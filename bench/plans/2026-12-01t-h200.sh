#!/usr/bin/env bash
# Eleventh session (2026-12-01), ONE H200, ~11 minutes left:
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01t-h200.sh"; then `wait` within 30 s.
# Issue 27: q/k/v and gate/up fused (quant.fused_projections, QUANT_FUSE_PROJECTIONS=auto: on CUDA) end to end at 8B,
# batch 1, compiled: bf16 and the int4pack kernel (HQQ 4-bit g128 on int4pack: GPTQ's kernel, quantized in seconds),
# fusion off then on, each run with its own bf16; then the GPU tests that compare the fused compiled path with eager.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
MODES='bf16,hqq[hqq_group_size=128;hqq_backend=hqq_int4pack]'
lane 0 \
  "timeout 90 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "QUANT_FUSE_PROJECTIONS=off timeout 200 python3 bench/methods_bench.py --shapes 8b --work /tmp/bench0 --modes '$MODES' --paths compiled --new-tokens 256 --out $out --tag=-unfused" \
  "timeout 200 python3 bench/methods_bench.py --shapes 8b --work /tmp/bench0 --modes '$MODES' --paths compiled --new-tokens 256 --out $out --tag=-fused" \
  "timeout 240 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'test_compiled_path_matches_eager or gptq_int4pack'"
