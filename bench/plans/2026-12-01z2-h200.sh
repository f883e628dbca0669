#!/usr/bin/env bash
# Fourteenth session, second device call (one H200, ~11 minutes of device time left): the decode-attention kernel v2
# (a row's loop walks only the chunks between its first and last allowed slot; launch settings in
# quant.decode_attention.KernelConfig), after the first call found v1 0.90x the matmuls at the goal case and its op
# failing under Inductor (a bool mask viewed as uint8).
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01z2-h200.sh"; then `wait 150` within 30 s.
#  1. its GPU test (the compiled decode steps with the kernel give eager's tokens), default launch settings;
#  2. the launch settings swept at the goal case, the finalists compiled over the rows x slots table; writes the
#     fastest as QUANT_DECODE_ATTENTION_KERNEL (with min_rows) to decode-attention-sweep.env;
#  3-4. the goal job in bf16 on the matmuls, then on the kernel with the swept setting (two processes, back to back);
#  5. issue 27: start-up of nf4, cold and warm (its subprocesses now keep the machine's PYTHONPATH).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
ENV=$out/decode-attention-sweep.env
lane 0 \
  "timeout 150 $PYTEST tests/gpu/test_gpu_fastpath.py -k decode_attention_kernel" \
  "timeout 300 python3 bench/decode_attention_bench.py --sweep --finalists 3 --out $out --tag=-sweep" \
  "timeout 200 $BATCH --batch-size 128 --modes bf16 --tag=-bf16-matmul-attention-v2" \
  "if [ -f $ENV ]; then set -a; . $ENV; set +a; fi; QUANT_DECODE_ATTENTION=triton timeout 200 $BATCH --batch-size 128 --modes bf16 --tag=-bf16-triton-attention-v2" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes nf4 --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-nf4"
