"""bitsandbytes' 4-bit weight (nf4, fp4; double quantization or not) dequantized by one Triton kernel, for the many
rows of a batch's decode step.

Why: at 128 rows a bitsandbytes 4-bit layer dequantizes its weight and multiplies with cuBLAS, and that takes 2.4-3.2x
bf16's time per layer on an H200 (Llama-8B projections, bench/results/int4-matmul-rows-nf4.md), where the int4
layers' Triton dequantization (quant.int4_dequant) + cuBLAS takes 1.5-2.5x: nf4's batch job ran at 0.54x bf16 (issue
26's goal 0.6x). bitsandbytes dequantizes with two kernels (the 8-bit absmax first, with double quantization, then
the weight). This one reads each byte once, looks both codes up in the 16-entry table, scales them by their block's
absmax (dequantized in the same program from its 8-bit code, its block of 256's scale and the offset) and writes the
weight in order.

The arithmetic is bitsandbytes' own: weight = code[q] * absmax in float32, rounded to the output dtype; with double
quantization absmax = code2[a] * absmax2[block // 256] + offset in float32 (bitsandbytes.functional.dequantize_4bit
and dequantize_blockwise). Packed as bitsandbytes packs: the weight flattened row-major, two codes a byte, the first
in the high nibble.

On by default from 32 rows since the fifteenth session: per layer it is only 0.88-1.09x bitsandbytes' path on an
H200, but the goal job's nf4 rose from 0.51x to 0.68x bf16 (bench/results/batch-engines-8b-nf4-dequantize-32.md;
where it gains is not profiled yet: the prefill's many eager calls, each bitsandbytes' two kernels and their Python,
are the likely place). QUANT_NF4_DEQUANTIZE_ROWS=N (0: off) gives a GPU model's
bitsandbytes 4-bit layers a forward that, for N rows or more, dequantizes with this kernel and multiplies with cuBLAS
(`convert_model`, after a once-a-process check of the compiled op against bitsandbytes' dequantization); fewer rows
keep bitsandbytes' own path. The kernel alone is timed by bench/int4_matmul_rows.py's nf4 Triton column. It is a
PyTorch custom op over the Triton kernel (`torch.library.triton_op`), so torch.compile traces it into the decode
step. The CPU tests run it in Triton's interpreter against bitsandbytes (tests/unit/test_nf4_dequant.py).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from . import triton_support

log = logging.getLogger(__name__)

refusal = triton_support.refusal
"""Why this kernel cannot run here (no CUDA GPU, no Triton), or None."""

BYTES_PER_PROGRAM = 1024
"""Packed bytes a program reads (2,048 weights written; each weight finds its own block, of any size)."""


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1): importing this module must
    not need Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def dequantize_kernel(packed, code, absmax, absmax_code, absmax_scale, offset, out, n_bytes,
                          BLOCK: tl.constexpr, NESTED: tl.constexpr, DOUBLE: tl.constexpr, BYTES: tl.constexpr):
        at = tl.program_id(0) * BYTES + tl.arange(0, BYTES)
        inside = at < n_bytes
        byte = tl.load(packed + at, mask=inside, other=0).to(tl.int32)
        value = tl.join(tl.load(code + (byte >> 4)), tl.load(code + (byte & 0xF)))  # [BYTES, 2]: high nibble first
        weight = 2 * at[:, None] + tl.arange(0, 2)[None, :]  # each value's place in the flat weight
        block = weight // BLOCK
        if DOUBLE:
            quantized = tl.load(absmax + block, mask=inside[:, None], other=0).to(tl.int32)
            scale = tl.load(absmax_code + quantized) * tl.load(absmax_scale + block // NESTED, mask=inside[:, None],
                                                                 other=0.0) + tl.load(offset)
        else:
            scale = tl.load(absmax + block, mask=inside[:, None], other=0.0)
        tl.store(out + weight, (value * scale).to(out.dtype.element_ty), mask=inside[:, None])

    return dequantize_kernel


def op_arguments(packed: torch.Tensor, quant_state) -> tuple:
    """The kernel's inputs for a bitsandbytes weight, in the custom op's order up to its dtype: (packed, code, absmax,
    absmax code, absmax scale, offset, out features, in features, block, nested block, double); the three inputs of
    the double quantization are placeholders without it."""
    _check_packed(packed)
    out_features, in_features = quant_state.shape
    if quant_state.nested:
        state2 = quant_state.state2
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=quant_state.absmax.device)
        return (packed, quant_state.code.float(), quant_state.absmax, state2.code.float(), state2.absmax.float(),
                offset.reshape(1), out_features, in_features, quant_state.blocksize, state2.blocksize, True)
    placeholder = torch.zeros(1, dtype=torch.float32, device=quant_state.absmax.device)
    return (packed, quant_state.code.float(), quant_state.absmax.float(), placeholder, placeholder, placeholder,
            out_features, in_features, quant_state.blocksize, 1, False)


def _check_packed(packed: torch.Tensor) -> None:
    """ValueError naming what this kernel does not read the way bitsandbytes wrote it."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"want the weight packed as uint8 (bnb_4bit_quant_storage=uint8), not {packed.dtype}")
    if not packed.is_contiguous():
        raise ValueError("want the packed weight contiguous")


def _launch(packed, code, absmax, absmax_code, absmax_scale, offset, out, block: int, nested: int, double: bool,
            kernel_wrapper=None) -> None:
    from triton import knobs

    kernel = _kernel(bool(knobs.runtime.interpret))
    if kernel_wrapper is not None:
        kernel = kernel_wrapper(kernel)
    n_bytes = packed.numel()
    with triton_support.launch_device(packed):
        kernel[(-(-n_bytes // BYTES_PER_PROGRAM),)](
            packed, code, absmax, absmax_code, absmax_scale, offset, out, n_bytes,
            BLOCK=block, NESTED=nested, DOUBLE=double, BYTES=BYTES_PER_PROGRAM)


def dequantize(packed: torch.Tensor, quant_state, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The layer's weight [out, in] in `dtype` (the state's by default), as bitsandbytes.functional.dequantize_4bit
    gives it (the kernel called directly)."""
    packed, *tensors, out_features, in_features, block, nested, double = op_arguments(packed, quant_state)
    out = torch.empty(out_features, in_features, dtype=dtype or quant_state.dtype, device=packed.device)
    _launch(packed, *tensors, out, block, nested, double)
    return out


@functools.cache
def dequantize_op():
    """`quant::nf4_dequantize(packed, code, absmax, absmax_code, absmax_scale, offset, out_features, in_features,
    block, nested, double, dtype) -> [out, in]`, the kernel as a custom op torch.compile traces (registered on first
    use: Triton is imported only where it runs)."""
    from torch.library import triton_op, wrap_triton

    @triton_op("quant::nf4_dequantize", mutates_args=())
    def nf4_dequantize(packed: torch.Tensor, code: torch.Tensor, absmax: torch.Tensor, absmax_code: torch.Tensor,
                       absmax_scale: torch.Tensor, offset: torch.Tensor, out_features: int, in_features: int,
                       block: int, nested: int, double: bool, dtype: torch.dtype) -> torch.Tensor:
        out = torch.empty(out_features, in_features, dtype=dtype, device=packed.device)
        _launch(packed, code, absmax, absmax_code, absmax_scale, offset, out, block, nested, double,
                kernel_wrapper=wrap_triton)
        return out

    return nf4_dequantize


def _dequantizing_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The converted layer's forward: `dequantize_from_rows` rows or more dequantize with the kernel and multiply with
    cuBLAS; fewer keep bitsandbytes' own path (its batch-1 kernel)."""
    if x.numel() // x.shape[-1] < layer.dequantize_from_rows:
        return layer._bitsandbytes_forward(x)
    compute = layer.compute_dtype or x.dtype
    # the op by name, registered by convert_layer: Dynamo would trace dequantize_op's cache wrapper away (and warn)
    out = nn.functional.linear(x.to(compute), torch.ops.quant.nf4_dequantize(*layer.nf4_arguments, compute))
    if layer.bias is not None:
        out = out + layer.bias.to(out.dtype)
    return out.to(x.dtype)


def _converted_class(base: type) -> type:
    from .gemv4bit import forward_subclass

    return forward_subclass(base, "Dequantizing4bitLinear", _dequantizing_forward,
                            "A bitsandbytes 4-bit layer whose long inputs go through quant.nf4_dequant and cuBLAS.")


def convert_layer(layer: nn.Module, from_rows: int) -> None:
    """Give `layer` the dequantizing forward from `from_rows` rows, in place: the kernel's inputs are its quant state's
    own tensors (no copy, apart from a float32 offset of one element)."""
    dequantize_op()  # registers torch.ops.quant.nf4_dequantize, which the forward calls
    layer.nf4_arguments = op_arguments(layer.weight.data, layer.weight.quant_state)
    layer.dequantize_from_rows = from_rows
    layer.__class__ = _converted_class(type(layer))


def convert_model(model: nn.Module, from_rows: int) -> int:
    """Convert every bitsandbytes 4-bit layer of `model` whose weight the kernel reads; returns how many."""
    from bitsandbytes.nn import Linear4bit

    from .gemv4bit import is_converted

    converted = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and not is_converted(module) and \
                getattr(module.weight, "quant_state", None) is not None and module.weight.dtype == torch.uint8 and \
                module.weight.data.is_contiguous():  # what op_arguments refuses is left on bitsandbytes' path
            convert_layer(module, from_rows)
            converted += 1
    log.info("%d bitsandbytes 4-bit layers dequantize inputs of %d rows or more with quant.nf4_dequant.", converted,
             from_rows)
    return converted


def _mismatch() -> str | None:
    """Where the compiled op's weight differs from bitsandbytes' dequantization (nf4 nested and plain, fp4, bf16 and
    fp16) by more than one step of the dtype; or None."""
    import bitsandbytes.functional as F

    generator = torch.Generator().manual_seed(0)
    op = torch.compile(dequantize_op(), fullgraph=True, dynamic=False)
    for quant_type, nested, dtype in (("nf4", True, torch.bfloat16), ("nf4", False, torch.bfloat16),
                                      ("fp4", True, torch.float16)):
        weight = torch.randn(96, 4096, generator=generator).to(dtype).cuda()
        packed, state = F.quantize_4bit(weight, compress_statistics=nested, quant_type=quant_type)
        got = op(*op_arguments(packed, state), dtype).float()
        want = F.dequantize_4bit(packed, state).float()
        if not torch.all((got - want).abs() <= want.abs() * 2 ** -7 + 1e-30):
            return f"its weights differ from bitsandbytes' ({quant_type}, double quantization {nested})"
    return None


CHECK = triton_support.KernelCheck(_mismatch, log, "bitsandbytes 4-bit layers keep bitsandbytes' dequantization")
"""Whether the kernel dequantizes in this process (decided at the first load that asks for it)."""
