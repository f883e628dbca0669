#!/usr/bin/env bash
# The next device session's plan for ONE H200 (written 2026-12-02, sixteenth session).
#   rm -rf /tmp/sess; bash bench/device_session.sh start "bash bench/plans/next-h200.sh"  (carry .whl, timeout_s 560;
#   `start` itself waits ~9 minutes), then `bash bench/device_session.sh wait 480` (timeout_s 540) within 30 s, again
#   until done; keep ~3 minutes of budget for the last wait (one cut at 138 s returned nothing).
# .whl/ needs hqq, gemlite, einops and termcolor wheels besides fetch-wheels.sh's (see 2026-12-01w-h200.sh).
# About 27 minutes, one lane, in the order of what each answers (cut from the end if time runs short):
#  0. quant.weight_stream (QUANT_STREAM_WEIGHTS, off by default): its GPU tests (pinned buffers, streams; a streamed
#     load through the registry compiled against the usual load).
#  1. issue 27, warm start 10 s (15.8 s in the sixteenth session, 3.3 s of its 4.3 s of weights copying from pageable
#     memory): transformers' own load of the 8B checkpoint against the streamed reader (1, 4, 8 threads) and the
#     reader + from_pretrained(state_dict), the tensors asserted equal.
#  2. Start-up end to end with and without QUANT_STREAM_WEIGHTS, one machine: if the warm start gains the seconds the
#     reader gains, make it the default (it covers a named GPU and device_map auto where the model fits one GPU).
#  3. test_gpu_methods.py: the sixteenth session's run was cut after 7 passed (HQQ, AWQ) by the device time.
#  4. issue 26, GPTQ >= bf16 (0.85x: its decode steps dequantize each weight to bf16 for cuBLAS, 0.6 s of the job;
#     Marlin was no faster at 128 rows): is gemlite's fused 4-bit GEMM (HQQ on gemlite, no code needed) faster than
#     int4pack's dequantize + cuBLAS at 128 rows? If so, GPTQ's weights converted to gemlite (same arithmetic,
#     (q - z) * s) is the way; its autotuning at first use may be slow (timeout 420). It may run while lane 0t's
#     nvcc builds Machete on the CPUs: compare its three rows with each other, not with other runs' tok/s.
#  5. issue 26, bf16 5,000 (4,216 in the sixteenth session: prefill 2.59 s + decode 1.08 s GPU): nf4's prefill with and
#     without quant.nf4_dequant, then bf16's prefill at groups of 2,048 (the default is 4,096).
#  M. In a second lane once the start-up steps are done: gptqmodel's Machete (vLLM's Hopper 4-bit GEMM on CUTLASS)
#     built from .whl/cutlass-subset.tar.gz (bench/make_cutlass_subset.sh: make it first if .whl lacks it) and timed
#     by rows against cuBLAS bf16 and int4pack (bench/machete_rows.py): GPTQ's way past bf16 at 128 rows if it beats
#     cuBLAS there (and a batch-1 candidate for issue 27). The build time is unknown (vLLM's Machete is eight
#     heavy CUDA files): it runs while lane 0 goes on, and whatever it reached comes back.
#  6. test_gpu_fastpath.py's rest passed (21/21) on 2026-12-02 but the process then died with SIGSEGV at exit (rc 139):
#     two of its tests (gptqmodel's kernels, LLM.int8) again with PYTHONFAULTHANDLER=1 to see where, if time is left.
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
PYTEST="python3 -m pytest -v -n 0 -p no:cacheprovider --tb=short -rfE -o faulthandler_timeout=300"
lane 0 \
  "timeout 240 $PYTEST tests/gpu/test_gpu_weight_stream.py" \
  "timeout 360 python3 bench/weight_load.py --shape 8b --checkpoint-dtype bfloat16 --threads 1,4,8 --repeats 2 --work /tmp/bench0 --out $out" \
  "timeout 300 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 2 --checkpoint-dtype bfloat16 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-usual-load" \
  "QUANT_STREAM_WEIGHTS=on timeout 300 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 2 --checkpoint-dtype bfloat16 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-stream-weights" \
  "touch $R/startup-done" \
  "timeout 540 $PYTEST tests/gpu/test_gpu_methods.py" \
  "timeout 420 python3 bench/batch_engines.py --shape 8b --engines padded --prompts 128 --new-tokens 128 --work /tmp/bench0 --out $out --batch-size 128 --modes 'bf16,hqq,hqq[hqq_backend=hqq_gemlite]' --tag=-hqq-gemlite-b128" \
  "QUANT_NF4_DEQUANTIZE_ROWS=0 timeout 240 python3 bench/prefill_profile.py --shape 8b --mode nf4 --group-tokens '' --repeats 2 --work /tmp/bench0 --out $out --tag=-nf4-bitsandbytes" \
  "timeout 240 python3 bench/prefill_profile.py --shape 8b --mode nf4 --group-tokens '' --repeats 2 --work /tmp/bench0 --out $out --tag=-nf4-dequantize-32" \
  "timeout 300 python3 bench/prefill_profile.py --shape 8b --mode bf16 --group-tokens 2048 --repeats 3 --work /tmp/bench0 --out $out --tag=-groups-2048" \
  "PYTHONFAULTHANDLER=1 timeout 480 $PYTEST tests/gpu/test_gpu_fastpath.py -k 'int4pack_gives_the_torch or int8_and_unsupported'" &
# Lane 0t: the Machete build (nvcc on 16 cores) waits for the start-up timings (CPU-bound) to finish.
lane 0t \
  "while [ ! -f $R/startup-done ]; do sleep 5; done; mkdir -p /tmp/cutlass && tar xzf .whl/cutlass-subset.tar.gz -C /tmp/cutlass" \
  "GPTQMODEL_CUTLASS_DIR=/tmp/cutlass timeout 1200 python3 bench/machete_rows.py --out $out" &
wait
