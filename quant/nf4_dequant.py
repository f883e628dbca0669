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

Not yet wired into the layers, and not yet run on a GPU: the kernel alone is measured first (bench/int4_matmul_rows.py's
nf4 Triton column), and only if it beats bitsandbytes' path does it become a custom op in the 4-bit layers' compiled
forward from some row count, as quant.int4_dequant is for int4pack. The CPU tests run it in Triton's interpreter
against bitsandbytes' own dequantization (tests/unit/test_nf4_dequant.py).
"""

from __future__ import annotations

import functools

import torch

from . import triton_support

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


def _parts(quant_state) -> tuple:
    """(code, absmax, absmax code, absmax scale, offset, double) from a bitsandbytes QuantState; the last three are
    placeholders without double quantization."""
    if quant_state.nested:
        state2 = quant_state.state2
        offset = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=quant_state.absmax.device)
        return (quant_state.code.float(), quant_state.absmax, state2.code.float(), state2.absmax.float(),
                offset.reshape(1), True)
    placeholder = torch.zeros(1, dtype=torch.float32, device=quant_state.absmax.device)
    return quant_state.code.float(), quant_state.absmax.float(), placeholder, placeholder, placeholder, False


def _check_packed(packed: torch.Tensor) -> None:
    """ValueError naming what this kernel does not read the way bitsandbytes wrote it."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"want the weight packed as uint8 (bnb_4bit_quant_storage=uint8), not {packed.dtype}")
    if not packed.is_contiguous():
        raise ValueError("want the packed weight contiguous")


def dequantize(packed: torch.Tensor, quant_state, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The layer's weight [out, in] in `dtype` (the state's by default), as bitsandbytes.functional.dequantize_4bit
    gives it."""
    from triton import knobs

    _check_packed(packed)
    out = torch.empty(quant_state.shape, dtype=dtype or quant_state.dtype, device=packed.device)
    code, absmax, absmax_code, absmax_scale, offset, double = _parts(quant_state)
    kernel = _kernel(bool(knobs.runtime.interpret))
    n_bytes = packed.numel()
    kernel[(-(-n_bytes // BYTES_PER_PROGRAM),)](
        packed, code, absmax, absmax_code, absmax_scale, offset, out, n_bytes,
        BLOCK=quant_state.blocksize, NESTED=quant_state.state2.blocksize if double else 1, DOUBLE=double,
        BYTES=BYTES_PER_PROGRAM)
    return out
