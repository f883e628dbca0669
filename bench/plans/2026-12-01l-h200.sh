#!/usr/bin/env bash
# Ninth session, third call, ONE H200 (~10 min): chats first (quant.chats_first: batch work pauses at its safe points
# while an eager chat waits for its first token; a lower switch interval meanwhile), measured and tested.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01l-h200.sh"; then `wait 480` within 30 s
#  - the GPU tests of the paths touched: test_gpu_batching.py whole, test_gpu_fastpath.py's compiled-against-eager,
#    deferred stop, seeded sampling and seq2seq tests (the decode loop has a pause point now);
#  - bench/chat_during_batch.py as in the second call (two jobs: the first compiles batch 128, the second runs it);
#  - bench/prefill_profile.py with smaller groups (a chat waits for at most one group);
#  - bench/batch_engines.py bf16 alone, the default engine: the job's rate with the pause points (no chat: no pause).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 420 $PYTEST tests/gpu/test_gpu_batching.py tests/gpu/test_gpu_fastpath.py -k 'not fastpath or compiled_path_matches_eager or deferred_stop or seeded_sampling or compiled_seq2seq'" \
  "timeout 300 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 512 --new-tokens 128 --batch-size 128 --engines padded --jobs 2 --head-start 3 --out $out --tag=-chats-first" \
  "timeout 240 python3 bench/prefill_profile.py --shape 8b --mode bf16 --group-tokens 8192,4096 --work /tmp/bench0 --out $out --tag=-causal-groups-smaller" \
  "timeout 300 python3 bench/batch_engines.py --shape 8b --modes bf16 --engines padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-chats-first"
