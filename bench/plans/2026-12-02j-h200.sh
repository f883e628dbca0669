#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-02, twenty-first session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560),
#   then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again until done.
# About 11 minutes, one lane, cut from the end:
#  1. gemv_fast as the default (QUANT_INT4_GEMV=awq), built as the decode kernel alone on ATen's headers (26.7 s on two
#     CPU cores here against about 80 for the same kernel with <torch/extension.h>), in the background while the
#     weights load: its GPU test (built, checked, every layer on it, compiled b1/b4 tokens = tinygemm's eager), the
#     dequantized path's test with tinygemm pinned, and HQQ's / AWQ's int4pack tests (their layers take it now).
#  2. the startup bench for GPTQ, cold (the build inside it) and warm (its cached build loads in 0.07 s here, without
#     importing gptqmodel: 3.9 s here before).
#  3. the 8B chat bench, bf16 and GPTQ on the defaults (GPTQ b1 on gemv_fast 1.85x bf16 in the twenty-first session's
#     first run, with QUANT_INT4_GEMV=awq set; this runs the default build).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 330 python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_methods.py -k 'gemv_fast or dequantized_weight or hqq_int4pack or awq_int4pack'" \
  "timeout 240 python3 bench/startup.py --shape 8b --modes gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-gemv-fast-default" \
  "timeout 480 python3 bench/methods_bench.py --shapes 8b --modes bf16,gptq --work /tmp/bench0 --out $out --tag=-gemv-fast-default"
