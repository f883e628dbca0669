"""The checks of tests/unit/test_gemv4bit.py, run in a process of their own with TRITON_INTERPRET=1 set before triton
is imported (Triton's own library functions are built for its interpreter only then): `python -m
tests.support.gemv4bit_checks` prints one JSON object, each check's name with "ok" or its traceback."""

from __future__ import annotations

import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from tests.support.interpreter_checks import report  # noqa: E402

import bitsandbytes as bnb  # noqa: E402
import torch  # noqa: E402

from quant.gemv4bit import MAX_ROWS, convert_model, dequantized_absmax  # noqa: E402

KERNEL_CASES = {  # name: (quant type, double quantization, columns, rows)
    "nf4-nested-512x1": ("nf4", True, 512, 1), "nf4-plain-896x3": ("nf4", False, 896, 3),
    "fp4-nested-192x8": ("fp4", True, 192, 8), "nf4-nested-320x2": ("nf4", True, 320, 2)}


def linear_4bit(in_features: int, out_features: int, quant_type: str = "nf4", nested: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=True, compute_dtype=torch.bfloat16,
                              compress_statistics=nested, quant_type=quant_type)
    return layer.to("cpu")  # quantizes the weight, in bitsandbytes' own layout


def kernel_equals_bitsandbytes(quant_type, nested, in_features, rows):
    """896 and 320 columns are read in chunks of 128 and 64; the output rows (40) are not a multiple of a tile."""
    import bitsandbytes.functional as F

    layer = linear_4bit(in_features, 40, quant_type, nested)
    state = layer.weight.quant_state
    assert state.nested == nested
    weight = F.dequantize_4bit(layer.weight.data, state).float()
    x = torch.randn(rows, in_features, dtype=torch.bfloat16)
    got = torch.ops.quant.gemv_4bit(x, layer.weight.data.view(torch.uint8).reshape(40, in_features // 2),
                                    dequantized_absmax(state), state.code.float(), 40)
    want = x.float() @ weight.T
    assert got.shape == (rows, 40) and got.dtype == torch.bfloat16
    assert float((got.float() - want).norm() / want.norm()) < 1e-2  # bf16 rounding of the output: ~4e-3
    # the absmax really matters (a wrong block index would not notice an all-equal absmax)
    assert dequantized_absmax(state).unique().numel() > 1


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = linear_4bit(256, 96, seed=1)
        self.odd = linear_4bit(100, 24, seed=2)  # 100 columns: blocks of 64 run across rows

    def forward(self, x):
        return self.up(x)


def converted_layer():
    model = TwoLayers()
    packed_before = model.up.weight.data.clone()
    few, many = torch.randn(1, MAX_ROWS, 256, dtype=torch.bfloat16), torch.randn(1, MAX_ROWS + 1, 256,
                                                                                 dtype=torch.bfloat16)
    with torch.inference_mode():
        want_few, want_many = model.up(few), model.up(many)
    converted, warnings = convert_model(model)
    assert converted == 1 and len(warnings) == 1
    assert "stay on bitsandbytes' kernel: 100 input features" in warnings[0] and "odd" in warnings[0]
    assert type(model.up).__name__ == "Gemv4bitLinear" and isinstance(model.up, bnb.nn.Linear4bit)
    assert type(model.odd) is bnb.nn.Linear4bit
    assert torch.equal(model.up.weight.data, packed_before)  # nothing repacked: saves as bitsandbytes made it
    assert model.up.gemv_packed.data_ptr() == model.up.weight.data.data_ptr()  # a view, not a copy
    with torch.inference_mode():
        got_few, got_many = model.up(few), model.up(many)
    assert torch.equal(got_many, want_many)  # more than MAX_ROWS rows: bitsandbytes' own path
    assert not torch.equal(got_few, want_few)  # the kernel (float32 sums) ...
    assert float((got_few.float() - want_few.float()).norm() / want_few.float().norm()) < 1e-2  # ... same values
    assert convert_model(model) == (0, warnings)  # twice: nothing more to convert


def compile_traces():
    model = TwoLayers()
    convert_model(model)
    x = torch.randn(1, 1, 256, dtype=torch.bfloat16)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(compiled, eager)


CHECKS = {**{f"kernel {name}": (lambda case=case: kernel_equals_bitsandbytes(*case))
             for name, case in KERNEL_CASES.items()},
          "converted layer": converted_layer, "compile traces": compile_traces}


if __name__ == "__main__":
    report(CHECKS)
