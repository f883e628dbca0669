"""Operator settings, read from environment variables (documented in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


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
    """QUANT_MEMORY_BUDGET (e.g. "16GiB"): the most that all loaded models together may take; LRU idle ones are evicted."""
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
    packed_gqa_decode: bool
    """QUANT_PACKED_GQA_DECODE ("1" by default, "0" turns it off): on the compiled path, grouped-query models attend
    without copying the KV cache once per query head (quant.attention.packed_gqa_sdpa)."""
    int4_dequantize_rows: int
    """QUANT_INT4_DEQUANTIZE_ROWS: on a GPU, gptq_int4pack layers called with this many rows or more (a long prompt's
    or a batch's prefill) dequantize their weight with one compiled kernel and multiply with cuBLAS, where tinygemm
    slows with every 16 rows. Llama-8B, H100 (bench/results/int4mm-shapes-static.md), one decoder layer's seven
    projections: 2.05 ms against 2.13 ms at 128 rows, 3.97 against 2.20 at 256. Default 256; 0 keeps tinygemm."""
    compile_backend: str
    """QUANT_COMPILE_BACKEND: torch.compile backend of the fast path (default "inductor")."""
    kernel_cache: str
    """QUANT_KERNEL_CACHE: folder for compiled kernels (Inductor, Triton, gptqmodel's Marlin/ExLlama builds), kept
    across restarts. Default ~/.cache/quant-playground/kernels."""


def load_settings() -> Settings:
    return Settings(
        default_model=os.environ.get("QUANT_DEFAULT_MODEL", DEFAULT_HUB_MODEL),
        trust_remote_code=_flag("QUANT_TRUST_REMOTE_CODE"),
        memory_budget=os.environ.get("QUANT_MEMORY_BUDGET") or None,
        max_loaded_models=int(os.environ.get("QUANT_MAX_LOADED_MODELS", "3")),
        fast_generation=os.environ.get("QUANT_FAST_GENERATION", "auto").strip().lower() or "auto",
        static_cache_tokens=_int_list(os.environ.get("QUANT_STATIC_CACHE_TOKENS", "512,2048")) or (2048,),
        compiled_batch_sizes=_int_list(os.environ.get("QUANT_COMPILED_BATCH_SIZES", "1")),
        packed_gqa_decode=not _flag_off("QUANT_PACKED_GQA_DECODE"),
        int4_dequantize_rows=int(os.environ.get("QUANT_INT4_DEQUANTIZE_ROWS", "256")),
        compile_backend=os.environ.get("QUANT_COMPILE_BACKEND", "inductor").strip() or "inductor",
        kernel_cache=os.environ.get("QUANT_KERNEL_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "quant-playground", "kernels"),
    )


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
