#!/usr/bin/env bash
# The next device session's plan (written 2026-11-30, not yet run): what the third session's budget did not reach,
# and the GPU measurements of the CPU work done after it. Two lanes, one per H200 of an nvidia-h200-x2 machine:
#   bash bench/device_session.sh start "bash bench/plans/next-h200x2.sh"; then `wait 560` within 30 s, repeatedly.
# Priority order inside each lane; the 30-minute budget will not reach the end of both lanes.
source "$(dirname "$0")/lanes.sh"
out=$R/results
lane 0 \
  "python3 -m pytest tests/gpu -q -n 0 -p no:cacheprovider --durations=0" \
  "python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out" \
  "python3 bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 --batch-size 32 --out $out" \
  "python3 bench/methods_bench.py --shapes 8b --modes 'bf16,torchao_int8,fp8,fp8[fp8_activation=dynamic]' --work /tmp/bench0 --out $out --tag=-settings2" &
lane 1 \
  "python3 bench/quantize_time.py --method awq --shape 8b --samples 32 --seq-len 512 --work /tmp/bench1 --out $out" \
  "python3 bench/methods_bench.py --shapes 8b --modes 'bf16,awq:/tmp/bench1/llama-8b-awq-4bit-g128-32x512,torchao_int4' --work /tmp/bench1 --out $out --tag=-awq" \
  "python3 bench/seq2seq_bench.py --profile --work /tmp/bench1 --out $out" \
  "python3 bench/architectures_bench.py --out $out" &
wait
