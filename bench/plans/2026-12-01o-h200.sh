#!/usr/bin/env bash
# Ninth session, sixth call, ONE H200 (~2 min): the goal job in bf16 on this session's code (causal prefill groups of
# at most 4,096 positions, chats on their own stream), the default engine alone.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01o-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 200 python3 bench/batch_engines.py --shape 8b --modes bf16 --engines padded+eager,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-groups-4096"
