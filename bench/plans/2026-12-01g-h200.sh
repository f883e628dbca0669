#!/usr/bin/env bash
# Eighth session, second call, ONE H200. One lane:
#  1. issue 26: the goal's workload (8B, 128 ragged prompts of 16-1,000 tokens, 128 new tokens, batch 128) on the
#     old default (padded+eager: the job's batch size eager) against the new one (padded: the batch size compiled for
#     the job on demand, one compiled layer, a static cache of the job's length, the ragged prompts prefilled in
#     groups straight into it), and the compiled loop prefilled whole (padded+compiled+padded-prefill), in one run;
#  2. the GPU tests of batching (on-demand compile, ragged prefill, rows = eager) and compiled = eager;
#  3. issue 27: where a warm start's load goes (startup.py --profile-warm; the profiler fixed for Python 3.12).
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01g-h200.sh"; then `wait 480` within 30 s.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 480 python3 bench/batch_engines.py --shape 8b --modes bf16,nf4 --engines padded+eager,padded+compiled+padded-prefill,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand-job-cache" \
  "timeout 360 $PYTEST tests/gpu/test_gpu_batching.py tests/gpu/test_gpu_fastpath.py -k 'batching or compiled_path_matches_eager'" \
  "timeout 200 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 1 --profile-warm --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-profiled"
