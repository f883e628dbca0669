"""Which attention implementation a model runs with: what the seed guides called BetterTransformer, today.

`model.to_bettertransformer()` is gone from transformers 5 and optimum 2. Its fast path (fused attention kernels)
now lives in PyTorch's `scaled_dot_product_attention`, which transformers uses by default (`attn_implementation=
"sdpa"`); "eager" is the plain matmul-softmax-matmul, "flash_attention_2" needs the flash-attn package and a GPU,
"flex_attention" compiles its kernels with torch.compile.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from .errors import UnsupportedModeError
from .triton_support import KernelCheck

log = logging.getLogger(__name__)

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


PACKED_GQA_SDPA = "sdpa_packed_gqa_decode"
"""transformers' sdpa, registered under its own name, whose one-token decode step attends with two matmuls over the
KV heads as they are."""


def _fold_query_heads(query: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, heads, 1, dim] -> [batch, kv heads, groups, dim]: the query heads that share a KV head become its rows
    (transformers' `repeat_kv` gives KV head i to query heads i*groups ... i*groups+groups-1)."""
    batch, heads, _, dim = query.shape
    return query.reshape(batch, heads // groups, groups, dim)


def packed_gqa_sdpa(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    **kwargs) -> tuple[torch.Tensor, None]:
    """Attention for grouped-query models on the compiled path: the one-token decode step folds each KV head's query
    heads into its query rows and attends with matmul-softmax-matmul.

    Why not transformers' sdpa there: under torch.compile it falls back to `repeat_kv`, which copies the whole static
    cache's keys and values once per query head sharing them, in every layer at every decode step (4x the cache for
    Llama-3's 32 query / 8 KV heads). And with the static cache's mask, SDPA runs its memory-efficient kernel, which
    gives each (batch row, head) one thread block that walks all the cache's slots: on an H100, Llama-1B shape,
    batch 1, it took 1.8 of the 3.3 ms of GPU time per token (bench/results/generate-overhead-llama-1b-bf16-cuda-
    profile-packed.md). Two matmuls read the cache once, spread over the whole GPU. The arithmetic is transformers'
    eager attention's: scores in the model's dtype, softmax in float32.

    Everything else (prefill, masks with one row per head, position bias, paged caches, dropout) goes to
    transformers' sdpa unchanged.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (groups == 1 or query.shape[2] != 1 or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("cache") is not None or (attention_mask is not None and attention_mask.shape[1] != 1)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    scale = scaling if scaling is not None else dim ** -0.5
    kernel_from_rows = getattr(module, DECODE_KERNEL_ATTRIBUTE, 0)
    if kernel_from_rows and batch >= kernel_from_rows and query.is_cuda and attention_mask is not None and \
            attention_mask.dtype == torch.bool and key.shape[-1] == value.shape[-1] == dim:
        output = torch.ops.quant.decode_attention(_fold_query_heads(query, groups), key, value,
                                                  attention_mask[:, 0, 0, :], scale)  # [batch, kv heads, groups, dim]
        return output.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None
    scores = torch.matmul(_fold_query_heads(query, groups), key.transpose(-1, -2)) * scale  # [b, kv, groups, slots]
    if attention_mask is not None:  # [batch, 1, 1, slots]: True (or 0.0) where a slot may be attended
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    output = torch.matmul(weights, value)  # [batch, kv heads, groups, dim]
    return output.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def is_grouped_query_sdpa(model) -> bool:
    """An sdpa model whose query heads share KV heads (Llama 3, Qwen, Mistral...): what packed decode is for."""
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    return getattr(config, "_attn_implementation", None) == "sdpa" and bool(heads and kv_heads) and heads != kv_heads


def packed_gqa_unavailable() -> str | None:
    """Why this transformers cannot run `packed_gqa_sdpa` (the attention and mask registries it plugs into, and the
    sdpa function it hands every other call to), or None when it can."""
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: F401
    except ImportError as exc:
        import transformers

        return f"transformers {transformers.__version__} lacks what it plugs into ({exc})"
    return None


def use_packed_gqa_decode(model) -> tuple[bool, str]:
    """Switch a loaded grouped-query sdpa model to `packed_gqa_sdpa`. Returns whether it did and, where a
    grouped-query model stays on transformers' own sdpa (this transformers cannot take the packed function), why:
    the compiled path still runs then, copying the KV cache per query head, and the load report says so."""
    if not is_grouped_query_sdpa(model):
        return False, ""
    missing = packed_gqa_unavailable()
    if missing:
        return False, f"grouped-query decode on transformers' sdpa (repeats the KV cache per head): {missing}"
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_GQA_SDPA, packed_gqa_sdpa)
    AttentionMaskInterface.register(PACKED_GQA_SDPA, sdpa_mask)  # the masks sdpa gets
    model.set_attn_implementation(PACKED_GQA_SDPA)
    return True, ""


def restore_sdpa(model) -> None:
    """Undo `use_packed_gqa_decode` (a model that falls back to eager generation gets transformers' sdpa back)."""
    if getattr(model.config, "_attn_implementation", None) == PACKED_GQA_SDPA:
        model.set_attn_implementation("sdpa")
    for module in model.modules():
        if hasattr(module, DECODE_KERNEL_ATTRIBUTE):
            delattr(module, DECODE_KERNEL_ATTRIBUTE)


DECODE_KERNEL_ATTRIBUTE = "_quant_decode_attention_kernel"
"""Set on a packed model's attention modules: the batch size from which its decode steps attend with
quant.decode_attention's kernel (its launch settings' min_rows), 0 where they do not (read by packed_gqa_sdpa when the
step is traced)."""


def use_decode_kernel(model) -> tuple[bool, str]:
    """Let a model on `packed_gqa_sdpa` attend in its one-token decode steps with quant.decode_attention's Triton
    kernel, unless the operator chose the matmuls (QUANT_DECODE_ATTENTION=matmul), where the model is on a GPU in
    16-bit and the kernel runs and gives the matmuls' attention on a check (once a process for each head size,
    grouping and dtype). Returns whether it does
    and, where it does not on a GPU (or was asked for by name elsewhere), why."""
    use, why_not = _decode_kernel_choice(model)
    from_rows = 0
    if use:
        from .decode_attention import configured, decode_attention_op

        decode_attention_op()  # registered as torch.ops.quant.decode_attention, which the traced step calls
        from_rows = configured().min_rows
    for module in model.modules():
        if hasattr(module, "num_key_value_groups"):
            setattr(module, DECODE_KERNEL_ATTRIBUTE, from_rows)
    return use, why_not


def _decode_kernel_choice(model) -> tuple[bool, str]:
    from .settings import load_settings

    if load_settings().decode_attention != "triton" or \
            getattr(model.config, "_attn_implementation", None) != PACKED_GQA_SDPA:
        return False, ""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cuda" or model.dtype not in (torch.float16, torch.bfloat16):
        asked = os.environ.get("QUANT_DECODE_ATTENTION", "").strip()  # the default says nothing where it cannot run
        return False, "decode attention on matmuls: the Triton kernel runs on a GPU in fp16 or bf16" if asked else ""
    config = model.config
    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    refused = decode_kernel_check(dim, heads // config.num_key_value_heads, model.dtype).reason()
    return (False, f"decode attention on matmuls: {refused}") if refused else (True, "")


_decode_kernel_checks: dict[tuple, KernelCheck] = {}


def decode_kernel_check(dim: int, groups: int, dtype: torch.dtype) -> KernelCheck:
    """Whether quant.decode_attention's kernel attends for models of this head size, grouping and dtype in this
    process (decided at the first load of such a model: a head size of 256 needs twice the shared memory of 128)."""
    key = (dim, groups, dtype)
    if key not in _decode_kernel_checks:
        _decode_kernel_checks[key] = KernelCheck(lambda: _decode_kernel_mismatch(dim, groups, dtype), log,
                                                 f"decode attention of head size {dim} stays on matmuls")
    return _decode_kernel_checks[key]


def _decode_kernel_mismatch(dim: int, groups: int, dtype: torch.dtype) -> str | None:
    """Where the kernel's attention differs from the matmuls' (ragged masks over a cache that is not whole chunks,
    rows that use one chunk and many) by more than 16-bit rounding; or None."""
    from .decode_attention import decode_attention_op

    generator = torch.Generator().manual_seed(0)
    rows, kv_heads, slots = 5, 2, 300
    query, key, value = (torch.randn(rows, kv_heads, n, dim, generator=generator).to(dtype).cuda()
                         for n in (groups, slots, slots))
    position = torch.arange(slots)
    allowed = torch.stack([(position >= start) & (position < end) for start, end in
                           ((0, 300), (150, 290), (5, 9), (64, 65), (0, 128))]).cuda()
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * dim ** -0.5
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    want = torch.matmul(torch.softmax(scores, dim=-1), value.float())
    # compiled, as the decode step calls it: Inductor lowers what the op does around the kernel
    attend = torch.compile(decode_attention_op(), fullgraph=True, dynamic=False)
    got = attend(query, key, value, allowed, dim ** -0.5).float()
    if not torch.allclose(got, want, atol=2e-2, rtol=2e-2):
        return f"its attention differs from the matmuls' (largest difference {(got - want).abs().max():.3g})"
    return None

