"""tinygemm's CUDA layout written without a GPU, for the tests that read it back (quant.int4pack, quant.int4_dequant)."""

from __future__ import annotations

import torch


def pack_like_pytorch(codes: torch.Tensor, inner_k_tiles: int) -> torch.Tensor:
    """`matrix_to_m16n8k16_Bint4_layout` (aten/src/ATen/native/cuda/int4mm.cu) in Python: codes [n][k] -> int32
    [n / 8][k / (16 * inner)][32][inner / 2], one thread t of a 32-lane block per (tile, super-tile, word)."""
    n, k = codes.shape
    as_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).long()  # [n][k / 2], high nibble = even column
    out = torch.zeros(n // 8, k // (inner_k_tiles * 16), 32, inner_k_tiles // 2, dtype=torch.int64)
    lane = torch.arange(32)
    rows = torch.arange(n // 8)[:, None] * 8 + lane[None, :] // 4  # n0 of each (tile, lane)
    for outer in range(out.shape[1]):
        for inner in range(0, inner_k_tiles, 2):
            base0 = (outer * inner_k_tiles + inner) * 16 // 2
            base1 = base0 + 16 // 2
            byte_columns = [base0 + lane % 4, base0 + lane % 4 + 4, base1 + lane % 4, base1 + lane % 4 + 4]
            v = [as_bytes[rows, c[None, :].expand_as(rows)] for c in byte_columns]
            out[:, outer, :, inner // 2] = ((v[3] & 0xF) << 28 | (v[2] & 0xF) << 24 | (v[1] & 0xF) << 20
                                            | (v[0] & 0xF) << 16 | (v[3] & 0xF0) << 8 | (v[2] & 0xF0) << 4
                                            | (v[1] & 0xF0) | (v[0] & 0xF0) >> 4)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)
