"""One-token decode attention over a static KV cache that reads only the slots the mask lets a row attend to.

Why: a compiled batch's decode step attends over its whole static cache (quant.attention.packed_gqa_sdpa: two
matmuls over every slot, masked after). At the goal job of issue 26 (8B Llama, 128 rows, a 1,280-slot cache) that is
21 GB of keys and values read per step against 16 GB of weights, while a row of ragged prompts (16-1,000 tokens) uses
fewer than half its slots on average: the slots past its end, and before its start, are read only to be masked.

This kernel walks each row's cache in chunks of BLOCK_S slots, loads the chunk's mask first and skips the chunk
(reads none of its keys and values) when no slot of it may be attended; in a chunk it reads only the allowed slots.
One program per (row, KV head, split of the slots): the query heads that share the KV head are its rows (padded to
16 for the tensor cores), attended in one pass with an online softmax (flash-decoding); the splits' partial results
are combined after (more splits when there are few rows, so that a batch of one still fills the GPU). The arithmetic
is attention's: scores and softmax in float32, the weights rounded to the values' dtype for the second product.

It is a PyTorch custom op over the Triton kernel (`torch.library.triton_op`), so torch.compile traces it into the
decode step and CUDA graphs capture it; `decode_attention_eagerly` calls the kernel directly (the CPU tests run it in
Triton's interpreter). Used where QUANT_DECODE_ATTENTION=triton (quant.attention): not the default until measured on
a GPU against the matmul version.
"""

from __future__ import annotations

import functools

import torch

from . import triton_support

refusal = triton_support.refusal
"""Why this kernel cannot run here (no CUDA GPU, no Triton), or None."""

BLOCK_S = 64
"""Cache slots per chunk: the unit the mask skips."""
MIN_GROUP_ROWS = 16
"""tl.dot's smallest tile side: a KV head's query heads (4 in Llama-3) are padded to it."""


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1): importing this module must
    not need Triton. (Its reductions are Triton's library functions, which the interpreter runs only in a process
    that set TRITON_INTERPRET before importing Triton: the CPU tests run it in one, see
    tests/support/interpreter_checks.)"""
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention_kernel(q, k, v, allowed, acc_out, max_out, sum_out,
                                stride_qb, stride_qh, stride_qg, stride_kb, stride_kh, stride_ks,
                                stride_vb, stride_vh, stride_vs, stride_ab, stride_as,
                                kv_heads, groups, slots, head_dim, scale, chunks_per_split, splits,
                                BLOCK_G: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
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
        for chunk in range(0, chunks_per_split):
            s = (split * chunks_per_split + chunk) * BLOCK_S + tl.arange(0, BLOCK_S)
            ok = tl.load(allowed + row * stride_ab + s * stride_as, mask=s < slots, other=0) != 0
            if tl.max(ok.to(tl.int32), axis=0) > 0:  # a chunk no slot of which may be attended is not read
                keys = tl.load(keys_at + s[:, None] * stride_ks + d[None, :], mask=ok[:, None] & d_in[None, :],
                               other=0.0)  # [S, D]
                scores = tl.dot(query, tl.trans(keys)).to(tl.float32) * scale  # [G, S]
                scores = tl.where(ok[None, :], scores, float("-inf"))
                new_best = tl.maximum(best, tl.max(scores, axis=1))
                weights = tl.exp(scores - new_best[:, None])
                rescale = tl.exp(best - new_best)
                total = total * rescale + tl.sum(weights, axis=1)
                values = tl.load(values_at + s[:, None] * stride_vs + d[None, :], mask=ok[:, None] & d_in[None, :],
                                 other=0.0)
                acc = acc * rescale[:, None] + tl.dot(weights.to(values.dtype), values).to(tl.float32)
                best = new_best
        part = (row * kv_heads + head) * splits + split  # partial results [rows, kv heads, splits, G(, D)]
        tl.store(max_out + part * groups + g, best, mask=g_in)
        tl.store(sum_out + part * groups + g, total, mask=g_in)
        tl.store(acc_out + (part * groups + g[:, None]) * head_dim + d[None, :], acc,
                 mask=g_in[:, None] & d_in[None, :])

    return decode_attention_kernel


def _chunks(slots: int) -> int:
    return -(-slots // BLOCK_S)


def split_count(rows: int, kv_heads: int, slots: int, device: torch.device) -> int:
    """Splits of each row's slots: enough programs for two per streaming multiprocessor, at most one a chunk."""
    chunks = _chunks(slots)
    if device.type != "cuda":
        return min(chunks, 2)  # the interpreter: a split boundary inside every test
    processors = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(chunks, -(-2 * processors // (rows * kv_heads))))


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


def _launch(query, key, value, allowed, scale: float, splits: int, kernel_wrapper=None):
    """Run the kernel; returns the partial results (acc [rows, kv heads, splits, groups, dim], max, sum) in float32."""
    from triton import knobs, next_power_of_2

    rows, kv_heads, groups, dim = query.shape
    slots = key.shape[2]
    chunks_per_split = -(-_chunks(slots) // splits)
    acc = torch.empty(rows, kv_heads, splits, groups, dim, dtype=torch.float32, device=query.device)
    best = torch.empty(rows, kv_heads, splits, groups, dtype=torch.float32, device=query.device)
    total = torch.empty_like(best)
    kernel = _kernel(bool(knobs.runtime.interpret))
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    allowed_bytes = allowed.view(torch.uint8)
    kernel[(rows, kv_heads, splits)](
        query, key, value, allowed_bytes, acc, best, total,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        allowed_bytes.stride(0) if allowed.shape[0] > 1 else 0, allowed_bytes.stride(1),
        kv_heads, groups, slots, dim, scale, chunks_per_split, splits,
        BLOCK_G=max(MIN_GROUP_ROWS, next_power_of_2(groups)), BLOCK_S=BLOCK_S,
        BLOCK_D=max(16, next_power_of_2(dim)))
    return acc, best, total


def _combine(acc: torch.Tensor, best: torch.Tensor, total: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The splits' partial softmax sums as one: [rows, kv heads, groups, dim] in `dtype`."""
    overall = best.amax(dim=2, keepdim=True)  # a split with no allowed slot has -inf: weighs 0
    weight = torch.exp(best - overall)
    numerator = (acc * weight[..., None]).sum(dim=2)
    return (numerator / (total * weight).sum(dim=2)[..., None]).to(dtype)


def decode_attention_eagerly(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                             scale: float, splits: int | None = None) -> torch.Tensor:
    """The kernel called directly (no custom op): query [rows, kv heads, groups, dim] (a KV head's query heads as its
    groups), key and value [rows, kv heads, slots, dim], allowed [rows or 1, slots] (True: may be attended; every row
    needs one). Returns [rows, kv heads, groups, dim]."""
    _check(query, key, value, allowed)
    splits = splits or split_count(query.shape[0], query.shape[1], key.shape[2], query.device)
    return _combine(*_launch(query, key, value, allowed, scale, splits), query.dtype)


@functools.cache
def decode_attention_op():
    """`quant::decode_attention(query, key, value, allowed, scale) -> [rows, kv heads, groups, dim]`, the kernel as a
    custom op torch.compile traces (registered on first use: Triton is imported only where it runs)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::decode_attention", mutates_args=())
    def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                         scale: float) -> torch.Tensor:
        _check(query, key, value, allowed)
        splits = split_count(query.shape[0], query.shape[1], key.shape[2], query.device)
        return _combine(*_launch(query, key, value, allowed, scale, splits, kernel_wrapper=wrap_triton), query.dtype)

    return decode_attention
