#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-01, seventh session, not yet run); with two GPUs lent,
# run next-h200x2.sh instead (it holds these steps too).
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
# About 22 minutes, one lane (every timed step alone on the GPU):
#  - issue 27: the architectures on the regional compile (QUANT_COMPILE_REGIONS=layers, default since the seventh
#    session; the whole-forward run of 2026-11-30 met >= 3x on all 11): the ones whose layers differ (Gemma 3's sliding
#    and global layers, Phi-3's window, Mixtral's experts) and Qwen3; start-up of nf4 and GPTQ, cold and warm, and on
#    other weights of the same shape;
#  - issue 26: a batch size compiled on demand now that a compile is one layer's (90-103 s before at batch 128): if it
#    is a few seconds, QUANT_COMPILE_BATCH_ON_DEMAND can be on by default;
#  - issue 27: the 4-bit kernels alone timed from CUDA graphs, then nf4 on quant.gemv4bit end to end.
# The GPU tests passed at the end of the seventh session (tests/gpu/test_gpu_fastpath.py, -segments one GPU, -batching).
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "timeout 600 python3 bench/architectures_bench.py --architectures qwen3,gemma3,phi3,mixtral --work /tmp/arch --out $out --tag=-regions" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes nf4 --warm-starts 1 --other-weights --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-nf4" \
  "timeout 420 python3 bench/startup.py --shape 8b --modes gptq --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-gptq" \
  "timeout 600 python3 bench/batch_engines.py --shape 8b --modes bf16,gptq --engines padded,padded+compiled --prompts 128 --new-tokens 128 --batch-size 128 --work /tmp/bench0 --out $out --tag=-on-demand-regions" \
  "timeout 300 python3 bench/gemv4bit_kernels.py --out $out" \
  "timeout 420 python3 bench/methods_bench.py --shapes 8b --modes 'bf16,nf4,nf4[bnb4_kernel=triton]' --work /tmp/bench0 --out $out --tag=-nf4-triton-graphtuned"
