"""A Triton matmul that reads tinygemm's packed 4-bit weights, for the row counts tinygemm is slow at.

tinygemm (`aten._weight_int4pack_mm`) is the fastest offline 4-bit kernel for one sequence, but its time grows with
every 16 rows: on an H100 the Llama-8B gate projection takes 0.033 ms for 1 row, 0.149 ms for 32 and 4.1 ms for 1024,
where bf16 cuBLAS takes 0.067 and 0.19 ms (bench/results/int4mm-shapes.md). So a batch of 32 decoded through it runs
at 1.12x eager, and a batch's prefill is slower than bf16. This kernel reads the same packed weight (no second copy),
dequantizes each tile in registers and multiplies with tensor cores (`tl.dot`), so batches and prefills read the 4-bit
weight once per tile row instead of once per 16 rows.

Layout (`_convert_weight_to_int4pack`, see `quant.int4pack.unpack_cuda_codes`): for each 8 output rows and each 16 *
inner input columns (a "super-tile", 128 columns for inner = 8) the codes are 32 * inner / 2 contiguous int32 words,
row r's words at [r * 4 * w, (r + 1) * 4 * w) with w = inner / 2. Nibble p of that row's word c holds column
32 * (c % w) + 8 * (p % 4) + 2 * (c // w) + p // 4 of the super-tile. The kernel keeps the codes in that order and
gathers the activations' columns in the same order instead: a dot product does not depend on the order of its terms.

Partial sums over K (split-K, for enough blocks at small M) are written separately and added by the caller, so the
result is deterministic: greedy decoding gives the same tokens on every run.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

_K_TILE_COLUMNS = 16
_K_TILE = tl.constexpr(_K_TILE_COLUMNS)  # the kernel's copy (Triton reads globals only as constexpr)
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Triton's CPU interpreter (the CPU tests) multiplies bf16 wrongly in `tl.dot`; there the kernel multiplies in fp32."""


@triton.jit
def _int4pack_mm_kernel(x_ptr, w_ptr, sz_ptr, out_ptr, M, N, K, stride_xm, super_tiles, tiles_per_split,
                        INNER: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        INTERPRETED: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    WORDS: tl.constexpr = INNER // 2  # int32 words per lane
    ROW_WORDS: tl.constexpr = 4 * WORDS  # words of one output row in a super-tile
    BLOCK_K: tl.constexpr = _K_TILE * INNER  # columns of one super-tile

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output features; N is a multiple of BLOCK_N
    # Word c of row r in a super-tile: tile (r // 8), row (r % 8) within it.
    word = tl.arange(0, ROW_WORDS)
    row_base = (cols // 8) * super_tiles * (32 * WORDS) + (cols % 8) * ROW_WORDS  # [BLOCK_N]
    # Column of the super-tile that each unpacked code holds (code index l = 8 * c + p).
    code = tl.arange(0, BLOCK_K)
    c = code // 8
    p = code % 8
    column = 32 * (c % WORDS) + 8 * (p % 4) + 2 * (c // WORDS) + p // 4  # [BLOCK_K]
    shifts = 4 * tl.arange(0, 8)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first = pid_k * tiles_per_split
    for tile in range(first, tl.minimum(first + tiles_per_split, super_tiles)):
        words = tl.load(w_ptr + row_base[:, None] + tile * (32 * WORDS) + word[None, :])  # [BLOCK_N, ROW_WORDS]
        codes = tl.reshape((words[:, :, None] >> shifts[None, None, :]) & 0xF, (BLOCK_N, BLOCK_K))
        k_index = tile * BLOCK_K + column  # [BLOCK_K]
        if GROUP >= BLOCK_K:  # one group per super-tile: one scale and zero per output feature
            group = (tile * BLOCK_K) // GROUP
            scale = tl.load(sz_ptr + (group * N + cols) * 2).to(tl.float32)[:, None]
            zero = tl.load(sz_ptr + (group * N + cols) * 2 + 1).to(tl.float32)[:, None]
        else:
            offsets = ((k_index // GROUP)[None, :] * N + cols[:, None]) * 2
            scale = tl.load(sz_ptr + offsets).to(tl.float32)
            zero = tl.load(sz_ptr + offsets + 1).to(tl.float32)
        weight = ((codes.to(tl.float32) - 8.0) * scale + zero).to(tl.bfloat16)  # [BLOCK_N, BLOCK_K]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + k_index[None, :], mask=rows[:, None] < M, other=0.0)
        if INTERPRETED:
            acc += tl.dot(x.to(tl.float32), tl.trans(weight).to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(weight))
    out = out_ptr + pid_k * M * N + rows[:, None] * N + cols[None, :]
    tl.store(out, acc, mask=rows[:, None] < M)


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1), in the CPU tests
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def _plan(m: int, n: int, super_tiles: int, multiprocessors: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, splits, warps): split K until there are about two blocks per multiprocessor, as a batch's
    decode step is a few rows against a large weight (memory-bound); a prefill has blocks enough without."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n = 64 if n % 64 == 0 else 32 if n % 32 == 0 else 16 if n % 16 == 0 else 8
    blocks = triton.cdiv(m, block_m) * (n // block_n)
    splits = 1
    while blocks * splits < 2 * multiprocessors and splits * 2 <= super_tiles:
        splits *= 2
    return block_m, block_n, splits, 4


def supports(n: int, k: int, inner_k_tiles: int) -> bool:
    """Shapes the kernel takes: output features a multiple of 16 (tl.dot's smallest tile), whole super-tiles."""
    return n % 16 == 0 and k % (_K_TILE_COLUMNS * inner_k_tiles) == 0


@torch.library.triton_op("quant::int4pack_mm", mutates_args=())
def int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """x [M, K] bfloat16 (contiguous) @ the packed weight [N, K] -> [M, N] bfloat16: what `aten._weight_int4pack_mm`
    computes. A registered op, so torch.compile sees the kernel (and CUDA graphs capture it)."""
    m, k = x.shape
    n_tiles, super_tiles, _, words = packed.shape
    n, inner = n_tiles * 8, 2 * words
    block_m, block_n, splits, warps = _plan(m, n, super_tiles, _multiprocessors(x.device))
    per_split = triton.cdiv(super_tiles, splits)
    splits = triton.cdiv(super_tiles, per_split)
    partial = torch.empty((splits, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), n // block_n, splits)
    torch.library.wrap_triton(_int4pack_mm_kernel)[grid](
        x, packed, scales_and_zeros, partial, m, n, k, x.stride(0), super_tiles, per_split, INNER=inner,
        GROUP=group_size, BLOCK_M=block_m, BLOCK_N=block_n, INTERPRETED=_INTERPRETED, num_warps=warps,
        num_stages=3)
    return (partial[0] if splits == 1 else partial.sum(0)).to(torch.bfloat16)
