"""One-token decode attention over a static KV cache that reads only the slots the mask lets a row attend to.

Why: a compiled batch's decode step attends over its whole static cache (quant.attention.packed_gqa_sdpa: two
matmuls over every slot, masked after). At the goal job of issue 26 (8B Llama, 128 rows, a 1,280-slot cache) that is
21 GB of keys and values read per step against 16 GB of weights, while a row of ragged prompts (16-1,000 tokens) uses
fewer than half its slots on average: the slots past its end, and before its start, are read only to be masked. On an
H200 the two matmuls and the softmax were 5.9 of the step's 12.7 ms of GPU time
(bench/results/generate-overhead-llama-8b-bf16-cuda-b128-profile-b128-cache1280.md).

The kernel walks, for each row, only the chunks of BLOCK slots between the row's first and last allowed slot (found
in torch before the launch), split evenly over a few programs; inside a chunk, slots the mask refuses are not loaded
(`masked_loads`) or loaded and zeroed, and never weigh in the softmax. One program per (row, KV head, split): the
query heads that share the KV head are its rows (padded to 16 for the tensor cores), attended in one pass with an
online softmax (flash-decoding); the splits' partial results are combined after (more splits when there are few rows,
so that a batch of one still fills the GPU). The arithmetic is attention's: scores and softmax in float32, the weights
rounded to the values' dtype for the second product.

It is a PyTorch custom op over the Triton kernel (`torch.library.triton_op`), so torch.compile traces it into the
decode step and CUDA graphs capture it; `decode_attention_eagerly` calls the kernel directly (the CPU tests run it in
Triton's interpreter). Used where QUANT_DECODE_ATTENTION=triton (quant.attention), with the launch settings of
`KernelConfig` (QUANT_DECODE_ATTENTION_KERNEL overrides them; bench/decode_attention_bench.py --sweep measures them).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch

from . import triton_support

refusal = triton_support.refusal
"""Why this kernel cannot run here (no CUDA GPU, no Triton), or None."""

MIN_GROUP_ROWS = 16
"""tl.dot's smallest tile side: a KV head's query heads (4 in Llama-3) are padded to it."""
CONFIG_VARIABLE = "QUANT_DECODE_ATTENTION_KERNEL"


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How the kernel is launched, and from which batch size the decode step uses it. The launch defaults are the
    fastest of 144 settings at the goal job's shape (128 ragged rows, 1,280 slots) on an H200, 0.148 ms against
    0.258 for the slowest (bench/results/decode-attention-sweep-eager.md); compiled there, 0.49x the matmuls' time
    (bench/results/decode-attention-v2.md)."""

    block: int = 64
    """Cache slots per chunk (a power of two, at least 16)."""
    warps: int = 4
    stages: int = 3
    """Triton's software pipelining depth of the loop over chunks."""
    masked_loads: bool = True
    """Inside a chunk, load only the allowed slots (else load the chunk whole and zero what is not allowed)."""
    programs_per_sm: int = 8
    """Splits each row's chunks so that rows x KV heads x splits reaches this many programs per multiprocessor."""
    min_rows: int = 1
    """Decode steps of fewer batch rows attend with the matmuls. 1: at one row the kernel measured 0.99-1.02x the
    matmuls' time over a full cache and 0.86x over a half-full one (a chat fills its cache as it goes)."""

    def setting(self) -> str:
        """As QUANT_DECODE_ATTENTION_KERNEL spells it."""
        return ",".join(f"{field.name}={int(getattr(self, field.name))}" for field in dataclasses.fields(self))

    @classmethod
    def parse(cls, text: str) -> "KernelConfig":
        """`block=64,warps=4,...` (any subset; the rest keep their defaults). ValueError saying what is wrong."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {}
        for part in filter(None, (piece.strip() for piece in text.split(","))):
            name, _, value = part.partition("=")
            if name.strip() not in names:
                raise ValueError(f"{name.strip()!r} is not one of {', '.join(sorted(names))}")
            try:
                values[name.strip()] = int(value)
            except ValueError:
                raise ValueError(f"{name.strip()}={value.strip()!r} is not a whole number") from None
        config = cls(**{name: bool(v) if name == "masked_loads" else v for name, v in values.items()})
        if config.block < 16 or config.block & (config.block - 1):
            raise ValueError(f"block={config.block} is not a power of two of at least 16")
        if min(config.warps, config.stages, config.programs_per_sm, config.min_rows) < 1:
            raise ValueError("warps, stages, programs_per_sm and min_rows must be at least 1")
        return config


def configured() -> KernelConfig:
    """The launch settings: QUANT_DECODE_ATTENTION_KERNEL over the defaults (quant.settings validates it at start)."""
    return KernelConfig.parse(os.environ.get(CONFIG_VARIABLE, ""))


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1): importing this module must
    not need Triton. (Its reductions are Triton's library functions, which the interpreter runs only in a process
    that set TRITON_INTERPRET before importing Triton: the CPU tests run it in one, see
    tests/support/interpreter_checks.)"""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q, k, v, allowed, bounds, acc_out, max_out, sum_out,
                                stride_qb, stride_qh, stride_qg, stride_kb, stride_kh, stride_ks,
                                stride_vb, stride_vh, stride_vs, stride_ab, stride_as, stride_bb,
                                kv_heads, groups, slots, head_dim, scale, splits,
                                BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
                                MASKED_LOADS: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        split = tl.program_id(2)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        g_in, d_in = g < groups, d < head_dim
        query = tl.load(q + row * stride_qb + head * stride_qh + g[:, None] * stride_qg + d[None, :],
                        mask=g_in[:, None] & d_in[None, :], other=0.0)  # [G, D]
        best = tl.full([BLOCK_G], float("-inf"), tl.float32)
        total = tl.full([BLOCK_G], 0.0, tl.float32)
        acc = tl.full([BLOCK_G, BLOCK_D], 0.0, tl.float32)
        keys_at = k + row * stride_kb + head * stride_kh
        values_at = v + row * stride_vb + head * stride_vh
        first = tl.load(bounds + row * stride_bb)  # the row's first chunk with an allowed slot
        end = tl.load(bounds + row * stride_bb + 1)  # one past its last
        per_split = tl.cdiv(end - first, splits)
        begin = first + split * per_split
        for chunk in range(begin, tl.minimum(end, begin + per_split)):
            s = chunk * BLOCK_S + tl.arange(0, BLOCK_S)
            ok = tl.load(allowed + row * stride_ab + s * stride_as, mask=s < slots, other=0) != 0
            if MASKED_LOADS:
                load = ok[:, None] & d_in[None, :]
            else:
                load = (s < slots)[:, None] & d_in[None, :]
            keys = tl.load(keys_at + s[:, None] * stride_ks + d[None, :], mask=load, other=0.0)  # [S, D]
            values = tl.load(values_at + s[:, None] * stride_vs + d[None, :], mask=load, other=0.0)
            if not MASKED_LOADS:
                values = tl.where(ok[:, None], values, 0.0)  # whatever a refused slot holds weighs nothing
            # (float32 again after the scale: Inductor passes a Python float as float64)
            scores = (tl.dot(query, tl.trans(keys)).to(tl.float32) * scale).to(tl.float32)  # [G, S]
            scores = tl.where(ok[None, :], scores, float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=1))
            shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # a chunk with no allowed slot yet: no NaN
            weights = tl.exp(scores - shift[:, None])
            rescale = tl.exp(best - shift)
            total = total * rescale + tl.sum(weights, axis=1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(values.dtype), values).to(tl.float32)
            best = new_best
        part = (row * kv_heads + head) * splits + split  # partial results [rows, kv heads, splits, G(, D)]
        tl.store(max_out + part * groups + g, best, mask=g_in)
        tl.store(sum_out + part * groups + g, total, mask=g_in)
        tl.store(acc_out + (part * groups + g[:, None]) * head_dim + d[None, :], acc,
                 mask=g_in[:, None] & d_in[None, :])

    return decode_attention_kernel


def split_count(rows: int, kv_heads: int, slots: int, device: torch.device, config: KernelConfig) -> int:
    """Splits of each row's chunks: enough programs for `programs_per_sm` per streaming multiprocessor, at most one a
    chunk."""
    chunks = -(-slots // config.block)
    if device.type != "cuda":
        return min(chunks, 2)  # the interpreter: a split boundary inside every test
    processors = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(chunks, -(-config.programs_per_sm * processors // (rows * kv_heads))))


def chunk_bounds(allowed: torch.Tensor, block: int) -> torch.Tensor:
    """[rows, 2] int32: each row's first chunk of `block` slots holding an allowed slot, and one past its last (equal
    when it has none)."""
    slots = allowed.shape[1]
    position = torch.arange(slots, device=allowed.device, dtype=torch.int32)
    first = torch.where(allowed, position, slots).amin(dim=1) // block
    end = torch.where(allowed, position, -block).amax(dim=1) // block + 1
    return torch.stack([first, torch.maximum(first, end)], dim=1).to(torch.int32)


def _check(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
        raise ValueError(f"want query [rows, kv heads, groups, dim] and keys/values [rows, kv heads, slots, dim]: "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    rows, kv_heads, _, dim = query.shape
    if key.shape[0] != rows or key.shape[1] != kv_heads or key.shape[3] != dim:
        raise ValueError(f"the cache {tuple(key.shape)} does not fit the query {tuple(query.shape)}")
    if allowed.dtype != torch.bool or allowed.dim() != 2 or allowed.shape[1] != key.shape[2] or \
            allowed.shape[0] not in (1, rows):
        raise ValueError(f"want a boolean mask [rows, slots]: {tuple(allowed.shape)} {allowed.dtype}")
    if query.stride(-1) != 1 or key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("the head dimension must be contiguous in the query, keys and values")


def _launch(query, key, value, allowed, scale: float, config: KernelConfig, splits: int | None = None,
            kernel_wrapper=None):
    """Run the kernel; returns the partial results (acc [rows, kv heads, splits, groups, dim], max, sum) in float32."""
    from triton import knobs, next_power_of_2

    rows, kv_heads, groups, dim = query.shape
    slots = key.shape[2]
    splits = splits or split_count(rows, kv_heads, slots, query.device, config)
    acc = torch.empty(rows, kv_heads, splits, groups, dim, dtype=torch.float32, device=query.device)
    best = torch.empty(rows, kv_heads, splits, groups, dtype=torch.float32, device=query.device)
    total = torch.empty_like(best)
    bounds = chunk_bounds(allowed, config.block)
    allowed_bytes = allowed.to(torch.uint8)  # (a view as uint8 is not something Inductor lowers for bool)
    kernel = _kernel(bool(knobs.runtime.interpret))
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    one_row = allowed.shape[0] == 1
    with triton_support.launch_device(query):
        kernel[(rows, kv_heads, splits)](
            query, key, value, allowed_bytes, bounds, acc, best, total,
            query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
            value.stride(0), value.stride(1), value.stride(2),
            0 if one_row else allowed_bytes.stride(0), allowed_bytes.stride(1), 0 if one_row else bounds.stride(0),
            kv_heads, groups, slots, dim, scale, splits,
            BLOCK_G=max(MIN_GROUP_ROWS, next_power_of_2(groups)), BLOCK_S=config.block,
            BLOCK_D=max(16, next_power_of_2(dim)), MASKED_LOADS=config.masked_loads,
            num_warps=config.warps, num_stages=config.stages)
    return acc, best, total


def _combine(acc: torch.Tensor, best: torch.Tensor, total: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The splits' partial softmax sums as one: [rows, kv heads, groups, dim] in `dtype`."""
    overall = best.amax(dim=2, keepdim=True)  # a split with no allowed slot has -inf: weighs 0
    weight = torch.exp(best - overall)
    numerator = (acc * weight[..., None]).sum(dim=2)
    return (numerator / (total * weight).sum(dim=2)[..., None]).to(dtype)


def decode_attention_eagerly(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                             scale: float, splits: int | None = None,
                             config: KernelConfig | None = None) -> torch.Tensor:
    """The kernel called directly (no custom op): query [rows, kv heads, groups, dim] (a KV head's query heads as its
    groups), key and value [rows, kv heads, slots, dim], allowed [rows or 1, slots] (True: may be attended; every row
    needs one). Returns [rows, kv heads, groups, dim]."""
    _check(query, key, value, allowed)
    return _combine(*_launch(query, key, value, allowed, scale, config or configured(), splits), query.dtype)


@functools.cache
def decode_attention_op():
    """`quant::decode_attention(query, key, value, allowed, scale) -> [rows, kv heads, groups, dim]`, the kernel as a
    custom op torch.compile traces (registered on first use: Triton is imported only where it runs), launched as
    `configured()` says when it is traced."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::decode_attention", mutates_args=())
    def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                         scale: float) -> torch.Tensor:
        _check(query, key, value, allowed)
        return _combine(*_launch(query, key, value, allowed, scale, configured(), kernel_wrapper=wrap_triton),
                        query.dtype)

    return decode_attention
