"""tinygemm's packed int4 weight dequantized to bfloat16 by one Triton kernel that writes the weight in order.

Why: a GPTQ/AWQ/HQQ layer on PyTorch's int4 kernel (quant.int4pack) multiplies many rows at once (a prefill, a batch's
decode step) faster as dequantize + cuBLAS than on tinygemm, whose time grows with every 16 rows. The dequantization
written in torch (`quant.int4pack.dequantize_cuda_packed`) and fused by torch.compile reads tinygemm's tiled layout
element by element with long index arithmetic: 0.49 ms for the 8B gate projection on an H100, about 240 GB/s, so
that at 128 rows dequantize + cuBLAS was no faster than tinygemm (bench/results/int4mm-shapes-static.md).

This kernel walks the output [out, in] in blocks, so its stores (four of the five bytes it moves per weight) are
contiguous; each block's codes come from a few hundred bytes of the packed tensor (one 8-row tile's words), read
from the cache, and every division is by a power of two. Same arithmetic as dequantize_cuda_packed: w = (q - 8) *
scale + zero in float32, rounded to bfloat16 (Triton may contract the multiply-add into one FMA: then a weight could
differ from the torch version by one bfloat16 step; on an H200 every block measured gave the same weights bit for
bit, bench/results/int4-dequant-blocks.md). Inside a CUDA graph it writes 3.4-3.5 TB/s there, 7x the torch version.

It is registered as a PyTorch custom op over a Triton kernel (`torch.library.triton_op`), so torch.compile traces it
into the decode step and CUDA graphs capture it. `refusal()` says why it cannot run (no Triton, no CUDA); the caller
then keeps the compiled torch version.
"""

from __future__ import annotations

import functools

import torch

from . import triton_support

refusal = triton_support.refusal
"""Why this kernel cannot run here (no CUDA GPU, no Triton), or None."""

BLOCK = (8, 512, 4)
"""A program's block of the weight, rows x columns (whole packing tiles of 32 to 128 columns and whole groups of 32
to 256), and its warps."""


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1, the CPU interpreter the
    tests run it in): importing this module must not need Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize_kernel(packed, scales_and_zeros, out, n_features, k_features, k_outer,
                          WORDS: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
        # Layout (quant.int4pack.unpack_cuda_codes): codes [n][k] in packed[n // 8][k // (32 W)][lane][j] (int32, W
        # words of eight nibbles): row n's codes of one 32 W-column tile are the W words of lanes 4 (n % 8) + l,
        # l < 4, and nibble p = 4 h + q of lane l's word j is column 32 j + 8 q + 2 l + h of the tile. Each word is
        # loaded once; its nibbles are put in column order by a permute, so that every row's COLUMNS outputs are
        # stored contiguously.
        TILES: tl.constexpr = COLUMNS // (32 * WORDS)
        GROUPS: tl.constexpr = COLUMNS // GROUP
        n = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        tile = tl.program_id(1) * TILES + tl.arange(0, TILES)
        lane = 4 * (n % 8)[:, None, None, None] + tl.arange(0, 4)[None, None, :, None]  # [ROWS, 1, 4, 1]
        word_at = ((((n // 8)[:, None, None, None] * k_outer + tile[None, :, None, None]) * 32 + lane) * WORDS
                   + tl.arange(0, WORDS)[None, None, None, :])  # [ROWS, TILES, 4, WORDS]
        word_in = (n < n_features)[:, None, None, None] & (tile < k_outer)[None, :, None, None]
        words = tl.load(packed + word_at, mask=word_in, other=0)
        shift = 4 * tl.arange(0, 8)
        codes = (words[:, :, :, :, None] >> shift[None, None, None, None, :]) & 0xF  # [R, T, l, j, p]
        codes = tl.reshape(codes, (ROWS, TILES, 4, WORDS, 2, 4))  # p = 4 h + q
        codes = tl.permute(codes, (0, 1, 3, 5, 2, 4))  # [R, T, j, q, l, h]: column order within a tile
        codes = tl.reshape(codes, (ROWS, GROUPS, GROUP)).to(tl.float32)
        group = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
        at = (group[None, :] * n_features + n[:, None]) * 2  # [ROWS, GROUPS]
        group_in = (n < n_features)[:, None] & (group < k_features // GROUP)[None, :]
        scale = tl.load(scales_and_zeros + at, mask=group_in, other=0.0).to(tl.float32)
        zero = tl.load(scales_and_zeros + at + 1, mask=group_in, other=0.0).to(tl.float32)
        weight = (codes - 8.0) * scale[:, :, None] + zero[:, :, None]
        weight = tl.reshape(weight, (ROWS, COLUMNS))
        k = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        tl.store(out + n[:, None] * k_features + k[None, :], weight.to(tl.bfloat16),
                 mask=(n < n_features)[:, None] & (k < k_features)[None, :])

    return dequantize_kernel


def _launch(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, out: torch.Tensor,
            kernel_wrapper=None, block: tuple[int, int, int] | None = None) -> None:
    """`block`: (rows, columns, warps) of a program, for bench/int4_dequant_blocks.py; default BLOCK."""
    k_outer, words = packed.shape[1], packed.shape[3]
    n_features, k_features = out.shape
    from triton import knobs

    rows, columns, warps = block or BLOCK
    kernel = _kernel(bool(knobs.runtime.interpret))
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    grid = (-(-n_features // rows), -(-k_features // columns))
    with triton_support.launch_device(packed):
        kernel[grid](packed, scales_and_zeros, out, n_features, k_features, k_outer,
                     WORDS=words, GROUP=group_size, ROWS=rows, COLUMNS=columns, num_warps=warps)


def _check(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> tuple[int, int]:
    if packed.dim() != 4 or packed.shape[2] != 32 or packed.dtype != torch.int32:
        raise ValueError(f"not tinygemm's CUDA layout [n/8, k/(16 inner), 32, inner/2] int32: {tuple(packed.shape)} "
                         f"{packed.dtype}")
    if not (packed.is_contiguous() and scales_and_zeros.is_contiguous()):  # the kernel computes dense offsets
        raise ValueError("the packed weight and its scales and zeros must be contiguous tensors")
    n_tiles, k_outer, _, words = packed.shape
    n_features, k_features = n_tiles * 8, k_outer * 32 * words
    if k_features % group_size or scales_and_zeros.shape != (k_features // group_size, n_features, 2):
        raise ValueError(f"scales_and_zeros {tuple(scales_and_zeros.shape)} do not fit a [{n_features}, "
                         f"{k_features}] weight in groups of {group_size}")
    return n_features, k_features


def dequantize_eagerly(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                       block: tuple[int, int, int] | None = None) -> torch.Tensor:
    """The kernel called directly (no custom op): what the tests run under Triton's CPU interpreter."""
    packed, scales_and_zeros = packed.contiguous(), scales_and_zeros.contiguous()
    n_features, k_features = _check(packed, scales_and_zeros, group_size)
    out = torch.empty(n_features, k_features, dtype=torch.bfloat16, device=packed.device)
    _launch(packed, scales_and_zeros, group_size, out, block=block)
    return out


@functools.cache
def dequantize_op():
    """`quant::int4pack_dequantize(packed, scales_and_zeros, group_size) -> bf16 [out, in]`, the kernel as a custom op
    torch.compile traces (registered on first use: Triton is imported only where it runs)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::int4pack_dequantize", mutates_args=())
    def int4pack_dequantize(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
        n_features, k_features = _check(packed, scales_and_zeros, group_size)
        out = torch.empty(n_features, k_features, dtype=torch.bfloat16, device=packed.device)
        _launch(packed, scales_and_zeros, group_size, out, kernel_wrapper=wrap_triton)
        return out

    return int4pack_dequantize
