#!/usr/bin/env bash
# The eighteenth session's second plan for ONE H200 (~8 of the 10.8 device minutes left after 2026-12-02c-h200.sh).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560),
#   then `bash bench/device_session.sh wait N` within 30 s, N from the budget left (keep the last call short).
# In the order of what each answers (cut from the end):
#  1. issue 27, warm start: where the app's modules' import goes on the GPU host (5.7 s there, 2.5 s on the 2-core
#     CPU box, 2026-12-02c): python -X importtime, twice (the second with the page cache warm).
#  2. The two GPU test failures of 2026-12-02c, both in the tests (fixed on the CPU): nf4's layer class on a GPU is
#     quant.nf4_dequant's subclass of Linear4bit; nf4 held in bf16.
#  3. issue 27, warm start with the app's placement (device_map auto) after the meta model moved to
#     torch.device('meta') (1.19 s of the profiled warm load before): two warm starts.
#  4. test_gpu_methods' hqq_gemlite case with the noise check fixed (2026-12-02c: a first-token difference crashed the
#     check with embedding's dtype error instead of judging it).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
IMPORTS="import torch, transformers; from quant.generation import GenerationSettings, stream_chat; from quant.loader import LoadRequest; from quant.registry import ModelRegistry"
lane 0 \
  "python3 -X importtime -c '$IMPORTS' 2> /dev/null; python3 -X importtime -c '$IMPORTS' 2> $out/importtime-h200.txt" \
  "timeout 240 $PYTEST tests/gpu/test_gpu.py -k nf4" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 2 --checkpoint-dtype bfloat16 --device-map auto --work /tmp/bench0 --out $out --tag=-meta-skeleton" \
  "timeout 280 $PYTEST tests/gpu/test_gpu_methods.py -k hqq_gemlite"
