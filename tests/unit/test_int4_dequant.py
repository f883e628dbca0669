"""quant.int4_dequant's Triton kernel, run by Triton's CPU interpreter (TRITON_INTERPRET=1) on tinygemm's CUDA layout
as tests/unit/test_int4pack_layout.py transcribes PyTorch's packing kernel. tests/gpu/test_gpu_fastpath.py runs it
compiled on a GPU against the real packing kernel and tinygemm."""

from __future__ import annotations

import pytest
import torch

from quant import int4_dequant
from quant.int4pack import dequantize_cuda_packed

from tests.support.int4_layout import pack_like_pytorch

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("inner_k_tiles,group_size,n,k", [(8, 128, 40, 512), (4, 64, 24, 384), (2, 32, 8, 320),
                                                          (8, 256, 16, 1024)])
def test_the_kernel_writes_the_weight_tinygemm_multiplies_by(interpreted, inner_k_tiles, group_size, n, k):
    """Shapes that are not whole blocks of the kernel (rows not a multiple of 16, columns of 256) check its masks."""
    generator = torch.Generator().manual_seed(inner_k_tiles + group_size)
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    packed = pack_like_pytorch(codes, inner_k_tiles)
    unit = torch.stack([torch.ones(k // group_size, n), torch.zeros(k // group_size, n)], dim=-1).to(torch.bfloat16)
    assert torch.equal(int4_dequant.dequantize_eagerly(packed, unit, group_size), (codes - 8).to(torch.bfloat16))

    scales_and_zeros = torch.stack([torch.rand(k // group_size, n, generator=generator) * 0.02 + 1e-3,
                                    torch.randn(k // group_size, n, generator=generator)], dim=-1).to(torch.bfloat16)
    got = int4_dequant.dequantize_eagerly(packed, scales_and_zeros, group_size).float()
    want = dequantize_cuda_packed(packed, scales_and_zeros, group_size).float()
    # The interpreter rounds float32 to bfloat16 toward zero, a GPU to nearest: at most one bfloat16 step apart.
    assert torch.all((got - want).abs() <= want.abs() * 2**-7), (got - want).abs().max()
    assert (got != want).float().mean() < 0.5  # scales and zeros of the right group and row, not merely close


def test_a_tensor_not_in_the_layout_is_refused_with_its_shape():
    packed = torch.zeros(2, 1, 32, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"do not fit a \[16, 128\] weight in groups of 128"):
        int4_dequant.dequantize_eagerly(packed, torch.zeros(1, 8, 2, dtype=torch.bfloat16), 128)
    with pytest.raises(ValueError, match="not tinygemm's CUDA layout"):
        int4_dequant.dequantize_eagerly(torch.zeros(16, 64, dtype=torch.int32), torch.zeros(1, 16, 2), 64)
    # the op (what the compiled decode step calls) reads dense offsets: a fused member's column slice of scales is
    # refused, never read as if it were dense
    strided = torch.zeros(2, 32, 2, dtype=torch.bfloat16)[:, :16]
    assert int4_dequant._check(packed, strided.contiguous(), 64) == (16, 128)
    with pytest.raises(ValueError, match="must be contiguous"):
        int4_dequant._check(packed, strided, 64)


def test_without_a_gpu_the_refusal_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert int4_dequant.refusal() == "no CUDA GPU"


def test_the_kernel_choice_says_why_it_keeps_torchs(monkeypatch, caplog):
    """Where the Triton kernel cannot run (here: no GPU) int4 layers keep the compiled torch dequantization and the
    log says why, once; QUANT_INT4_DEQUANTIZE_KERNEL=torch keeps it without asking; another value is refused by name."""
    from quant import int4pack
    from quant.settings import SettingsError

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: tests/gpu runs the choice")
    monkeypatch.setattr(int4pack.TRITON_DEQUANTIZE, "decided", False)  # and restored after, with its reason
    monkeypatch.setattr(int4pack.TRITON_DEQUANTIZE, "known_reason", None)
    with caplog.at_level("WARNING", logger="quant.int4pack"):
        assert int4pack.dequantize_kernel_choice() == "torch"
        assert int4pack.dequantize_kernel_choice() == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "int4 layers dequantize long inputs with the compiled torch kernel: no CUDA GPU"]
    monkeypatch.setenv("QUANT_INT4_DEQUANTIZE_KERNEL", "torch")
    monkeypatch.setattr(int4pack.TRITON_DEQUANTIZE, "decided", False)
    assert int4pack.dequantize_kernel_choice() == "torch" and not int4pack.TRITON_DEQUANTIZE.decided
    monkeypatch.setenv("QUANT_INT4_DEQUANTIZE_KERNEL", "cuda")
    with pytest.raises(SettingsError, match="QUANT_INT4_DEQUANTIZE_KERNEL='cuda' is not one of auto, torch"):
        int4pack.dequantize_kernel_choice()


def test_the_load_report_says_when_the_slower_dequantization_runs_and_why(monkeypatch):
    """A model whose int4pack layers dequantize (from 32 rows) with the torch version because the Triton kernel
    refused gets one report line with the reason; none where Triton runs, where the operator chose torch (nothing was
    refused), or where nothing dequantizes."""
    from torch import nn

    from quant import int4pack

    codes = torch.randint(0, 16, (16, 64), generator=torch.Generator().manual_seed(0))
    layer = int4pack.pack_int4_linear(codes, torch.ones(2, 16), torch.zeros(2, 16), group_size=32, bias=None)
    model = nn.Sequential(layer)
    monkeypatch.setattr(int4pack.TRITON_DEQUANTIZE, "known_reason", "no CUDA GPU")
    assert int4pack.dequantize_kernel_warnings(model) == []  # dequantize_from_rows 0 (on the CPU it is always)
    layer.dequantize_from_rows = 32
    assert int4pack.dequantize_kernel_warnings(model) == [
        "Prompts and batches of 32 rows or more dequantize the int4 weights with the compiled torch kernel, several "
        "times slower than quant.int4_dequant's Triton kernel: no CUDA GPU."]
    layer.dequantize_kernel = "triton"
    assert int4pack.dequantize_kernel_warnings(model) == []
    layer.dequantize_kernel = "torch"
    # QUANT_INT4_DEQUANTIZE_KERNEL=torch: nothing refused
    monkeypatch.setattr(int4pack.TRITON_DEQUANTIZE, "known_reason", None)
    assert int4pack.dequantize_kernel_warnings(model) == []
