"""tinygemm's CUDA layout, read without the kernel (quant.int4pack.unpack_cuda_codes, which the prefill of a GPTQ
model dequantizes with), against a transcription of PyTorch's packing kernel. tests/gpu/test_gpu_fastpath.py checks it
against the real CUDA op."""

from __future__ import annotations

import pytest
import torch

from quant.int4pack import unpack_cuda_codes
from tests.support.int4_layout import pack_like_pytorch


@pytest.mark.parametrize("inner_k_tiles", [2, 4, 8])
def test_unpack_reads_back_what_the_packing_kernel_writes(inner_k_tiles):
    codes = torch.randint(0, 16, (24, inner_k_tiles * 16 * 3), generator=torch.Generator().manual_seed(1),
                          dtype=torch.int32)
    assert torch.equal(unpack_cuda_codes(pack_like_pytorch(codes, inner_k_tiles)), codes)
