"""A few rows (a decode step at batch 1-8) times tinygemm's packed int4 weight, by one Triton kernel that reads the
packed words once and never writes the weight.

Why: a GPTQ/AWQ/HQQ 4-bit layer on PyTorch's int4 kernel (quant.int4pack) decodes at batch 1 on tinygemm,
which read the 8B projections at 28-40% of an H200's bandwidth (bench/results/machete-rows.md: 2.42 ms a step for
the four projections of 32 layers, against 3.93 ms for bf16 cuBLAS; the 4-bit weights are a quarter of the bytes).
Issue 27's 2.5x bf16 at batch 1 needs the 4-bit step near the bandwidth floor.

The kernel: each program takes ROWS output features and walks the input features in chunks of TILES packing tiles
(32 x WORDS columns each), SPLIT programs sharing a row block's columns (their partial sums added atomically in
float32) where there are too few row blocks to fill the GPU. The packed words are loaded as quant.int4_dequant loads
them (tinygemm's layout: row n's codes of a tile are the WORDS words of lanes 4 (n % 8) + l, nibble 4 h + q of lane
l's word j is column 32 j + 8 q + 2 l + h) and the activations are gathered in that order, so nothing is permuted.
Each weight is (q - 8) s + z in float32 (s and z of its group; tinygemm and the dequantize + cuBLAS path round it to
bfloat16 first: the results differ by that rounding, about 2^-9 of a weight), times its activation, added to a
float32 partial sum of its position in the chunk; the partial sums are added up once, after the last chunk, so the
loop has no exchange between threads.

Registered as a PyTorch custom op over the Triton kernel (`torch.library.triton_op`), so torch.compile traces it into
the decode step and CUDA graphs capture it. Off unless QUANT_INT4_GEMV=triton until bench/int4_gemv_rows.py has
timed it on a GPU against tinygemm.
"""

from __future__ import annotations

import functools

import torch

from . import int4_dequant, triton_support

MAX_ROWS = 8
"""Activation rows up to which a layer may use this kernel (a decode step at batch 1-8); more go to tinygemm or to
dequantize + cuBLAS (quant.int4pack)."""


def block_for(n_features: int, k_outer: int, sms: int = 132, m: int = 1) -> tuple[int, int, int, int]:
    """(ROWS, TILES, SPLIT, warps) for `m` rows times a weight of `n_features` rows and `k_outer` packing tiles: 32
    rows and two tiles a program in 8 warps (16 rows from 3 rows of x), split over the columns until there are about
    two programs per streaming multiprocessor. Compiled for sm_90a (bench/results/kernel-registers-int4-gemv.md):
    144 registers a thread at one row, no spill, a loop of 247 instructions for 32 weights a thread (7.7 a weight;
    the kernel that summed inside the loop took 465, 112 of them shuffles); blocks twice as large spill. Until
    bench/int4_gemv_rows.py has swept the blocks on a GPU."""
    rows, tiles = (32, 2) if m <= 2 else (16, 2)
    split = 1
    while -(-n_features // rows) * split < 2 * sms and k_outer // (split * 2) >= tiles:
        split *= 2
    return rows, tiles, split, 8


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1, the CPU interpreter the
    tests run it in): importing this module must not need Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(x, packed, scales_and_zeros, out, m_rows, n_features, k_outer, stride_xm, tiles_per_split,
                    WORDS: tl.constexpr, GROUP: tl.constexpr, M: tl.constexpr, ROWS: tl.constexpr,
                    TILES: tl.constexpr, ATOMIC: tl.constexpr):
        n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        n_in = n < n_features
        m = tl.arange(0, M)
        m_in = m < m_rows
        lanes = tl.arange(0, 4)
        j = tl.arange(0, WORDS)
        p = tl.arange(0, 8)  # nibble p = 4 h + q of a word
        shift = 4 * p
        # column within a tile of lane l's word j, nibble p: 32 j + 8 q + 2 l + h  -> [4, WORDS, 8]
        column = (32 * j[None, :, None] + 8 * (p % 4)[None, None, :] + 2 * lanes[:, None, None]
                  + (p // 4)[None, None, :])
        lane = 4 * (n % 8)[:, None, None, None] + lanes[None, None, :, None]  # [ROWS, 1, 4, 1]
        # One float32 partial sum per weight position of a chunk, kept across the chunks and summed once at the end:
        # a sum inside the loop shuffled between threads at every chunk (bench/kernel_registers.py counts them).
        acc = tl.full([M, ROWS, TILES, 4, WORDS, 8], 0.0, tl.float32)
        first = tl.program_id(1) * tiles_per_split
        for t0 in range(first, first + tiles_per_split, TILES):
            tile = t0 + tl.arange(0, TILES)
            t_in = (tile < k_outer) & (tile < first + tiles_per_split)
            word_at = ((((n // 8)[:, None, None, None] * k_outer + tile[None, :, None, None]) * 32 + lane) * WORDS
                       + j[None, None, None, :])  # [ROWS, TILES, 4, WORDS]
            words = tl.load(packed + word_at, mask=n_in[:, None, None, None] & t_in[None, :, None, None], other=0)
            codes = ((words[:, :, :, :, None] >> shift[None, None, None, None, :]) & 0xF).to(tl.float32)
            group = (tile[:, None] * (32 * WORDS) + 32 * j[None, :]) // GROUP  # [TILES, WORDS]
            at = (group[None, :, :] * n_features + n[:, None, None]) * 2  # [ROWS, TILES, WORDS]
            group_in = n_in[:, None, None] & t_in[None, :, None]
            scale = tl.load(scales_and_zeros + at, mask=group_in, other=0.0).to(tl.float32)
            offset = tl.load(scales_and_zeros + at + 1, mask=group_in, other=0.0).to(tl.float32) - 8.0 * scale
            weight = codes * scale[:, :, None, :, None] + offset[:, :, None, :, None]  # (q - 8) s + z
            k = tile[:, None, None, None] * (32 * WORDS) + column[None, :, :, :]  # [TILES, 4, WORDS, 8]
            xs = tl.load(x + m[:, None, None, None, None] * stride_xm + k[None, :, :, :, :],
                         mask=m_in[:, None, None, None, None] & t_in[None, :, None, None, None],
                         other=0.0).to(tl.float32)  # [M, TILES, 4, WORDS, 8]
            acc += weight[None, :, :, :, :, :] * xs[:, None, :, :, :, :]
        acc = tl.sum(tl.sum(tl.sum(tl.sum(acc, axis=5), axis=4), axis=3), axis=2)  # [M, ROWS]
        at = out + m[:, None] * n_features + n[None, :]
        mask = m_in[:, None] & n_in[None, :]
        if ATOMIC:
            tl.atomic_add(at, acc, mask=mask)
        else:
            tl.store(at, acc.to(out.dtype.element_ty), mask=mask)

    return gemv_kernel


def _check(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> tuple[int, int]:
    n_features, k_features = int4_dequant._check(packed, scales_and_zeros, group_size)  # tinygemm's layout
    if group_size < 32:
        raise ValueError(f"groups of {group_size}: the kernel takes groups of 32 columns or more")
    if x.dim() != 2 or x.shape[1] != k_features or x.shape[0] > MAX_ROWS or x.stride(1) != 1:
        raise ValueError(f"the kernel takes up to {MAX_ROWS} rows of {k_features} contiguous features: "
                         f"{tuple(x.shape)}")
    return n_features, k_features


def _launch(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
            kernel_wrapper=None, block: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x [m, k] bf16 times the packed weight -> [m, n] bf16. `block`: (ROWS, TILES, SPLIT, warps), for
    bench/int4_gemv_rows.py; default `block_for` the shape."""
    from triton import knobs

    n_features, _ = _check(x, packed, scales_and_zeros, group_size)
    k_outer, words = packed.shape[1], packed.shape[3]
    rows, tiles, split, warps = block or block_for(n_features, k_outer, _multiprocessors(packed.device), x.shape[0])
    tiles_per_split = -(-k_outer // split)
    tiles_per_split = -(-tiles_per_split // tiles) * tiles  # whole chunks, so that no chunk crosses two programs
    kernel = _kernel(bool(knobs.runtime.interpret))
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    m = x.shape[0]
    atomic = split > 1
    out = (torch.zeros if atomic else torch.empty)(m, n_features, dtype=torch.float32 if atomic else torch.bfloat16,
                                                   device=x.device)
    grid = (-(-n_features // rows), -(-k_outer // tiles_per_split))
    with triton_support.launch_device(packed):
        kernel[grid](x, packed, scales_and_zeros, out, m, n_features, k_outer, x.stride(0), tiles_per_split,
                     WORDS=words, GROUP=group_size, M=next(b for b in (1, 2, 4, 8) if m <= b), ROWS=rows, TILES=tiles,
                     ATOMIC=atomic, num_warps=warps)
    return out.to(torch.bfloat16) if atomic else out


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


def gemv_eagerly(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                 block: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """The kernel called directly (no custom op): what the tests run under Triton's CPU interpreter."""
    return _launch(x.contiguous(), packed.contiguous(), scales_and_zeros.contiguous(), group_size, block=block)


@functools.cache
def gemv_op():
    """`quant::int4pack_gemv(x, packed, scales_and_zeros, group_size) -> bf16 [m, out]`, the kernel as a custom op
    torch.compile traces (registered on first use: Triton is imported only where it runs)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::int4pack_gemv", mutates_args=())
    def int4pack_gemv(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor,
                      group_size: int) -> torch.Tensor:
        return _launch(x, packed, scales_and_zeros, group_size, kernel_wrapper=wrap_triton)

    return int4pack_gemv


refusal = triton_support.refusal
"""Why this kernel cannot run here (no CUDA GPU, no Triton), or None."""
