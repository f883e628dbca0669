#!/usr/bin/env bash
# Seventh session, ONE H200 (nvidia-h200-x2 not lent). All steps in one lane, one after another, so that every timed
# step has the GPU to itself:
#  1. issue 27: the decoder layer compiled once for all layers (QUANT_COMPILE_REGIONS=layers, the new default) against
#     the whole forward in one graph (model): batch-1 decode of bf16 / nf4 / GPTQ in one run (same process, same
#     GPU), then start-up to the first token, cold and warm kernel cache, each way;
#  2. issue 26: the grouped prefill of ragged chunks against the whole padded prefill at the goal's workload;
#  3. the GPU tests of the compiled path (now regional by default), the segments on one GPU, the batching.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01e-h200.sh"; then `wait 480` within 30 s.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 600 python3 bench/methods_bench.py --shapes 8b --modes bf16,nf4,gptq --paths compiled,compiled-model --work /tmp/bench0 --out $out --tag=-regions" \
  "timeout 420 python3 bench/startup.py --shape 8b --modes bf16 --compile-regions layers,model --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-regions" \
  "timeout 600 python3 bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --engines padded+padded-prefill,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-grouped-prefill" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_fastpath.py tests/gpu/test_gpu_segments.py -k 'not two_gpus and not embedding_alone'" \
  "timeout 300 $PYTEST tests/gpu/test_gpu_batching.py"
