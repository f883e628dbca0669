"""A Triton matmul that reads tinygemm's packed int4 weight in its main loop: for the int4pack layers' calls of a few
dozen to a few hundred rows (a batch's decode steps).

Why: at 128 rows tinygemm takes 0.55 ms for the 8B gate projection (its time grows with every 16 rows), and
dequantizing to bf16 for cuBLAS (quant.int4_dequant) 0.04 + 0.06 ms: that writes and reads every weight in bf16
once more than a bf16 model reads it, so a batch on int4 layers ran at 0.84x bf16
(bench/results/batch-engines-8b-int4-triton-64.md). Here each program loads its block of packed words once (half a
byte a weight), dequantizes it in registers and multiplies on the tensor cores (`tl.dot`), so the weight traffic is
a quarter of bf16's.

Layout (quant.int4pack.unpack_cuda_codes): row n's codes of one 32 W-column tile are the 4 W consecutive int32 words
of lanes 4 (n % 8) + l, l < 4 (W words each), and nibble p of lane l's word j is column 32 j + 8 (p % 4) + 2 l + p // 4
of the tile. The kernel keeps the codes in that packed order and loads the activations' columns in the same order
instead (a dot product does not care in which order its terms are summed), so nothing is permuted in registers.
Same arithmetic for the weight as quant.int4_dequant (w = (q - 8) * scale + zero in float32, rounded to bfloat16),
products accumulated in float32, as cuBLAS does.
"""

from __future__ import annotations

import functools

import torch

BLOCKS = ((64, 64, 128, 4, 3), (128, 64, 128, 4, 3), (64, 32, 128, 4, 4), (32, 64, 128, 4, 3),
          (64, 128, 128, 4, 3), (128, 128, 128, 8, 3), (32, 32, 256, 4, 3), (64, 64, 256, 4, 3))
"""(rows, columns, inner, warps, stages) of a program's block, for bench/int4mm_shapes.py's sweep."""


def block_for(rows: int, out_features: int, sms: int = 132) -> tuple[int, int, int, int, int]:
    """A block for `rows` x `out_features`: 64 x 64 by default, narrower where that leaves the GPU's SMs idle."""
    block_m = 32 if rows <= 32 else 64
    block_n = 64
    if -(-rows // block_m) * -(-out_features // block_n) < 2 * sms:
        block_n = 32
    return block_m, block_n, 128, 4, 3


@functools.cache
def _kernel(interpret: bool):
    import triton
    import triton.language as tl

    @triton.jit
    def int4_gemm_kernel(x, packed, scales_and_zeros, out, m_rows, n_features, k_features, k_outer,
                         WORDS: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, INTERPRETED: tl.constexpr):
        TILE: tl.constexpr = 32 * WORDS
        WORDS_PER_BLOCK: tl.constexpr = BLOCK_K // 8
        m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        # word slot s of a row's block = (tile t, lane l, word j) in packed order: s = (4 t + l) W + j
        slot = tl.arange(0, WORDS_PER_BLOCK)
        slot_tile = slot // (4 * WORDS)
        slot_lane = (slot // WORDS) % 4
        slot_word = slot % WORDS
        # packed-order column c = 8 s + p -> its column in the block
        c = tl.arange(0, BLOCK_K)
        p = c % 8
        cw = c // 8
        column = ((cw // (4 * WORDS)) * TILE + 32 * (cw % WORDS) + 8 * (p % 4) + 2 * ((cw // WORDS) % 4) + p // 4)
        row_in = n < n_features
        word_row = (n // 8)[:, None] * k_outer
        lane_row = 4 * (n % 8)[:, None] + slot_lane[None, :]
        shift = 4 * tl.arange(0, 8)
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # tl.zeros is a @jit helper the late-set interpreter cannot call
        for k0 in range(0, k_features, BLOCK_K):
            tile = k0 // TILE + slot_tile
            words = tl.load(packed + ((word_row + tile[None, :]) * 32 + lane_row) * WORDS + slot_word[None, :],
                            mask=row_in[:, None] & (tile < k_outer)[None, :], other=0)
            codes = tl.reshape((words[:, :, None] >> shift[None, None, :]) & 0xF, (BLOCK_N, BLOCK_K))
            k = k0 + column
            k_in = k < k_features
            if GROUP >= BLOCK_K:  # the whole block in one group: one scale and zero per row
                at = ((k0 // GROUP) * n_features + n) * 2
                scale = tl.load(scales_and_zeros + at, mask=row_in, other=0.0).to(tl.float32)[:, None]
                zero = tl.load(scales_and_zeros + at + 1, mask=row_in, other=0.0).to(tl.float32)[:, None]
            else:
                at = ((k // GROUP)[None, :] * n_features + n[:, None]) * 2
                both_in = row_in[:, None] & k_in[None, :]
                scale = tl.load(scales_and_zeros + at, mask=both_in, other=0.0).to(tl.float32)
                zero = tl.load(scales_and_zeros + at + 1, mask=both_in, other=0.0).to(tl.float32)
            weight = ((codes.to(tl.float32) - 8.0) * scale + zero).to(tl.bfloat16)  # [BLOCK_N, BLOCK_K]
            a = tl.load(x + m[:, None] * k_features + k[None, :], mask=(m < m_rows)[:, None] & k_in[None, :],
                        other=0.0)
            if INTERPRETED:  # Triton's CPU interpreter multiplies bfloat16 blocks wrongly: the tests run it in float32
                acc = tl.dot(a.to(tl.float32), tl.trans(weight).to(tl.float32), acc)
            else:
                acc = tl.dot(a, tl.trans(weight), acc)
        tl.store(out + m[:, None] * n_features + n[None, :], acc.to(tl.bfloat16),
                 mask=(m < m_rows)[:, None] & row_in[None, :])

    return int4_gemm_kernel


def _check(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> tuple[int, int]:
    if packed.dim() != 4 or packed.shape[2] != 32 or packed.dtype != torch.int32:
        raise ValueError(f"not tinygemm's CUDA layout [n/8, k/(16 inner), 32, inner/2] int32: {tuple(packed.shape)}")
    n_tiles, k_outer, _, words = packed.shape
    n_features, k_features = n_tiles * 8, k_outer * 32 * words
    if x.dim() != 2 or x.shape[1] != k_features or x.dtype != torch.bfloat16:
        raise ValueError(f"the input must be bfloat16 [rows, {k_features}]: {tuple(x.shape)} {x.dtype}")
    if k_features % group_size or scales_and_zeros.shape != (k_features // group_size, n_features, 2):
        raise ValueError(f"scales_and_zeros {tuple(scales_and_zeros.shape)} do not fit a [{n_features}, "
                         f"{k_features}] weight in groups of {group_size}")
    return n_features, k_features


def _launch(x, packed, scales_and_zeros, group_size, out, kernel_wrapper=None, block=None) -> None:
    from triton import knobs

    rows, n_features = out.shape
    k_features, words = x.shape[1], packed.shape[3]
    block_m, block_n, block_k, warps, stages = block or block_for(rows, n_features)
    interpreted = bool(knobs.runtime.interpret)
    kernel = _kernel(interpreted)
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    grid = (-(-rows // block_m), -(-n_features // block_n))
    kernel[grid](x, packed, scales_and_zeros, out, rows, n_features, k_features, packed.shape[1],
                 WORDS=words, GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                 INTERPRETED=interpreted, num_warps=warps, num_stages=stages)


def matmul_eagerly(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                   block: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """x [rows, in] (bfloat16) @ the packed weight's transpose -> [rows, out]: the kernel called directly (the tests run
    it under Triton's CPU interpreter; the bench sweeps `block`)."""
    n_features, _ = _check(x, packed, scales_and_zeros, group_size)
    out = torch.empty(x.shape[0], n_features, dtype=torch.bfloat16, device=x.device)
    _launch(x.contiguous(), packed.contiguous(), scales_and_zeros.contiguous(), group_size, out, block=block)
    return out


@functools.cache
def matmul_op():
    """`quant::int4pack_matmul(x, packed, scales_and_zeros, group_size)`, the kernel as a custom op torch.compile
    traces (registered on first use)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::int4pack_matmul", mutates_args=())
    def int4pack_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                        group_size: int) -> torch.Tensor:
        n_features, _ = _check(x, packed, scales_and_zeros, group_size)
        out = torch.empty(x.shape[0], n_features, dtype=torch.bfloat16, device=x.device)
        _launch(x, packed, scales_and_zeros, group_size, out, kernel_wrapper=wrap_triton)
        return out

    return int4pack_matmul
