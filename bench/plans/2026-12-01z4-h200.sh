#!/usr/bin/env bash
# Ran 2026-12-01 (fifteenth session, one call held ~27 min, steps 3 and 4 swapped from the fourteenth session's plan):
# step 1 (test_gpu_fastpath.py) timed out at 420 s in its 13th test (int4pack vs torch kernels) after 12 passed; steps
# 2-8 ran. Results indexed in bench/results/INDEX.md.
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
#   (A machine still warm from an earlier call keeps /tmp/sess: `rm -rf /tmp/sess` first in the command, or `start`
#   does nothing and `wait` returns the old steps.)
# .whl/ needs hqq, gemlite, einops and termcolor wheels besides fetch-wheels.sh's (see 2026-12-01w-h200.sh).
# About 25 minutes, one lane, in the order of what each answers (cut from the end if time runs short):
#  0. The decode attention kernel is the default since the fourteenth session (QUANT_DECODE_ATTENTION=triton): every
#     compiled grouped-query model on a GPU in 16-bit attends with it. Its own GPU test passed (tiny Llama, heads of
#     32); the rest of the GPU tests have not run on it: test_gpu_fastpath.py (fp16/bf16/nf4/GPTQ compiled against
#     eager, seq2seq untouched), test_gpu_batching.py (greedy batches = one by one), then the architectures on the GPU
#     (heads of 64-256: Gemma's 256 may need more shared memory than the kernel's 3 stages have; its check then keeps
#     the matmuls for that shape, and the load report says so).
#  1. issue 26, nf4 0.6x: quant.nf4_dequant's kernel alone + cuBLAS beside bitsandbytes' path by rows (the new column
#     of bench/int4_matmul_rows.py; its weight's difference from bitsandbytes' should be 0), its GPU test, and the goal
#     job in bf16 and nf4 with QUANT_NF4_DEQUANTIZE_ROWS=32 (off by default: make 32 the default if nf4 gains and the
#     test passes).
#  2. issue 26, the goal job in ONE run on the new default: bf16, nf4, GPTQ (quantized here) on int4pack (the default
#     backend) and on gptqmodel's Marlin (a 4-bit GEMM that reads the packed weight in its main loop, what GPTQ >= bf16
#     needs at 128 rows: int4pack dequantizes to bf16 and so cannot pass bf16; Marlin's batch 128 is unmeasured; at
#     batch 32 on an H100 it ran 2,729 against int4pack's 1,580 and bf16's 3,445, gpu-bench-8b-allmodes). If Marlin
#     passes bf16, GPTQ batch jobs should run on it.
#  3. issue 26, bf16 5,000: the batch-128 decode step profiled with the kernel (after it: 5.9 ms of attention in 12.7).
#  4. issue 27: start-up of bf16 and GPTQ, cold and warm, with the kernel's compiled check at load (nf4's: cold 21.3 s,
#     warm 15.0 s without it, bench/results/startup-8b-cuda-nf4.md).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 420 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'not kernel_cache_survives'" \
  "timeout 200 python3 bench/int4_matmul_rows.py --out $out --tag=-nf4-triton" \
  "QUANT_NF4_DEQUANTIZE_ROWS=32 timeout 300 $BATCH --batch-size 128 --modes bf16,nf4 --tag=-nf4-dequantize-32" \
  "timeout 600 $BATCH --batch-size 128 --modes 'bf16,nf4,gptq,gptq[gptq_backend=gptq_marlin]' --tag=-all-modes-decode-kernel" \
  "QUANT_STATIC_CACHE_TOKENS=1280 timeout 300 python3 bench/generate_overhead.py --model /tmp/bench0/llama-8b --mode bf16 --device-map cuda:0 --paths compiled --batch-size 128 --new-tokens 64 --repeats 1 --profile --out $out --tag=-b128-cache1280-decode-kernel" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 540 python3 bench/architectures_bench.py --architectures qwen2.5,qwen3,gemma2,gemma3,phi3,mistral --out $out --tag=-decode-kernel" \
  "timeout 420 python3 bench/startup.py --shape 8b --modes bf16,gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-bf16-gptq-decode-kernel"
