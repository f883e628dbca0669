#!/usr/bin/env bash
# Plan for ONE H200, run 2026-12-02 (nineteenth session, first machine; written in the eighteenth).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560;
#   `start` itself waits ~9 minutes), then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again
#   until done; keep ~3 minutes of budget for the last wait.
# About 20 minutes, one lane, in the order of what each answers (cut from the end):
#  1. QUANT_COMPILE_PREFILL=on on the GPU (built and CPU-tested in the eighteenth session, off by default until
#     measured): its GPU test (bf16, nf4, GPTQ: the compiled prefill's tokens against the eager prefill's).
#  2. issue 26, bf16 >= 5,000 tok/s (4,308 in 2026-12-02c): the goal job with the batch prefill compiled against the
#     eager prefill in ONE run, each mode (bf16, nf4, GPTQ), the compiled-prefill job profiled (it runs first). The
#     eager prefill was 2.6 s of the bf16 job's 3.8 s, its matmuls ~1.3 s of it: if the compiled one is faster for
#     every mode and its replies agree, make QUANT_COMPILE_PREFILL=on the default (quant/settings.py) and say the
#     compile it adds to a batch job's first start.
#  3. The same with the chat-during-batch bench? Not planned: the prefill runs on the runner thread as before.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 420 $PYTEST tests/gpu/test_gpu_batching.py -k compiled_prefill" \
  "timeout 900 $BATCH --batch-size 128 --modes bf16,nf4,gptq --engines padded+compiled-prefill,padded --profile --tag=-compiled-prefill"
