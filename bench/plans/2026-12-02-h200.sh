#!/usr/bin/env bash
# The sixteenth session's plan for ONE H200 (2026-12-02): next-h200.sh of the fifteenth session, reordered so that
# what decides this session's code (warm-start profile, the goal job profiled, GPTQ int4pack vs Marlin profiled)
# runs before the test files that passed before (steps below keep their old numbers in the notes).
#   bash bench/device_session.sh start "bash bench/plans/next-h200.sh"; then `wait 480` (timeout_s 560) within 30 s.
#   (`start` itself waits ~9 minutes like `wait`; a machine still warm from an earlier call keeps /tmp/sess:
#   `rm -rf /tmp/sess` first in the command, or `start` does nothing and `wait` returns the old steps.)
# .whl/ needs hqq, gemlite, einops and termcolor wheels besides fetch-wheels.sh's (see 2026-12-01w-h200.sh).
# About 25 minutes, one lane, in the order of what each answers (cut from the end if time runs short):
#  0. quant.nf4_dequant is the default from 32 rows since the fifteenth session (QUANT_NF4_DEQUANTIZE_ROWS=32; the goal
#     job's nf4 0.51x -> 0.68x bf16), on its load-time check against bitsandbytes, but its token-level GPU test was cut
#     by the last session's device time: first, alone. Then the rest of test_gpu_fastpath.py that the fifteenth
#     session's call did not reach (it timed out in test_int4pack_gives_the_torch_kernels_tokens after gptq_marlin's
#     ~3.5 min build; the first 12 passed), with the compiled-vs-eager nf4 case again (the new default), and
#     int4pack's op now called by name (torch.ops.quant.int4pack_dequantize) in the compiled layer.
#  1. issue 27, warm start 10 s: bf16's warm start was 19.8 s, 12.7 s in a running app, about 4 s of its load not
#     explained by the weights (5.2 s) or the compile from cache (3.9 s): the load under cProfile (--profile-warm).
#  2. issue 26: the goal job's replies on today's defaults against the matmul attention + bitsandbytes' dequantization
#     in another process (--keep-replies, then --reference: the bench's own column compared a lone engine with itself
#     before the fifteenth session). Random weights: near ties in 16-bit can part a few replies. With --profile: one
#     more job per mode under torch.profiler, split into the decode loop's prefill and decode and the rest (the bf16
#     job's 3.8 s: ~2.4 s prefill + ~0.8 s decode steps leave ~0.6 s unexplained).
#  3. issue 26, bf16 5,000 (4,224-4,384; the decode is ~1 s of the 3.8 s job): the prefill at its default groups of
#     4,096 positions profiled again (decode attention does not touch it; 2.396 s in the ninth session).
#     Before it, nf4's prefill with and without quant.nf4_dequant: where did the nf4 job's 7.4 -> 5.7 s come from?
#  4. test_gpu_methods.py on the new defaults (nf4 from 32 rows, the decode attention kernel).
#  5. (if time is left: GPTQ is quantized here first, ~5 min) GPTQ on int4pack and on Marlin, profiled: Marlin's job
#     was slower (0.62x bf16 against int4pack's 0.85x), but is its decode (a 4-bit GEMM at 128 rows) faster and only
#     its prefill (GEMMs of thousands of rows) slower? Then Marlin for the decode steps and dequantize + cuBLAS for
#     the prefill is GPTQ's way past bf16.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
BATCH="python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out"
lane 0 \
  "timeout 200 $PYTEST tests/gpu/test_gpu_fastpath.py -k nf4_layers_dequantizing" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 1 --profile-warm --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-profiled-fifteenth" \
  "QUANT_DECODE_ATTENTION=matmul QUANT_NF4_DEQUANTIZE_ROWS=0 timeout 300 $BATCH --batch-size 128 --modes bf16,nf4 --keep-replies --tag=-reference-matmul-bnb" \
  "timeout 300 $BATCH --batch-size 128 --modes bf16,nf4 --reference $out/batch-engines-8b-reference-matmul-bnb.json --profile --tag=-defaults-vs-reference" \
  "timeout 600 $BATCH --batch-size 128 --modes 'gptq,gptq[gptq_backend=gptq_marlin]' --profile --tag=-gptq-profiled" \
  "timeout 480 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'not kernel_cache_survives and not nf4_layers_dequantizing and not compiled_seq2seq and not seq2seq_in_llm_int8 and not compiled_gptq_matches_eager'" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_methods.py" \
  "QUANT_NF4_DEQUANTIZE_ROWS=0 timeout 240 python3 bench/prefill_profile.py --shape 8b --mode nf4 --group-tokens '' --repeats 2 --work /tmp/bench0 --out $out --tag=-nf4-bitsandbytes" \
  "timeout 240 python3 bench/prefill_profile.py --shape 8b --mode nf4 --group-tokens '' --repeats 2 --work /tmp/bench0 --out $out --tag=-nf4-dequantize-32" \
  "timeout 300 python3 bench/prefill_profile.py --shape 8b --mode bf16 --group-tokens 2048 --repeats 3 --work /tmp/bench0 --out $out --tag=-4096-fifteenth"
