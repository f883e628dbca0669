#!/usr/bin/env bash
# Eleventh session (2026-12-01), ONE H200, the last ~6 minutes: plan t's bf16 rows once more on another machine
# (bf16 fused measured 80.5% of its floor: a thin margin), fusion off then on.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01u-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 90 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "QUANT_FUSE_PROJECTIONS=off timeout 100 python3 bench/methods_bench.py --shapes 8b --work /tmp/bench0 --modes bf16 --paths compiled --new-tokens 256 --out $out --tag=-unfused-again" \
  "timeout 100 python3 bench/methods_bench.py --shapes 8b --work /tmp/bench0 --modes bf16 --paths compiled --new-tokens 256 --out $out --tag=-fused-again"
