#!/usr/bin/env bash
# Eighth session, third call, ONE H200, one lane:
#  0. how this machine's Python finds its bytecode (the wheels in /tmp/site are installed with pip --no-compile, so
#     every start may compile their sources: 1.8 s of `compile` in the profiled warm start of the second call), then
#     compile it as a pip install does (compileall);
#  1. issue 27: start-up to the first token again, on that bytecode;
#  2. issue 26: nf4 at the goal's workload, eager batch against the batch compiled for the job (the second call's
#     nf4 rows were cut short by a free-memory check that missed the memory torch held unused: fixed).
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01h-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "(env | grep -i '^PYTHON'; python3 -c 'import sys, os, torch; d = os.path.dirname(torch.__file__); print(sys.version); print(d, \"writable\", os.access(d, os.W_OK), \"pycache\", os.path.isdir(d + \"/__pycache__\"))'; ls /tmp/site/transformers/__pycache__ 2>&1 | head -2; time python3 -m compileall -q -j 16 /tmp/site > /dev/null; ls /tmp/site/transformers/__pycache__ | wc -l) > $out/bytecode.txt 2>&1" \
  "timeout 240 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 2 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-bytecode" \
  "timeout 300 python3 bench/batch_engines.py --shape 8b --modes nf4 --engines padded+eager,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand-job-cache-nf4"
