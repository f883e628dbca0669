#!/usr/bin/env bash
# Ninth session, second call, ONE H200 (~18 min): the right-padded causal group prefill and the chats' own CUDA stream
# on the GPU, then the goal job in bf16, nf4 and GPTQ in one run.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01k-h200.sh"; then `wait 480` within 30 s
#  - tests/gpu/test_gpu_batching.py whole (the grouped prefill's replies, the on-demand batch, the chat stream test);
#  - bench/prefill_profile.py again: the goal job's prefill with causal unmasked groups (2.648 s with masked ones);
#  - bench/chat_during_batch.py: two jobs one after another (the first compiles batch 128, the second runs compiled),
#    512 prompts so that the job outlasts the chats;
#  - bench/batch_engines.py bf16, nf4, GPTQ with the old default (padded+eager) and the new (padded): the goals' ratios
#    in ONE run (GPTQ quantizes the shape first: minutes).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 300 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 240 python3 bench/prefill_profile.py --shape 8b --mode bf16 --group-tokens 32768 --work /tmp/bench0 --out $out --tag=-causal-groups" \
  "timeout 300 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 512 --new-tokens 128 --batch-size 128 --engines padded --jobs 2 --head-start 3 --out $out --tag=-compiled-job-stream" \
  "timeout 900 python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --engines padded+eager,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand-all-modes"
