#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-02, seventeenth session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560;
#   `start` itself waits ~9 minutes), then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again
#   until done; keep ~3 minutes of budget for the last wait (one cut at 138 s returned nothing).
# .whl/ needs hqq, gemlite, einops and termcolor wheels besides fetch-wheels.sh's (see 2026-12-01w-h200.sh).
# About 28 minutes, one lane, in the order of what each answers (cut from the end if time runs short):
#  1. The seventeenth session's changes on the GPU: streamed weights (default on GPUs now) under device_map auto (its
#     GPU test failed on a bug since fixed: the loader read the plan's modes as .plans) and with transformers'
#     allocator warm-up skipped (peak = the model once); nf4 held in its compute dtype (bf16) on the GPU;
#     quant.int4_gemv against tinygemm and in the compiled decode step (QUANT_INT4_GEMV=triton).
#  2. issue 27, GPTQ batch 1 >= 2.5x bf16 (1.44x; tinygemm reads the 4-bit weights at 28-40% of the bandwidth):
#     quant.int4_gemv alone against tinygemm and cuBLAS bf16 at 1-8 rows on the 8B shapes, its blocks swept at one
#     row (set int4_gemv.block_for from the best), then end to end at batch 1 with and without it, each run with
#     its own bf16 (the ratio within one run). If it wins: make QUANT_INT4_GEMV=triton the default.
#  3. issue 27, nf4 batch 1 >= 1.5x bf16 (1.06x with the model in fp16): in step 2's default run.
#  4. issue 26, nf4 >= 0.6x bf16 (0.69x before) and where its job goes now that the fp16 <-> bf16 casts around every
#     4-bit layer are gone (0.57 s of its 3.15 s prefill in prefill-profile-8b-nf4-nf4-dequantize-32).
#  5. issue 27, warm start 10 s: the app's default placement (device_map auto) with the default streamed weights
#     (12.1 s warm with cuda:0 in the seventeenth session): the auto path streams (the log line says so), and a
#     profiled warm start says where the 6.4 s after the imports go (weights 1.4, compile 2.9, 2.2 s not yet split).
#  6. test_gpu_methods' hqq_gemlite case: its regional capture gave NaN logits on 2026-12-02 (the load fell back to
#     the whole forward); passed on 2026-12-01. Again with the Triton autotune log, to see whether it repeats.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 420 $PYTEST tests/gpu/test_gpu_weight_stream.py tests/gpu/test_gpu.py tests/gpu/test_gpu_fastpath.py -k 'stream or nf4_on_the_gpu_holds or mode_on_gpu or triton_gemv'" \
  "timeout 420 python3 bench/int4_gemv_rows.py --sweep --out $out" \
  "timeout 480 python3 bench/methods_bench.py --shapes 8b --modes bf16,nf4,gptq --work /tmp/bench0 --out $out --tag=-nf4-compute-dtype" \
  "QUANT_INT4_GEMV=triton timeout 420 python3 bench/methods_bench.py --shapes 8b --modes bf16,gptq --work /tmp/bench0 --out $out --tag=-int4-gemv-triton" \
  "timeout 420 $BATCH --batch-size 128 --modes bf16,nf4 --profile --tag=-nf4-compute-dtype" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 1 --profile-warm --checkpoint-dtype bfloat16 --device-map auto --work /tmp/bench0 --out $out --tag=-stream-weights-auto" \
  "TRITON_PRINT_AUTOTUNING=1 timeout 300 $PYTEST tests/gpu/test_gpu_methods.py -k hqq_gemlite"
