#!/usr/bin/env bash
# A short second call on one H200 (the session's last ~9 device minutes), run directly (no detached job):
#   bash bench/plans/2026-12-01b-h200-short.sh     (run timeout_s 450; everything under $OUT/sess)
# Lane 0t: the GPU tests fixed after the first call (test_gpu_batching's memory check; torchao's g256 and unload tests
# on a model their layers fit). Lane 0: continuous batching with CUDA graphs and async batching (QUANT_CONTINUOUS_STEP=
# graphs) against padded batches, 8B bf16, the issue-26 workload.
export R=/tmp/sess
mkdir -p $R/results
(ls /tmp/site/gptqmodel >/dev/null 2>&1 || bash .whl/device-setup.sh) > $R/setup.log 2>&1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAX_JOBS=16
source bench/plans/lanes.sh
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=150"
lane 0t \
  "timeout 120 $PYTEST tests/gpu/test_gpu_batching.py" \
  "timeout 200 $PYTEST tests/gpu/test_gpu_torchao.py -k 'unload or (compiled_path and g256)'" &
lane 0 \
  "timeout 330 python3 bench/batch_engines.py --shape 8b --modes bf16 --engines continuous+graphs,padded --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $R/results --tag=-graphs" &
wait
cat $R/steps.log
tar czf "${OUT:-/tmp}/sess.tgz" -C /tmp sess
