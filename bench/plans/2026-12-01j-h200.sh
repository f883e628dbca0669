#!/usr/bin/env bash
# Ninth session, first call, ONE H200 (~8 min): what the goal job's prefill is made of, and a chat beside a compiled job.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01j-h200.sh"
#  - issue 26: bench/prefill_profile.py on the goal's 128 ragged prompts (8B bf16): the loop's prefill, each group,
#    other group sizes, cuBLAS alone, a torch.profiler breakdown, and decoder layers compiled with dynamic shapes;
#  - issue 26: a chat's first token while a compiled batch job runs (the chat yields to the runner: eager at once).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 420 python3 bench/prefill_profile.py --shape 8b --mode bf16 --compiled-layers --work /tmp/bench0 --out $out" \
  "timeout 300 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 128 --engines padded --head-start 3 --out $out --tag=-compiled-job"
