#!/usr/bin/env bash
# Twelfth session (2026-12-01), ONE H200, the second run (plan v's batch jobs failed: the machine had no hqq; its
# kernel bench and GPU tests ran on the first version of the kernel, int4mm-shapes-triton-dequant-v1.md; its results were renamed from -triton, a name session 8 had used):
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01w-h200.sh"; then `wait 480` within 30 s.
# .whl/ now also carries hqq 0.2.8.post1, gemlite 0.6.0.post2, einops and termcolor (`pip wheel --no-deps`, hqq with
# DISABLE_CUDA=1), which fetch-wheels.sh does not fetch.
# Issue 26 (GPTQ >= bf16 on the batch job): the int4 layers' dequantization for long inputs by quant.int4_dequant's
# Triton kernel (second version: each packed word loaded once, rows stored contiguously). 1) the kernels alone on the
# 8B shapes by row count; 2) the GPU tests of the dequantized path; 3) the goal job (128 ragged prompts x 128 new
# tokens, batch 128) on the int4pack kernel (HQQ 4-bit g128 on int4pack: GPTQ's layer class, quantized in seconds)
# with the torch dequantization from 256 rows (before), then bf16 and the Triton one from 64 rows (after; the new
# default), then the Triton one from 256 rows (prefills only), each its own process.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=200"
INT4='hqq[hqq_group_size=128;hqq_backend=hqq_int4pack]'
JOB="--shape 8b --work /tmp/bench0 --engines padded --prompts 128 --new-tokens 128 --batch-size 128 --out $out"
lane 0 \
  "timeout 300 python3 bench/int4mm_shapes.py --out $out --tag=-triton" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'int4_layout or dequantized_weight'" \
  "timeout 90 python3 bench/llama_shapes.py 8b /tmp/bench0/llama-8b" \
  "QUANT_INT4_DEQUANTIZE_KERNEL=torch QUANT_INT4_DEQUANTIZE_ROWS=256 timeout 400 python3 bench/batch_engines.py $JOB --modes '$INT4' --tag=-int4-torch-256" \
  "timeout 400 python3 bench/batch_engines.py $JOB --modes 'bf16,$INT4' --tag=-int4-triton-64" \
  "QUANT_INT4_DEQUANTIZE_ROWS=256 timeout 400 python3 bench/batch_engines.py $JOB --modes '$INT4' --tag=-int4-triton-256"
