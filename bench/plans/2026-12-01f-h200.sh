#!/usr/bin/env bash
# Eighth session, first call, ONE H200 (nvidia-h200-x2 not lent). One lane, every timed step alone on the GPU:
#  1. issue 27: where a warm start's load goes (startup.py --profile-warm: cProfile of the load on both threads and
#     dynamo's phases), with the new "in a running app" column;
#  2. issue 27: the 4-bit batch-1 kernels alone, timed as CUDA graph replays (the first run timed Python launches);
#  3. issue 27: the architectures whose layers differ, on the regional compile (the default since the seventh session);
#  4. issue 26: the goal workload's prefill alone (1 new token), grouped against padded: how much of the job is prefill;
#  5. the torchao GPU tests, which now assert the regional compile.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01f-h200.sh"; then `wait 480` within 30 s.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 360 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 1 --profile-warm --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-profiled" \
  "timeout 300 python3 bench/gemv4bit_kernels.py --out $out" \
  "timeout 420 python3 bench/architectures_bench.py --architectures qwen3,gemma3,phi3,mixtral --work /tmp/arch --out $out --tag=-regions" \
  "timeout 240 python3 bench/batch_engines.py --shape 8b --modes bf16 --engines padded+padded-prefill,padded --prompts 128 --new-tokens 1 --batch-size 128 --work /tmp/bench0 --out $out --tag=-prefill-only" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_torchao.py -k 'compiled_path_matches_eager'"
