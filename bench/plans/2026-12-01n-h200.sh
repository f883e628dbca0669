#!/usr/bin/env bash
# Ninth session, fifth call, ONE H200 (~2 min): the fourth call's --no-chats-first run met a kernel cache warmed by the
# run before it (batch 128 compiled in 1.7 s, not 8.2): on a fresh machine its first job compiles cold, so the chats
# meet a compile as in the chats-first run.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01n-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 240 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 512 --new-tokens 128 --batch-size 128 --engines padded --jobs 2 --head-start 3 --out $out --no-chats-first --tag=-first-token-no-chats-first-cold"
