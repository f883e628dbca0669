#!/usr/bin/env bash
# Plan 2026-12-02h for ONE H200 (written in the nineteenth session, run 2026-12-02 08:36-08:56 UTC, twentieth session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560;
#   `start` itself waits ~9 minutes), then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again
#   until done; keep ~3 minutes of budget for the last wait.
# About 20 minutes, one lane, in the order of what each answers (cut from the end):
#  1. issue 27, GPTQ batch 1 >= 2.5x bf16 (1.49x on tinygemm): the two batch-1 4-bit kernels gptqmodel builds from
#     source and no run has timed alone, ExLlamaV2's gemm_half_q_half and llm-awq's gemv_fast, against tinygemm and
#     cuBLAS bf16 on the 8B projections at 1-4 rows, as gptqmodel builds them (legacy default stream: timed eagerly) and
#     built again on PyTorch's current stream (timed in CUDA graphs, capture checked; outputs checked). If one
#     reads its weights well above tinygemm's 1.6-1.8 TB/s, it is the next batch-1 backend to put in the graphed step.
#  2. bench/kv_placement.py (seconds): the grouped prefill's key/value placement into the static cache, torch's indexing
#     and quant.kv_placement's kernel (QUANT_KV_PLACEMENT=triton, built in the nineteenth session), against a plain
#     copy of the same bytes.
#  2b. GPU tests of the nineteenth session: test_gpu.py's GPTQ kernels (an eager chat on ExLlamaV2 stays on the default
#     stream) and test_gpu_batching.py's placement kernel (a compiled job's replies equal torch's placement's).
#  3. issue 26 on the defaults (the compiled prefill on since the nineteenth session): the goal job, bf16, nf4 and
#     GPTQ in one run (bf16 ran 5,025 and 4,870 tok/s in the nineteenth session's two runs; GPTQ 0.83x there),
#     profiled with the GPU's idle gaps (bench.common.gpu_idle): the bf16 job kept the GPU busy 85% of its 3.4 s;
#     beside it the same with QUANT_KV_PLACEMENT=triton (if faster in every mode with equal replies: its default).
#  4. the chat during a compiled Batch job with the compiled prefill (first token goal 1 s; 0.027-0.059 s before).
#  5. issue 26's "int8 no slower than today", never run on the goal job: int8 (LLM.int8, eager) on the default engine
#     against the padded prefill (the engine before the grouped prefill) in one run.
#  6. (cut first) every architecture family's compiled prefill check with Inductor on the GPU (passed on the CPU).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
BATCH="python3 bench/batch_engines.py --shape 8b --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 600 python3 bench/int4_gemv_kernels.py --out $out" \
  "timeout 120 python3 bench/kv_placement.py --out $out" \
  "timeout 420 python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE tests/gpu/test_gpu.py tests/gpu/test_gpu_batching.py -k 'gptq_kernels or placement_kernel'" \
  "timeout 900 $BATCH --batch-size 128 --modes bf16,nf4,gptq --engines padded,padded+triton-placement --profile --tag=-defaults-nineteenth" \
  "timeout 300 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 128 --engines padded --head-start 3 --out $out --tag=-compiled-prefill" \
  "timeout 600 $BATCH --batch-size 128 --modes int8 --engines padded,padded+padded-prefill --tag=-int8" \
  "timeout 420 python3 bench/compiled_prefill_families.py --device cuda:0 --out $out"
