"""Which attention implementation a model runs with: what the seed guides called BetterTransformer, today.

`model.to_bettertransformer()` is gone from transformers 5 and optimum 2. Its fast path (fused attention kernels)
now lives in PyTorch's `scaled_dot_product_attention`, which transformers uses by default (`attn_implementation=
"sdpa"`); "eager" is the plain matmul-softmax-matmul, "flash_attention_2" needs the flash-attn package and a GPU,
"flex_attention" compiles its kernels with torch.compile.
"""

from __future__ import annotations

import importlib.util

import torch

from .errors import UnsupportedModeError

IMPLEMENTATIONS = {
    "sdpa": "PyTorch scaled_dot_product_attention (fused kernels: BetterTransformer's successor)",
    "eager": "plain matmul + softmax + matmul in PyTorch",
    "flash_attention_2": "FlashAttention-2 kernels (flash-attn package, CUDA GPU, fp16/bf16)",
    "flex_attention": "PyTorch FlexAttention, compiled with torch.compile (GPU)",
}
_CLASS_FLAG = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn",
               "flex_attention": "_supports_flex_attn"}

BETTERTRANSFORMER_NOTE = (
    "Coming from the guides that call `model.to_bettertransformer()`? That API is gone from transformers 5 and "
    "optimum 2. Its fast path is PyTorch's scaled-dot-product attention, which transformers uses by default "
    "(attention implementation `sdpa`); pick `eager` to see what it buys, or `flash_attention_2` where flash-attn is "
    "installed.")


def check_attention(requested: str | None, model_class, *, on_cuda: bool, dtype: torch.dtype) -> str | None:
    """Refuse an implementation that is unknown, not installed or not supported by the architecture.

    Returns what to pass to `from_pretrained` (None lets transformers choose its default, sdpa where supported).
    """
    if not requested:
        if on_cuda and _flash_attn_installed() and getattr(model_class, "_supports_flash_attn", False) and \
                dtype in (torch.float16, torch.bfloat16):
            return "flash_attention_2"  # the fastest available
        return None
    if requested not in IMPLEMENTATIONS:
        raise UnsupportedModeError(f"Unknown attention implementation {requested!r}.",
                                   f"Choose one of {', '.join(IMPLEMENTATIONS)}.")
    flag = _CLASS_FLAG.get(requested)
    if flag and not getattr(model_class, flag, False):
        raise UnsupportedModeError(f"{model_class.__name__} does not support {requested} attention.",
                                   "Use sdpa or eager.")
    if requested == "flash_attention_2":
        if not _flash_attn_installed():
            raise UnsupportedModeError("flash_attention_2 needs the flash-attn package, which is not installed.",
                                       "pip install flash-attn (CUDA GPU), or use sdpa.")
        if not on_cuda:
            raise UnsupportedModeError("flash_attention_2 runs on CUDA GPUs only.", "Use sdpa on the CPU.")
        if dtype not in (torch.float16, torch.bfloat16):
            raise UnsupportedModeError("flash_attention_2 needs fp16 or bf16 weights.", "Use sdpa for fp32.")
    if requested == "flex_attention" and not on_cuda:
        raise UnsupportedModeError(
            "flex_attention is not offered on the CPU: it compiles C++ kernels with torch.compile for about a minute "
            "per shape, and fails to compile for some architectures (T5).", "Use sdpa or eager on the CPU.")
    return requested


def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None
