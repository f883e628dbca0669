#!/usr/bin/env bash
# Twelfth session (2026-12-01), ONE H200, the fourth run:
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01y-h200.sh"; then `wait 480` within 30 s.
# Issue 26 (GPTQ >= bf16 on the batch job): quant.int4_gemm, a Triton matmul reading tinygemm's packed weight in its
# main loop, against tinygemm, the Triton dequantization + cuBLAS and bf16 by row count (kernels alone, in CUDA
# graphs); the goal job on the int4pack layer class with it for 16-511 rows, beside bf16 in one run; its GPU tests.
# (Trimmed to the device time left: a first start was refused and cost two minutes.)
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
INT4='hqq[hqq_group_size=128;hqq_backend=hqq_int4pack]'
JOB="--shape 8b --work /tmp/bench0 --engines padded --prompts 128 --new-tokens 128 --batch-size 128 --out $out"
lane 0 \
  "timeout 200 python3 bench/int4_matmul_rows.py --out $out" \
  "timeout 90 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "QUANT_INT4_MATMUL_ROWS=16-511 timeout 300 python3 bench/batch_engines.py $JOB --modes 'bf16,$INT4' --tag=-int4-matmul-16-511" \
  "timeout 150 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'int4_layout or triton_matmul'"
