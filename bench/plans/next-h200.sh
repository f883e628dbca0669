#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-02, twenty-first session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560),
#   then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again until done.
# About 14 minutes, one lane, cut from the end. The chat bench runs first: it quantizes the 8B shape (about 126 s) that
# the startup bench reuses (plan 2026-12-02j ran the startup bench first, which spent its 240 s quantizing).
#  1. the 8B chat bench, bf16 and GPTQ with QUANT_INT4_GEMV=awq (opt-in llm-awq gemv_fast): 1.85x / 1.79x bf16 in the
#     twenty-first session's two runs; again with the decode-only build to settle the ratio on one more host.
#  2. GPTQ's start-up with QUANT_INT4_GEMV=awq, cold (the decode-only build in a thread beside the weights load: 26.7 s
#     on two CPU cores) and warm (its cached build loads in 0.07 s without importing gptqmodel): issue 27's 40 s / 10 s.
#  3. GPU tests with the default back on tinygemm: the AWQ int4pack test (failed in plan 2026-12-02j only because
#     gemv_fast was the default and the report carried its line), gemv_fast's own test (opt-in), the dequantized path.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "QUANT_INT4_GEMV=awq timeout 480 python3 bench/methods_bench.py --shapes 8b --modes bf16,gptq --work /tmp/bench0 --out $out --tag=-gemv-fast-decode-build" \
  "QUANT_INT4_GEMV=awq timeout 240 python3 bench/startup.py --shape 8b --modes gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-gemv-fast-decode-build" \
  "timeout 330 python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_methods.py -k 'gemv_fast or dequantized_weight or hqq_int4pack or awq_int4pack'"
