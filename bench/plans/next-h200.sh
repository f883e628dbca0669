#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-01, eighth session, not yet run); with two GPUs lent,
# run next-h200x2.sh instead (its lane 0 holds these steps).
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
# device_session.sh now compiles torch's bytecode first (the machine sets PYTHONDONTWRITEBYTECODE=1).
# About 24 minutes, one lane (every timed step alone on the GPU):
#  - issue 26: a chat during a Batch job now that the job's batch size is compiled for it by default (the chat yields
#    to the runner's batch work and runs eagerly: its first token, goal <= 1 s);
#  - issue 26: bf16, nf4 and GPTQ in ONE run on the old default (padded+eager) and the new (padded): the goals' ratios
#    (GPTQ >= bf16, nf4 >= 0.6x bf16) need one run; GPTQ quantizes the shape first (minutes);
#  - issue 27: start-up of nf4 and GPTQ, cold and warm, on the bytecode;
#  - the GPU tests not run on the eighth session's changes: test_gpu_fastpath.py (in two steps: it needs > 540 s),
#    test_gpu_segments.py's one-GPU test, test_gpu_torchao.py whole, test_gpu_methods.py.
# Done on 2026-12-01 (eighth session: bench/plans/2026-12-01f..i-h200.sh): the architectures whose layers differ on the
# regional compile, the 4-bit kernels from CUDA graphs, the on-demand batch with a job-length cache, start-up on bytecode.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 300 python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 128 --engines padded --head-start 3 --out $out --tag=-compiled-job" \
  "timeout 900 python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --engines padded+eager,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand-all-modes" \
  "timeout 420 python3 bench/startup.py --shape 8b --modes nf4,gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-nf4-gptq" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'not kernel_cache_survives'" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_segments.py -k 'kernel_cache_survives or (segments and not two_gpus and not embedding_alone)'" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_torchao.py tests/gpu/test_gpu_methods.py"
