#!/usr/bin/env bash
# Sixth session (2026-12-01), one H200 lent (nvidia-h200-x2 not listed): next-h200x2.sh's one-GPU steps.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01c-h200.sh"; then `wait 480` within 30 s, repeatedly.
# Lane 0 (timed): issue 26's goal workload (8B, 128 ragged prompts of 16-1,000 tokens x 128 new tokens) on padded
# batches eager against the job's batch size compiled on demand, GPTQ first so that its quantization (untimed) overlaps
# lane 0t; then issue 27: HQQ 4-bit on gemlite's Triton kernel against tinygemm at 8B, and nf4's compiled step profiled.
# Lane 0t (same GPU): the batching GPU tests (with the on-demand compile's), then issue 29's GPTQ of the 8B shape with
# the process capped at 10 GiB of the GPU (a model larger than the GPU, layer by layer).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0t \
  "timeout 300 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 600 python3 bench/quantize_time.py --method gptq --shape 8b --samples 16 --seq-len 256 --gpu-memory-cap 10 --work /tmp/bench1 --out $out" &
lane 0 \
  "timeout 900 python3 bench/batch_engines.py --shape 8b --modes gptq,bf16,nf4 --engines padded,padded+compiled --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand" \
  "timeout 480 python3 bench/methods_bench.py --shapes 8b --modes 'bf16,hqq,hqq[hqq_backend=hqq_gemlite]' --work /tmp/bench0 --out $out --tag=-gemlite" \
  "timeout 300 python3 bench/generate_overhead.py --model /tmp/bench0/llama-8b --mode nf4 --device-map cuda:0 --paths compiled --profile --out $out --tag=-nf4-8b" &
wait
