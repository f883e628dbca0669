#!/usr/bin/env bash
# Plan for ONE H200 (nineteenth session, third machine): the goal job on DEFAULT settings after QUANT_COMPILE_PREFILL
# became "on" by default (2026-12-02f: bf16 5,025 tok/s with it, 4,434 without), against the eager prefill
# (`+eager-prefill`) in the same run, bf16, nf4 and GPTQ. ~7 minutes.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
BATCH="python3 bench/batch_engines.py --shape 8b --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 900 $BATCH --batch-size 128 --modes bf16,nf4 --engines padded,padded+eager-prefill --tag=-defaults-compiled-prefill"
