#!/usr/bin/env bash
# Tenth session (2026-12-01), the last ~10 minutes of device time on ONE H200 (two were not lent again):
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01q-h200.sh"; then `wait` within 30 s.
# (The all-reduce inside a captured decode step ran in its own short call: 2026-12-01r-h200.sh, passed.)
# 1. Issue 27 (bf16 batch 1 at 71% of its floor, goal 80%): where the compiled 8B step's time goes, kernel by kernel.
# 2. test_gpu_methods.py on the code since the ninth session (its eager chats run on the chats' CUDA stream).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=280"
lane 0 \
  "timeout 60 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "timeout 200 python3 bench/generate_overhead.py --model /tmp/bench0/llama-8b --mode bf16 --device-map cuda:0 --paths compiled --new-tokens 128 --profile --out $out --tag=-b1-8b" \
  "timeout 250 $PYTEST tests/gpu/test_gpu_methods.py"
