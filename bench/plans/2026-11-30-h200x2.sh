#!/usr/bin/env bash
# Device plan of 2026-11-30 (third session): two lanes, one per H200 of an nvidia-h200-x2 machine, each with its own
# work folder and kernel cache. Run as one step of bench/device_session.sh:
#   bash bench/device_session.sh start "bash bench/plans/2026-11-30-h200x2.sh"
# Logs: /tmp/sess/lane{0,1}-step*.log; results: /tmp/sess/results.
source "$(dirname "$0")/lanes.sh"
out=$R/results
lane 0 \
  "python3 bench/methods_bench.py --shapes 8b --modes 'bf16,torchao_int8,torchao_int4,fp8,fp8[fp8_activation=dynamic],hqq' --work /tmp/bench0 --out $out" \
  "python3 bench/quantize_time.py --method hqq --shape 8b --work /tmp/bench0 --out $out" \
  "python3 -m pytest tests/gpu/test_gpu_torchao.py tests/gpu/test_gpu_methods.py -q -n 0 -p no:cacheprovider --durations=0" \
  "python3 -m pytest tests/gpu/test_gpu.py tests/gpu/test_gpu_fastpath.py -q -n 0 -p no:cacheprovider --durations=0" &
lane 1 \
  "python3 bench/gpu_bench.py --shapes 1b --modes bf16,nf4,gptq --paths compiled --no-batch-tab --gptq-backends gptq_int4pack --gptq-samples 16 --work /tmp/bench1 --out $out --tag=-after23" \
  "python3 bench/methods_bench.py --shapes 1b --quality --modes 'bf16,int8,nf4,gptq,torchao_int8,torchao_int4,fp8,hqq,awq' --new-tokens 32 --batch-size 8 --work /tmp/bench1 --out $out --tag=-compare-quality" \
  "python3 bench/quantize_time.py --method awq --shape 8b --samples 32 --seq-len 512 --work /tmp/bench1 --out $out" \
  "python3 bench/methods_bench.py --shapes 8b --modes 'bf16,awq:/tmp/bench1/llama-8b-awq-4bit-g128-32x512' --work /tmp/bench1 --out $out --tag=-awq" &
wait
