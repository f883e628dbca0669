#!/usr/bin/env bash
# The next two-GPU session's plan (nvidia-h200-x2), rewritten in the tenth session (2026-12-01) after its two-GPU run
# (bench/plans/2026-12-01p-h200x2.sh: the segments' GPU tests 3/3, a split decoding compiled at 0.98x one GPU at 8B
# and at 92% of its floor at the 70B widths; tensor parallel eager 0.06x, its static-cache path and its GPU test hung).
#   bash bench/device_session.sh start "bash bench/plans/next-h200x2.sh"; then `wait 480` (timeout_s 560) within 30 s.
# Left for two GPUs, about 15 minutes: the tensor-parallel GPU tests again (the control messages now go over gloo: the
# hang was in the ranks' answers over nccl; the ranks' plain slices (localize); the compiled path over the ranks), the
# workers dumping their stacks if nccl's watchdog aborts them; tp_bench with its compiled row and the split in one run
# (issue 29's TP >= 1.3x one GPU), rows written one by one; the 70B-class shape's batch job split over both GPUs
# (issue 29: "loads, chats and batches"). With only one GPU lent: run next-h200.sh instead.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
# First (fifteenth session): the split 4-bit models' Triton launches on their layers' own GPU (triton_support.launch_device;
# Triton launches on the current device, and nf4/GPTQ layers dequantize with our kernels from 32 rows by default), and
# the segments' tests again on today's defaults.
both "timeout 300 $PYTEST tests/gpu/test_gpu_segments.py" step0
both "timeout 420 $PYTEST tests/gpu/test_gpu_tensor_parallel.py" step1
both "timeout 420 python3 bench/tp_bench.py --shape 8b --new-tokens 128 --work /tmp/bench0 --out $out --tag=-compiled" step2
rm -rf /tmp/bench0/llama-8b
both "timeout 900 python3 bench/multi_gpu.py --shapes 70b-40layers --modes bf16 --work /tmp/bench0 --out $out --tag=-70b-batch" step3
