#!/usr/bin/env bash
# Tenth session (2026-12-01), the last ~10 minutes of device time on ONE H200 (two were not lent again):
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01q-h200.sh"; then `wait` within 30 s.
# 1. Issue 29: the row-wise all-reduce (quant.tensor_parallel.RowwiseLinear) inside a captured decode step, on one GPU
#    with a one-rank nccl group: the riskiest part of the compiled path over the ranks that one GPU can check.
# 2. Issue 27 (bf16 batch 1 at 71% of its floor, goal 80%): where the compiled 8B step's time goes, kernel by kernel.
# 3. test_gpu_methods.py on the code since the ninth session (its eager chats run on the chats' CUDA stream).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=280"
lane 0 \
  "timeout 240 $PYTEST tests/gpu/test_gpu_tensor_parallel.py -k one_gpu" \
  "timeout 60 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "timeout 200 python3 bench/generate_overhead.py --model /tmp/bench0/llama-8b --mode bf16 --device-map cuda:0 --paths compiled --new-tokens 128 --profile --out $out --tag=-b1-8b" \
  "timeout 290 $PYTEST tests/gpu/test_gpu_methods.py"
