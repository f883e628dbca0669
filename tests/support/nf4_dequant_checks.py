"""The checks of tests/unit/test_nf4_dequant.py, run in a process of their own with TRITON_INTERPRET=1 set before
triton is imported (tests/support/interpreter_checks): `python -m tests.support.nf4_dequant_checks` prints one JSON
object, each check's name with "ok" or its traceback. Each check compares quant.nf4_dequant's kernel with
bitsandbytes' own dequantization of the same bytes (its CPU backend)."""

from __future__ import annotations

import copy
import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from tests.support.interpreter_checks import report  # noqa: E402

import bitsandbytes.functional as F  # noqa: E402
import torch  # noqa: E402

from quant import nf4_dequant  # noqa: E402

CASES = {  # name: (quant type, double quantization, out features, in features, block size, dtype)
    # more than one program; more than 256 absmax blocks, so the double quantization's scale changes along the weight
    "nf4 nested 160x512": ("nf4", True, 160, 512, 64, torch.bfloat16),
    # a weight that is not a whole number of programs; the plain float32 absmax
    "nf4 plain 40x100": ("nf4", False, 40, 100, 64, torch.bfloat16),
    "fp4 nested 24x256 fp16": ("fp4", True, 24, 256, 64, torch.float16),
    "nf4 nested blocks of 128": ("nf4", True, 48, 384, 128, torch.bfloat16),
    "nf4 plain blocks of 4096": ("nf4", False, 4, 4096, 4096, torch.bfloat16),  # blocks longer than a program
}


def equals_bitsandbytes(quant_type, nested, rows, columns, block, dtype):
    generator = torch.Generator().manual_seed(rows * columns)
    weight = (torch.randn(rows, columns, generator=generator) * torch.linspace(0.1, 3, rows)[:, None]).to(dtype)
    packed, state = F.quantize_4bit(weight, blocksize=block, compress_statistics=nested, quant_type=quant_type)
    assert state.nested == nested
    in_float32 = copy.copy(state)
    in_float32.dtype = torch.float32
    want = F.dequantize_4bit(packed, in_float32)  # bitsandbytes' arithmetic in float32, before any rounding
    if nested and state.absmax.numel() > state.state2.blocksize:
        assert state.state2.absmax.unique().numel() > 1  # a wrong scale index would show
    exact = nf4_dequant.dequantize(packed, state, dtype=torch.float32)
    torch.testing.assert_close(exact, want, atol=0, rtol=0)  # the same arithmetic: bit for bit
    got = nf4_dequant.dequantize(packed, state)
    assert got.shape == (rows, columns) and got.dtype == dtype
    # rounded to the layer's dtype: one step of it at most (the interpreter truncates to bfloat16 where a GPU rounds)
    torch.testing.assert_close(got.float(), want, atol=0, rtol=2 ** -7 if dtype == torch.bfloat16 else 2 ** -10)


def what_it_cannot_read_is_refused():
    weight = torch.randn(8, 64)
    packed, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    for bad, message in ((packed.view(torch.int8), "packed as uint8"), (packed[::2], "contiguous")):
        try:
            nf4_dequant.dequantize(bad, state)
        except ValueError as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"not refused: {message}")


def converted_layer_gives_bitsandbytes_output():
    """A Linear4bit converted from 3 rows: 2 rows run bitsandbytes' own forward, 5 rows the kernel + a matmul, and
    both give what the layer gave before (its weight, saving and class ancestry untouched)."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(256, 48, bias=True, compute_dtype=torch.float32, compress_statistics=True,
                              quant_type="nf4").to("cpu")
    inputs = {rows: torch.randn(rows, 256) for rows in (2, 5)}
    before = {rows: layer(x) for rows, x in inputs.items()}
    packed = layer.weight.data.clone()
    assert nf4_dequant.convert_model(torch.nn.Sequential(layer), from_rows=3) == 1
    assert isinstance(layer, bnb.nn.Linear4bit) and type(layer).__name__ == "Dequantizing4bitLinear"
    assert torch.equal(layer.weight.data, packed)
    for rows, x in inputs.items():
        torch.testing.assert_close(layer(x), before[rows], atol=1e-5, rtol=1e-5)
    calls = []
    layer._bitsandbytes_forward = lambda x: calls.append(x.shape[0]) or before[2]  # which path each call took
    layer(inputs[2]), layer(inputs[5])
    assert calls == [2]
    assert nf4_dequant.convert_model(torch.nn.Sequential(layer), from_rows=3) == 0  # converted once


def the_op_gives_the_kernels_weight():
    weight = torch.randn(40, 128)
    packed, state = F.quantize_4bit(weight.to(torch.bfloat16), compress_statistics=True, quant_type="nf4")
    got = nf4_dequant.dequantize_op()(*nf4_dequant.op_arguments(packed, state), torch.float32)
    torch.testing.assert_close(got, nf4_dequant.dequantize(packed, state, dtype=torch.float32), atol=0, rtol=0)


CHECKS = {**{f"kernel {name}": (lambda case=case: equals_bitsandbytes(*case)) for name, case in CASES.items()},
          "what it cannot read is refused": what_it_cannot_read_is_refused,
          "converted layer gives bitsandbytes' output": converted_layer_gives_bitsandbytes_output,
          "the op gives the kernel's weight": the_op_gives_the_kernels_weight}


if __name__ == "__main__":
    report(CHECKS)
