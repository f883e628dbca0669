"""tinygemm's CUDA layout, read without the kernel (quant.int4pack.unpack_cuda_codes), and the Triton kernel that
multiplies by it (quant.int4pack_triton), on the CPU: the layout against a transcription of PyTorch's packing kernel,
the Triton kernel under Triton's interpreter. tests/test_gpu_fastpath.py checks both against the real CUDA ops."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from quant.int4pack import unpack_cuda_codes

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
def test_unpack_reads_back_what_the_packing_kernel_writes(inner_k_tiles):
    codes = torch.randint(0, 16, (24, inner_k_tiles * 16 * 3), generator=torch.Generator().manual_seed(1),
                          dtype=torch.int32)
    assert torch.equal(unpack_cuda_codes(pack_like_pytorch(codes, inner_k_tiles)), codes)


TRITON_CHECK = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_int4pack_triton import pack_like_pytorch
    from quant.int4pack import dequantize_cuda_packed
    from quant.int4pack_triton import int4pack_mm
    generator = torch.Generator().manual_seed(0)
    for rows, n, k, inner, group in [(1, 32, 256, 8, 128), (5, 64, 512, 8, 64), (33, 48, 256, 4, 32),
                                     (20, 16, 512, 2, 256), (70, 64, 256, 8, 256)]:
        codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
        packed = pack_like_pytorch(codes, inner)
        scales_and_zeros = torch.stack([torch.rand(k // group, n, generator=generator) * 0.02 + 0.001,
                                        torch.randn(k // group, n, generator=generator) * 0.01], -1).bfloat16()
        x = torch.randn(rows, k, generator=generator).bfloat16()
        expected = x.float() @ dequantize_cuda_packed(packed, scales_and_zeros, group).float().t()
        got = int4pack_mm(x, packed, group, scales_and_zeros).float()
        assert got.shape == (rows, n), got.shape
        print(rows, n, k, inner, group, ((got - expected).norm() / expected.norm()).item())
""")


def test_triton_kernel_multiplies_by_the_packed_weight_under_the_interpreter():
    """Blocks of 16, 32 and 64 rows, split-K or not, group sizes below and above a super-tile. The interpreter
    rounds to bf16 by truncation (the GPU rounds to nearest), hence the 1e-2."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = TRITON_CHECK.format(root=str(ROOT), tests=str(ROOT / "tests"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = [float(line.split()[-1]) for line in done.stdout.splitlines()]
    assert len(errors) == 5 and max(errors) < 1e-2, done.stdout
