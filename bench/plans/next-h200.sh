#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-01, sixth session, not yet run); with two GPUs lent,
# run next-h200x2.sh instead (it holds these steps too).
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
# About 20 minutes. Lane 0 (timed, alone on the GPU after lane 0t's tests):
#  - issue 26: the grouped prefill of ragged chunks (quant.ragged, now the default) against the whole padded prefill
#    at the goal's workload, bf16/nf4/GPTQ, one run;
#  - issue 27: the 4-bit kernels alone timed from CUDA graphs (the first run was launch-bound), then nf4 on
#    quant.gemv4bit end to end now that its autotuner times tiles from CUDA graphs (0.60x bitsandbytes before); nf4's
#    start-up and whether the kernel cache serves other weights of the same shape.
# Lane 0t (same GPU, first): the batching GPU tests (the on-demand test's fix and the grouped prefill's new test).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0t "timeout 300 $PYTEST tests/gpu/test_gpu_batching.py" &
lane 0 \
  "timeout 600 python3 bench/gemv4bit_kernels.py --out $out" \
  "timeout 420 python3 bench/methods_bench.py --shapes 8b --modes 'bf16,nf4,nf4[bnb4_kernel=triton]' --work /tmp/bench0 --out $out --tag=-nf4-triton-graphtuned" \
  "timeout 900 python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --engines padded+padded-prefill,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-grouped-prefill" \
  "timeout 600 python3 bench/startup.py --shape 8b --modes nf4 --warm-starts 1 --other-weights --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-other-weights" &
wait
