"""Operator settings, read from environment variables (documented in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import QuantError

DEFAULT_HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


class SettingsError(QuantError):
    """An operator setting (environment variable) that cannot be read; the app and the CLI refuse to start on it."""


def int_setting(name: str, default: int, minimum: int = 1) -> int:
    """An integer environment variable, or `default` when unset; a clear error naming it when it is not one."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a whole number.", f"Unset it for the default, {default}.") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} is below {minimum}.", f"Unset it for the default, {default}.")
    return value


def _int_list_setting(name: str, default: str) -> tuple[int, ...]:
    """A comma-separated list of positive integers, sorted, without repeats."""
    text = os.environ.get(name, "").strip() or default
    try:
        values = {int(part) for part in text.replace(" ", "").split(",") if part}
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a comma-separated list of whole numbers.",
                            f"For example {name}={default}.") from None
    if not values or min(values) < 1:
        raise SettingsError(f"{name}={text!r} needs whole numbers of at least 1.", f"For example {name}={default}.")
    return tuple(sorted(values))


BATCH_ENGINES = ("auto", "continuous", "padded")
BATCH_PREFILLS = ("grouped", "padded")
COMPILE_PREFILLS = ("on", "off")
CONTINUOUS_STEPS = ("library", "graphs")
COMPILE_REGIONS = ("layers", "model")
FUSE_PROJECTIONS = ("auto", "on", "off")
STREAM_WEIGHTS = ("auto", "on", "off")
INT4_DEQUANTIZE_KERNELS = ("auto", "torch")
INT4_GEMVS = ("tinygemm", "awq")
DECODE_ATTENTIONS = ("triton", "matmul")


def _choice_setting(name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default when unset); a clear error naming the setting otherwise."""
    text = os.environ.get(name, "").strip().lower() or choices[0]
    if text not in choices:
        raise SettingsError(f"{name}={text!r} is not one of {', '.join(choices)}.",
                            f"Unset it for the default, {choices[0]}.")
    return text


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _flag_off(name: str) -> bool:
    """For settings that are on unless the operator says otherwise."""
    return os.environ.get(name, "").strip().lower() in {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    default_model: str
    """QUANT_DEFAULT_MODEL: the model the app proposes first (a Hub id, a local folder or `demo:<name>`)."""
    trust_remote_code: bool
    """QUANT_TRUST_REMOTE_CODE=1: allow checkpoints that ship their own modelling code. Off unless the operator says so."""
    memory_budget: str | None
    """QUANT_MEMORY_BUDGET (e.g. "16GiB"): the most that all loaded models' weights together may take; LRU idle ones are
    evicted. Static KV caches of the compiled path (at load, and compiled for Batch jobs) come on top."""
    max_loaded_models: int
    """QUANT_MAX_LOADED_MODELS: how many models stay loaded at once (default 3)."""
    fast_generation: str
    """QUANT_FAST_GENERATION: "auto" (default: static cache + compiled decode on a GPU where it was measured
    faster: 16/32-bit, nf4/fp4, GPTQ int4pack, Marlin and torch kernels), "all" (also the CPU: for experiments and
    tests), or "off"."""
    static_cache_tokens: tuple[int, ...]
    """QUANT_STATIC_CACHE_TOKENS: prompt + reply tokens the compiled path holds (default "512,2048", each at most
    the context). Several lengths give batches (size > 1) a loop per length, and a call takes the shortest that fits:
    a compiled step attends over its whole cache, which at batch 32 is a fifth of the step (8B Llama, H100: 8.1 ms
    per step with 512 slots, 10.2 ms with 2048; bench/results/generate-overhead-llama-8b-bf16-cuda-b32-*). Batch 1
    reads little cache and keeps only the longest."""
    compiled_batch_sizes: tuple[int, ...]
    """QUANT_COMPILED_BATCH_SIZES: batch sizes compiled at load time (default "1": each size adds its compile time to
    the load and holds its own static cache, 8.6 GiB for batch 32 x 2048 tokens of an 8B Llama); smaller batches are
    padded up."""
    compile_batch_on_demand: bool
    """QUANT_COMPILE_BATCH_ON_DEMAND (on by default, "0" turns it off): a Batch job on a compiled model whose batch
    size (its chunk, at most the job's prompts) is not compiled for its prompts' length compiles it at the job's start,
    once, with a static cache of the job's length (GenerationPath.add_batch_size), kept while the model stays loaded,
    instead of running its padded chunks eagerly; where that cache would not fit in the GPU's free memory, the chunks
    run eagerly and the job says why. Nothing is compiled at load for it. On by default since compiling is one
    decoder layer's work (QUANT_COMPILE_REGIONS=layers): measured in bench/results/batch-engines-8b-on-demand-*."""
    packed_gqa_decode: bool
    """QUANT_PACKED_GQA_DECODE ("1" by default, "0" turns it off): on the compiled path, grouped-query models attend
    without copying the KV cache once per query head (quant.attention.packed_gqa_sdpa)."""
    fuse_projections: str
    """QUANT_FUSE_PROJECTIONS: on the compiled path of a decoder-only model, sibling projections that read the same
    input (q/k/v, gate/up) run as one matmul over their concatenated weights (quant.fused_projections; no memory
    added). "auto" (default): on CUDA GPUs, where it was measured (q/k/v in 0.58x the time, bench/results/fused-
    projections-8b.md); "on": on the CPU too (for tests); "off": never."""
    decode_segments: int
    """QUANT_DECODE_SEGMENTS: how many segments the compiled decode step of a model split over GPUs runs in
    (quant.segments): 0 (default) gives one per run of decoder layers on one device; N >= 2 cuts the layers into at
    least N segments, each its own compiled call (and CUDA graph), even on one device: to test the segmented step on
    the CPU and to measure what the segments cost on one GPU."""
    compile_regions: str
    """QUANT_COMPILE_REGIONS: what one torch.compile call covers on the compiled decode path. "layers" (default):
    the decoder layer, compiled once and called for every layer (with the part of the model's forward before the
    layers and the norm + head after them compiled on their own), so dynamo traces and Inductor compiles one layer
    instead of all of them (quant.segments); "model": the whole forward in one graph (what it was before: a longer
    compile, Inductor can fuse across the layer boundaries). The CUDA graph of a decode step holds all of it either
    way. Models whose layers are not at model.layers (GPT-2, OPT, GPT-NeoX) and encoder-decoders compile whole."""
    int4_dequantize_rows: int
    """QUANT_INT4_DEQUANTIZE_ROWS: on a GPU, int4pack layers (GPTQ, AWQ, HQQ) called with this many rows or more (a
    prompt's prefill, a batch's prefill and decode steps) dequantize their weight (quant.int4_dequant's Triton kernel)
    and multiply with cuBLAS, where tinygemm slows with every 16 rows. Llama-8B, H200, in CUDA graphs as the decode
    step runs them (bench/results/int4-matmul-rows.md), one layer's q/k/v and gate/up fused, o and down: 0.271 ms on
    tinygemm against 0.282 dequantized at 16 rows, 0.515 against 0.285 at 32, 1.00 against 0.29 at 64. Default 32;
    0 keeps tinygemm."""
    int4_dequantize_kernel: str
    """QUANT_INT4_DEQUANTIZE_KERNEL: what dequantizes those layers' weights: auto (quant.int4_dequant's Triton kernel
    where it runs and passes its check, else the compiled torch version) or torch (to measure the two)."""
    int4_gemv: str
    """QUANT_INT4_GEMV: what multiplies those layers' 1-7 rows (a chat's decode step) on a GPU: tinygemm (the
    default) or awq (quant.awq_gemv: llm-awq's gemv_fast, built from gptqmodel's sources on the current stream where
    nvcc is, while the weights load, and checked at the first layer, else tinygemm with the reason in the load
    report). 8B on an H200, one bench run: GPTQ batch 1 at 1.79x bf16 against 1.43x on tinygemm
    (bench/results/methods-bench-8b-cuda-gemv-fast-default.md, -tinygemm-twentieth.md), but the layers hold their
    4-bit weights a second time (GPTQ's footprint 9.1 GB against 5.5 GB at 8B): not the default, since what a 4-bit
    method saves in memory is what this tool reports and what its users pick it for."""
    nf4_dequantize_rows: int
    """QUANT_NF4_DEQUANTIZE_ROWS: on a GPU, bitsandbytes 4-bit layers (nf4, fp4) dequantize inputs of this many rows or
    more (a batch's decode steps, prefills) with quant.nf4_dequant's one Triton kernel and multiply with cuBLAS,
    instead of bitsandbytes' two dequantization kernels (its weights equal bitsandbytes' to one bf16 step). Default 32;
    0 keeps bitsandbytes' path. H200, 8B: per layer 0.88-1.09x bitsandbytes' dequantize + matmul at 16-256 rows
    (bench/results/int4-matmul-rows-nf4-triton.md), but the goal job of issue 26 (128 ragged prompts x 128 new tokens,
    batch 128) ran nf4 at 2,878 tok/s, 0.68x bf16's 4,224 in the same run, against 0.51x without it
    (batch-engines-8b-nf4-dequantize-32.md, -all-modes-decode-kernel.md); where the job gains is not profiled yet."""
    decode_attention: str
    """QUANT_DECODE_ATTENTION: how a compiled grouped-query model's one-token decode steps attend over the static
    cache on a GPU in fp16/bf16. "triton" (default): quant.decode_attention's kernel, which reads only the slots each
    row may attend to, where it runs and passes its check at the first load (else the matmuls, the load report says
    why); "matmul": two matmuls over every slot, masked after (quant.attention.packed_gqa_sdpa). H200, 8B, one layer:
    the kernel 0.49x the matmuls' time at 128 ragged rows over 1,280 slots, 0.94-1.02x where every slot is attended;
    the goal job of issue 26 4,006 -> 4,384 tok/s (bench/results/decode-attention-v2.md)."""
    decode_attention_kernel: str
    """QUANT_DECODE_ATTENTION_KERNEL: the Triton decode attention's launch settings and the batch size from which a
    decode step uses it, `name=value` pairs over quant.decode_attention.KernelConfig's defaults (e.g. `block=128,
    warps=8,min_rows=32`; bench/decode_attention_bench.py --sweep measures them and prints the fastest as this
    setting). For another GPU than the H200 the defaults were measured on."""
    batch_max_prompts: int
    """QUANT_BATCH_MAX_PROMPTS: most prompts in one Batch run (default 1000)."""
    batch_engine: str
    """QUANT_BATCH_ENGINE: what runs a Batch job (the Batch tab, `python -m quant batch`, the Compare tab's batch
    column). "auto" (default): transformers' continuous batching (a paged KV cache; prompts join and leave the running
    batch as they finish) wherever it serves the loaded model, padded static batches elsewhere (quant.batching says
    where and why); "continuous" or "padded" force one where it can run, to measure them against each other."""
    continuous_step: str
    """QUANT_CONTINUOUS_STEP: how transformers' continuous batching runs its forward passes. "library" (default):
    the library's own choice (with sdpa, whose paged attention needs a mask: eager steps, no CUDA graphs); "graphs":
    CUDA graphs and asynchronous batching (its `use_cuda_graph`, `use_async_batching`), which made it slower on an
    H200 (8B bf16: 345 against 424 tok/s; bench/results/batch-engines-8b-graphs.md). For measuring
    (bench/batch_engines.py --engines continuous+graphs)."""
    batch_max_upload_bytes: int
    """QUANT_BATCH_MAX_UPLOAD_BYTES: largest prompt file the Batch tab reads (default 2 MiB)."""
    concurrency: int
    """QUANT_CONCURRENCY: Gradio events that run at once (default 4; model loads run one at a time regardless)."""
    queue_size: int
    """QUANT_QUEUE_SIZE: requests that may wait in Gradio's queue (default 64)."""
    compile_backend: str
    """QUANT_COMPILE_BACKEND: torch.compile backend of the fast path (default "inductor")."""
    output_max_age_hours: int
    """QUANT_OUTPUT_MAX_AGE_HOURS: on a served app, visitors' quantized folders older than this are removed (0: kept;
    the default, except on a Hugging Face Space, where it is 24: a public Space's disk fills up otherwise)."""
    batch_prefill: str
    """QUANT_BATCH_PREFILL: how a padded batch of ragged prompts is prefilled, eagerly and into the compiled loop's
    static cache: "grouped" (default: in groups of similar length, without computing the padding, quant.ragged) or
    "padded" (one forward over the batch padded to its longest prompt: for measuring)."""
    compile_prefill: str
    """QUANT_COMPILE_PREFILL: the compiled decode loop's grouped prefills (a batch job's prompts) run their decoder layers
    through one torch.compile'd call with dynamic shapes ("on", the default: quant.ragged.CompiledPrefill; fuses the
    norms, rotary and activations that eager runs as separate kernels: the H200 goal job ran 1.09-1.13x faster with it)
    or eagerly ("off")."""
    tensor_parallel_cpu_ranks: int
    """QUANT_TENSOR_PARALLEL_CPU_RANKS: on a machine without a GPU, the processes that device_map=tensor_parallel
    shards a model over (gloo; default 0: not offered on the CPU). On GPUs it is one rank per GPU present."""
    tensor_parallel_gpus: bool
    """QUANT_TENSOR_PARALLEL_GPUS=on: device_map=tensor_parallel is offered on GPUs (off by default: on two H200s its
    eager decode measured 0.06x one GPU's compiled decode at 8B bf16, while a split over the GPUs decodes compiled at
    0.98x; bench/results/tp-8b-bfloat16.md)."""
    stream_weights: str
    """QUANT_STREAM_WEIGHTS: `auto` (the default) streams onto a GPU, `on` onto the CPU too, `off` never. A 16-bit
    load of a local safetensors checkpoint onto one device reads its weights with quant.weight_stream (pread by
    several threads through pinned buffers straight to the GPU) and hands them to the model class's from_pretrained,
    instead of transformers' copies from pageable memory: 0.69 s against 2.50 s for an 8B bf16 checkpoint, and warm
    starts to the first token of 14.0 and 12.1 s against 16.3 and 15.9 s, on an H200
    (bench/results/weight-load-8b-cuda.md, startup-8b-cuda-stream-weights.md). Not on the CPU by default:
    transformers' mmap load is lazy there."""
    kernel_cache: str
    """QUANT_KERNEL_CACHE: folder for compiled kernels (Inductor, Triton, gptqmodel's Marlin/ExLlama builds), kept
    across restarts. Default ~/.cache/quant-playground/kernels."""


def _decode_attention_kernel_setting() -> str:
    from .decode_attention import CONFIG_VARIABLE, KernelConfig

    text = os.environ.get(CONFIG_VARIABLE, "").strip()
    try:
        return KernelConfig.parse(text).setting()
    except ValueError as exc:
        raise SettingsError(f"{CONFIG_VARIABLE}={text!r}: {exc}.",
                            f"Unset it for the defaults, {KernelConfig().setting()}.") from None


def load_settings() -> Settings:
    return Settings(
        default_model=os.environ.get("QUANT_DEFAULT_MODEL", DEFAULT_HUB_MODEL),
        trust_remote_code=_flag("QUANT_TRUST_REMOTE_CODE"),
        memory_budget=os.environ.get("QUANT_MEMORY_BUDGET") or None,
        max_loaded_models=int_setting("QUANT_MAX_LOADED_MODELS", 3),
        fast_generation=os.environ.get("QUANT_FAST_GENERATION", "auto").strip().lower() or "auto",
        static_cache_tokens=_int_list_setting("QUANT_STATIC_CACHE_TOKENS", "512,2048"),
        compiled_batch_sizes=_int_list_setting("QUANT_COMPILED_BATCH_SIZES", "1"),
        compile_batch_on_demand=not _flag_off("QUANT_COMPILE_BATCH_ON_DEMAND"),
        packed_gqa_decode=not _flag_off("QUANT_PACKED_GQA_DECODE"),
        fuse_projections=_choice_setting("QUANT_FUSE_PROJECTIONS", FUSE_PROJECTIONS),
        decode_segments=int_setting("QUANT_DECODE_SEGMENTS", 0, minimum=0),
        compile_regions=_choice_setting("QUANT_COMPILE_REGIONS", COMPILE_REGIONS),
        int4_dequantize_rows=int_setting("QUANT_INT4_DEQUANTIZE_ROWS", 32, minimum=0),
        int4_dequantize_kernel=_choice_setting("QUANT_INT4_DEQUANTIZE_KERNEL", INT4_DEQUANTIZE_KERNELS),
        int4_gemv=_choice_setting("QUANT_INT4_GEMV", INT4_GEMVS),
        nf4_dequantize_rows=int_setting("QUANT_NF4_DEQUANTIZE_ROWS", 32, minimum=0),
        decode_attention=_choice_setting("QUANT_DECODE_ATTENTION", DECODE_ATTENTIONS),
        decode_attention_kernel=_decode_attention_kernel_setting(),
        batch_max_prompts=int_setting("QUANT_BATCH_MAX_PROMPTS", 1000),
        batch_engine=_choice_setting("QUANT_BATCH_ENGINE", BATCH_ENGINES),
        continuous_step=_choice_setting("QUANT_CONTINUOUS_STEP", CONTINUOUS_STEPS),
        batch_max_upload_bytes=int_setting("QUANT_BATCH_MAX_UPLOAD_BYTES", 2 * 2**20),
        concurrency=int_setting("QUANT_CONCURRENCY", 4),
        queue_size=int_setting("QUANT_QUEUE_SIZE", 64),
        compile_backend=os.environ.get("QUANT_COMPILE_BACKEND", "inductor").strip() or "inductor",
        output_max_age_hours=int_setting("QUANT_OUTPUT_MAX_AGE_HOURS", 24 if os.environ.get("SPACE_ID") else 0,
                                         minimum=0),
        batch_prefill=_choice_setting("QUANT_BATCH_PREFILL", BATCH_PREFILLS),
        compile_prefill=_choice_setting("QUANT_COMPILE_PREFILL", COMPILE_PREFILLS),
        tensor_parallel_cpu_ranks=int_setting("QUANT_TENSOR_PARALLEL_CPU_RANKS", 0, minimum=0),
        tensor_parallel_gpus=_flag("QUANT_TENSOR_PARALLEL_GPUS"),
        stream_weights=_choice_setting("QUANT_STREAM_WEIGHTS", STREAM_WEIGHTS),
        kernel_cache=os.environ.get("QUANT_KERNEL_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "quant-playground", "kernels"),
    )

