#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-02, twentieth session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560;
#   `start` itself waits ~9 minutes), then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again
#   until done; keep ~3 minutes of budget for the last wait.
# About 20 minutes, one lane, in the order of what each answers (cut from the end):
#  1. issue 27, GPTQ batch 1: QUANT_INT4_GEMV=awq (quant.awq_gemv, built in the twentieth session, never run on a GPU):
#     llm-awq's gemv_fast built from gptqmodel's sources on the current stream for int4pack layers' 1-7 rows. Its GPU
#     test (check passed, every layer holds the layout, compiled batch-1/4 tokens = tinygemm's eager), then the 8B
#     chat bench with it and without it, bf16 in each run as the ratio's anchor (tinygemm 1.44x bf16; the kernels
#     alone 1.62 against 2.30 ms a step's projections: about 1.8x expected). If faster with equal tokens: make it the
#     default where it builds (its 70 s build is once a machine, in the kernel cache: measure the warm start with it).
#     The same pytest call runs the compiled prefill's token test (bf16, nf4, GPTQ) again: the groups' indices are
#     built on the host and copied from pinned memory since the twentieth session (the eager path's GPU test passed).
#  2. issue 26, GPTQ on the goal job since the groups' indices are built on the host (bf16 5,303 / 5,311 there,
#     GPTQ not run since): bf16 and GPTQ in one run.
#  3. the startup bench for GPTQ with QUANT_INT4_GEMV=awq, kernel cache warm (the build's share of a warm start).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 540 python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_batching.py -k 'gemv_fast or dequantized_weight or compiled_prefill_gives'" \
  "QUANT_INT4_GEMV=awq timeout 600 python3 bench/methods_bench.py --shapes 8b --modes bf16,gptq --work /tmp/bench0 --out $out --tag=-awq-gemv" \
  "timeout 480 python3 bench/methods_bench.py --shapes 8b --modes bf16,gptq --work /tmp/bench0 --out $out --tag=-tinygemm-twentieth" \
  "timeout 600 python3 bench/batch_engines.py --shape 8b --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out --batch-size 128 --modes bf16,gptq --engines padded --tag=-host-indices-gptq" \
  "QUANT_INT4_GEMV=awq timeout 420 python3 bench/startup.py --shape 8b --modes gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-awq-gemv"
