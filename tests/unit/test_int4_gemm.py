"""quant.int4_gemm's Triton matmul over tinygemm's packed layout, run by Triton's CPU interpreter (TRITON_INTERPRET=1;
the interpreter multiplies in float32, a GPU in bfloat16). tests/gpu/test_gpu_fastpath.py runs it on a GPU against
tinygemm, and in the compiled decode step."""

from __future__ import annotations

import pytest
import torch

from quant import int4_dequant, int4_gemm
from tests.support.int4_layout import pack_like_pytorch

pytest.importorskip("triton")

CASES = [  # inner_k_tiles, group size, out, in, rows, block: none a whole number of blocks, both scale paths
    (8, 128, 40, 512, 5, (16, 16, 128, 4, 3)), (4, 64, 24, 384, 33, (32, 32, 128, 4, 3)),
    (2, 32, 16, 320, 7, (16, 16, 128, 4, 3)), (8, 256, 64, 1024, 16, (16, 32, 256, 4, 3)),
    (8, 32, 48, 512, 20, (16, 16, 256, 4, 3))]


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("inner_k_tiles,group_size,n,k,rows,block", CASES)
def test_the_matmul_multiplies_by_the_packed_weight(interpreted, inner_k_tiles, group_size, n, k, rows, block):
    generator = torch.Generator().manual_seed(inner_k_tiles * group_size + rows)
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    packed = pack_like_pytorch(codes, inner_k_tiles)
    # Exact: integer weights (unit scales), inputs of a dozen +-1 per row, sums well inside bfloat16's exact integers
    unit = torch.stack([torch.ones(k // group_size, n), torch.zeros(k // group_size, n)], dim=-1).to(torch.bfloat16)
    x = torch.zeros(rows, k).scatter_(1, torch.randint(0, k, (rows, 12), generator=generator),
                                      torch.randint(0, 2, (rows, 12), generator=generator).float() * 2 - 1)
    x = x.to(torch.bfloat16)
    assert torch.equal(int4_gemm.matmul_eagerly(x, packed, unit, group_size, block=block),
                       (x.float() @ (codes - 8).float().t()).to(torch.bfloat16))
    # Scales and zeros of the right group and row: against the dequantized weight (the interpreter rounds both alike)
    scales_and_zeros = torch.stack([torch.rand(k // group_size, n, generator=generator) * 0.02 + 1e-3,
                                    torch.randn(k // group_size, n, generator=generator) * 0.01], dim=-1)
    scales_and_zeros = scales_and_zeros.to(torch.bfloat16)
    x = torch.randn(rows, k, generator=generator).to(torch.bfloat16)
    got = int4_gemm.matmul_eagerly(x, packed, scales_and_zeros, group_size, block=block).float()
    want = x.float() @ int4_dequant.dequantize_eagerly(packed, scales_and_zeros, group_size).float().t()
    assert ((got - want).norm() / want.norm()).item() < 4e-3


def test_inputs_that_do_not_fit_the_weight_are_refused_with_their_shapes():
    packed = torch.zeros(2, 1, 32, 4, dtype=torch.int32)
    scales_and_zeros = torch.zeros(1, 16, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"bfloat16 \[rows, 128\]: \(3, 64\)"):
        int4_gemm.matmul_eagerly(torch.zeros(3, 64, dtype=torch.bfloat16), packed, scales_and_zeros, 128)
    with pytest.raises(ValueError, match="do not fit"):
        int4_gemm.matmul_eagerly(torch.zeros(3, 128, dtype=torch.bfloat16), packed, scales_and_zeros, 64)


def test_the_default_block_narrows_where_the_gpu_would_idle():
    assert int4_gemm.block_for(128, 28672)[:2] == (64, 64)  # 2 x 448 programs
    assert int4_gemm.block_for(128, 4096)[:2] == (64, 32)  # 2 x 64 would leave most of 132 SMs idle
    assert int4_gemm.block_for(16, 28672)[0] == 32
