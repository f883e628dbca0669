"""The checks of tests/unit/test_int4_gemv.py, run in a process of their own with TRITON_INTERPRET=1 set before triton
is imported (tests/support/interpreter_checks): `python -m tests.support.int4_gemv_checks` prints one JSON object,
each check's name with "ok" or its traceback. quant.int4_gemv's kernel on tinygemm's CUDA layout as
tests/support/int4_layout.py transcribes PyTorch's packing kernel, against the float64 product with the weight that
quant.int4pack.dequantize_cuda_packed reads."""

from __future__ import annotations

import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from tests.support.interpreter_checks import report  # noqa: E402

import torch  # noqa: E402

from quant import int4_gemv  # noqa: E402
from quant.int4pack import dequantize_cuda_packed  # noqa: E402
from tests.support.int4_layout import pack_like_pytorch  # noqa: E402

CASES = {  # name: (inner_k_tiles, group size, out features, in features, rows, block (ROWS, TILES, SPLIT, warps))
    "default block, one row": (8, 128, 40, 512, 1, None),  # rows not a multiple of the block
    "split in two, 3 rows": (8, 128, 64, 1024, 3, (32, 2, 2, 4)),
    "8 rows, groups of 64 in tiles of 64": (4, 64, 24, 384, 8, (8, 1, 1, 4)),
    "groups of 32 in tiles of 32, split 4": (2, 32, 16, 320, 2, (16, 4, 4, 2)),
    "a split that does not divide the tiles": (8, 256, 16, 1024, 5, (8, 2, 3, 4)),
    "groups of 32 in tiles of 128": (8, 32, 8, 256, 1, (8, 1, 1, 1)),
}


def weight(n: int, k: int, inner_k_tiles: int, group_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32)
    scales_and_zeros = torch.stack([torch.rand(k // group_size, n, generator=generator) * 0.02 + 1e-3,
                                    torch.randn(k // group_size, n, generator=generator) * 0.01],
                                   dim=-1).to(torch.bfloat16)
    return pack_like_pytorch(codes, inner_k_tiles), scales_and_zeros, generator


def gives_the_rows_times_the_weight(inner_k_tiles, group_size, n, k, m, block):
    packed, scales_and_zeros, generator = weight(n, k, inner_k_tiles, group_size, inner_k_tiles + group_size + m)
    x = torch.randn(m, k, generator=generator).to(torch.bfloat16)
    got = int4_gemv.gemv_eagerly(x, packed, scales_and_zeros, group_size, block=block)
    assert got.shape == (m, n) and got.dtype == torch.bfloat16, (got.shape, got.dtype)
    unit = torch.stack([torch.ones_like(scales_and_zeros[..., 0]), torch.zeros_like(scales_and_zeros[..., 1])], -1)
    codes = dequantize_cuda_packed(packed, unit, group_size).double()  # q - 8
    scale = scales_and_zeros[..., 0].double().t().repeat_interleave(group_size, dim=1)
    zero = scales_and_zeros[..., 1].double().t().repeat_interleave(group_size, dim=1)
    want = x.double() @ (codes * scale + zero).t()
    # float32 sums rounded to bfloat16 (the interpreter truncates): within two bfloat16 steps of the largest output
    error = (got.double() - want).abs().max().item()
    assert error <= 2 ** -7 * want.abs().max().item(), (error, want.abs().max().item())
    # each output of its own row and feature: a kernel that mixed rows or groups would be far off somewhere
    shuffled = want[:, torch.randperm(n, generator=generator)] if n > 1 else want * 2
    assert (got.double() - shuffled).abs().max().item() > 10 * error + 1e-3


def refuses_what_it_cannot_read():
    packed, scales_and_zeros, _ = weight(16, 256, 8, 128, 0)
    for x, group, message in ((torch.zeros(9, 256, dtype=torch.bfloat16), 128, "up to 8 rows of 256 contiguous"),
                              (torch.zeros(1, 256, dtype=torch.bfloat16), 64, "do not fit a [16, 256] weight")):
        try:
            int4_gemv.gemv_eagerly(x, packed, scales_and_zeros, group)
        except ValueError as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"not refused: {message}")


def the_op_gives_the_kernels_product():
    packed, scales_and_zeros, generator = weight(32, 512, 8, 128, 7)
    x = torch.randn(2, 512, generator=generator).to(torch.bfloat16)
    got = int4_gemv.gemv_op()(x, packed, scales_and_zeros, 128)
    torch.testing.assert_close(got, int4_gemv.gemv_eagerly(x, packed, scales_and_zeros, 128), atol=0, rtol=0)


CHECKS = {**{f"kernel, {name}": (lambda case=case: gives_the_rows_times_the_weight(*case))
             for name, case in CASES.items()},
          "what it cannot read is refused": refuses_what_it_cannot_read,
          "the op gives the kernel's product": the_op_gives_the_kernels_product}


if __name__ == "__main__":
    report(CHECKS)
