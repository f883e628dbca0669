#!/usr/bin/env bash
# Ninth session, fourth call, ONE H200 (~4 min): a chat's first token during a Batch job on the streamer's clock (the
# third call timed the first visible text: a random-weight 8B's tokens mostly decode to nothing, so that was several
# eager tokens), with quant.chats_first on and off.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01m-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
ARGS="--shape 8b --mode bf16 --device-map cuda:0 --prompts 512 --new-tokens 128 --batch-size 128 --engines padded --jobs 2 --head-start 3 --out $out"
lane 0 \
  "timeout 240 python3 bench/chat_during_batch.py $ARGS --tag=-first-token" \
  "timeout 240 python3 bench/chat_during_batch.py $ARGS --no-chats-first --tag=-first-token-no-chats-first"
