"""A batch-1 kernel for bitsandbytes 4-bit weights (nf4, fp4), for decode on a GPU (option bnb4_kernel=triton).

Why: at 8B on an H200, bitsandbytes' own batch-1 kernel (`gemm_4bit_simt`) took 75% of the compiled decode step and
read the nf4 weights at about 0.9 TB/s, a fifth of the GPU's bandwidth
(bench/results/generate-overhead-llama-8b-nf4-cuda-profile-nf4-8b.md): nf4 decoded at 0.9-1.06x bf16 although it reads
a quarter of the bytes.

The arithmetic is bitsandbytes' own, on the same bytes: a 4-bit code q picks a value from the state's 16-entry table
(`quant_state.code`: NormalFloat for nf4), scaled by the absmax of its block of 64 weights (with double quantization
the absmax is itself 8-bit: dequantized once here, to float32, as bitsandbytes dequantizes it at every call). Packed
as bitsandbytes packs: the weight [out, in] row-major, two codes a byte, the first in the high nibble. The kernel sums
code * x per block in float32 and scales each block's sum by its absmax; nothing is repacked, so the layer keeps its
weight (and saves, and serializes) exactly as bitsandbytes made it. More rows than `MAX_ROWS` (a prefill, a large
batch) go to bitsandbytes' own path, which dequantizes the weight and multiplies with cuBLAS.

The kernel is Triton (`triton.autotune` over a few tile sizes per weight shape, tuned at the first call: the load's
check of each converted layer), behind a torch custom op (`quant::gemv_4bit`) so that torch.compile traces around it.

Measured (H200, 8B shape, bench/results/methods-bench-8b-cuda-nf4-triton.md): correct (GPU tests pass, eager and
compiled) but slower than bitsandbytes' kernel, 116.8 against 193.8 tok/s compiled: experimental, not the default.
The autotuner timed its configurations with plain calls, which Python's launch cost dominates for kernels this short
(bench/results/gemv4bit-kernels-8b.md, first run), so its choice was close to arbitrary: it now times each tile from a
CUDA graph. Timed from CUDA graphs too (the same file, eighth session), the tuned kernel is still slower than
bitsandbytes' at every 8B projection shape (15.8 / 13.1 / 35.0 / 51.4 us against 10.3 / 6.4 / 28.4 / 29.0 for q/o,
k/v, gate/up, down), and so is the fastest of 94 tile variants: the gather from the 16-entry table bounds it near
0.6-0.7 TB/s. Kept as an experimental option.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from . import triton_support

log = logging.getLogger(__name__)

MAX_ROWS = 8
"""Rows (tokens x batch) up to which a layer uses the kernel; more go to bitsandbytes' dequantize + cuBLAS path."""
QUANT_BLOCK = 64
"""Weights per absmax: bitsandbytes' default 4-bit block size (transformers' BitsAndBytesConfig uses it)."""
_MAX_RELATIVE_ERROR = 1e-2
"""Per-layer check against bitsandbytes' dequantized weight at conversion: bf16 rounding of the output gives ~3e-3."""

_kernels: dict[bool, object] = {}


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_kernel():
    """The Triton kernel, built on first use (importing triton is slow, and the CPU never needs it); one for Triton's
    interpreter (TRITON_INTERPRET=1: the CPU tests), which `triton.jit` decides when it builds a kernel."""
    interpreted = _interpreted()
    if interpreted in _kernels:
        return _kernels[interpreted]
    import triton
    import triton.language as tl

    from triton.testing import do_bench_cudagraph

    configs = [triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)
               for n, w in ((8, 2), (16, 4), (32, 4), (16, 2), (64, 8)) for s in (2, 4)]

    def graph_timed(kernel_call, quantiles):
        """Each tile timed from a CUDA graph, as the compiled decode step runs it: timed as plain calls, Python's
        launch cost (tens of microseconds) hid the kernels' own time and the first GPU run's choice was arbitrary."""
        return do_bench_cudagraph(kernel_call, rep=20, quantiles=quantiles)

    @triton.autotune(configs=configs, key=["N", "K"], do_bench=graph_timed)
    @triton.jit
    def gemv_4bit_kernel(x_ptr, packed_ptr, absmax_ptr, code_ptr, out_ptr, N, K, stride_xm, stride_om,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr):
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        half = tl.arange(0, BLOCK_K // 2)  # bytes of one chunk of a row: two weights each
        blocks = tl.arange(0, BLOCK_K // QBLOCK)
        row_bytes = rows.to(tl.int64) * (K // 2)
        row_blocks = rows.to(tl.int64) * (K // QBLOCK)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            byte = tl.load(packed_ptr + row_bytes[:, None] + (k0 // 2 + half)[None, :], mask=row_ok[:, None],
                           other=0).to(tl.int32)
            high = tl.load(code_ptr + (byte >> 4))  # the weight at an even column
            low = tl.load(code_ptr + (byte & 15))  # and the next
            x_even = tl.load(x_ptr + m * stride_xm + k0 + 2 * half).to(tl.float32)
            x_odd = tl.load(x_ptr + m * stride_xm + k0 + 2 * half + 1).to(tl.float32)
            part = high * x_even[None, :] + low * x_odd[None, :]
            per_block = tl.sum(tl.reshape(part, (BLOCK_N, BLOCK_K // QBLOCK, QBLOCK // 2)), axis=2)
            scale = tl.load(absmax_ptr + row_blocks[:, None] + (k0 // QBLOCK + blocks)[None, :],
                            mask=row_ok[:, None], other=0.0)
            acc += tl.sum(per_block * scale, axis=1)
        tl.store(out_ptr + m * stride_om + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)

    _kernels[interpreted] = gemv_4bit_kernel
    return gemv_4bit_kernel


def chunk_width(in_features: int) -> int | None:
    """Columns the kernel reads per step of its loop: the widest of 256, 128, 64 that divides `in_features`."""
    return next((k for k in (256, 128, 64) if in_features % k == 0), None)


@torch.library.custom_op("quant::gemv_4bit", mutates_args=())
def gemv_4bit(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
              out_features: int) -> torch.Tensor:
    """x [..., in] @ W.T for a bitsandbytes 4-bit W given as its packed bytes [out, in / 2], float32 absmax per
    block of 64 and 16-entry code table; float32 sums, output in x's dtype."""
    import triton

    in_features = x.shape[-1]
    rows = x.reshape(-1, in_features).contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=x.dtype, device=x.device)
    if x.device.type != "cuda" and not _interpreted():
        raise RuntimeError("quant::gemv_4bit runs on a CUDA GPU (or in Triton's interpreter: TRITON_INTERPRET=1).")
    kernel = _triton_kernel()
    args = (rows, packed, absmax, code, out, out_features, in_features, rows.stride(0), out.stride(0))
    if x.device.type == "cuda":
        with triton_support.launch_device(x):  # an opaque op: its body runs eagerly even in a compiled step
            kernel[lambda meta: (triton.cdiv(out_features, meta["BLOCK_N"]), rows.shape[0])](
                *args, BLOCK_K=chunk_width(in_features), QBLOCK=QUANT_BLOCK)
    else:  # Triton's interpreter on the CPU, one fixed tile (the autotuner times configurations on a GPU)
        kernel.fn[(triton.cdiv(out_features, 16), rows.shape[0])](*args, BLOCK_N=16, BLOCK_K=chunk_width(in_features),
                                                                  QBLOCK=QUANT_BLOCK)
    return out.reshape(*x.shape[:-1], out_features)


@gemv_4bit.register_fake
def _(x, packed, absmax, code, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


def dequantized_absmax(quant_state) -> torch.Tensor:
    """The float32 absmax per block, as bitsandbytes computes it at every dequantization (nested: 8-bit absmax
    through its own block-wise table, plus the offset)."""
    import bitsandbytes.functional as F

    absmax = quant_state.absmax
    if quant_state.nested:
        absmax = F.dequantize_blockwise(quant_state.absmax, quant_state.state2) + quant_state.offset
    return absmax.float().contiguous()


def layer_refusal(layer: nn.Module) -> str | None:
    """Why the kernel cannot run this bitsandbytes 4-bit layer, or None."""
    state = getattr(getattr(layer, "weight", None), "quant_state", None)
    if state is None:
        return "not a bitsandbytes 4-bit layer"
    if state.blocksize != QUANT_BLOCK:
        return f"block size {state.blocksize} (the kernel reads blocks of {QUANT_BLOCK})"
    out_features, in_features = state.shape
    if chunk_width(in_features) is None:
        return f"{in_features} input features (the kernel needs a multiple of {QUANT_BLOCK})"
    if getattr(state, "packing_format_for_cpu", False):
        return "repacked for bitsandbytes' CPU kernel"
    if layer.weight.data.numel() * layer.weight.data.element_size() * 2 != out_features * in_features:
        return "its packed weight is not two codes a byte"
    return None


def _gemv_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """The converted layer's forward: the kernel for a few rows, bitsandbytes' own path otherwise."""
    if x.numel() // x.shape[-1] > MAX_ROWS:
        return layer._bitsandbytes_forward(x)
    compute = layer.compute_dtype or x.dtype
    out = torch.ops.quant.gemv_4bit(x.to(compute), layer.gemv_packed, layer.gemv_absmax, layer.gemv_code,
                                    layer.out_features)
    if layer.bias is not None:
        out = out + layer.bias.to(out.dtype)
    return out.to(x.dtype)


_subclasses: dict[tuple[type, str], type] = {}


def forward_subclass(base: type, name: str, forward, doc: str) -> type:
    """A subclass `name` of a bitsandbytes layer class whose forward is `forward`, the class's own kept as
    `_bitsandbytes_forward`: a layer given it stays what it was (its weight, saving and every isinstance check
    unchanged), and the load report names the kernel. One class per (base, name), shared by every layer."""
    if (base, name) not in _subclasses:
        _subclasses[base, name] = type(name, (base,), {"forward": forward, "_bitsandbytes_forward": base.forward,
                                                       "__doc__": doc})
    return _subclasses[base, name]


def is_converted(layer: nn.Module) -> bool:
    """The layer has one of `forward_subclass`'s classes already."""
    return type(layer) in _subclasses.values()


def _converted_class(base: type) -> type:
    return forward_subclass(base, "Gemv4bitLinear", _gemv_forward,
                            "A bitsandbytes 4-bit layer that decodes with quant.gemv4bit's kernel.")


def convert_layer(layer: nn.Module) -> None:
    """Give `layer` the kernel, in place: the packed bytes are the weight's own (a view), the table and the float32
    absmax are new buffers (the absmax: 4 bytes per 64 weights, about 8% of the 4-bit weight)."""
    state = layer.weight.quant_state
    out_features, in_features = state.shape
    layer.gemv_packed = layer.weight.data.view(torch.uint8).reshape(out_features, in_features // 2)
    layer.register_buffer("gemv_absmax", dequantized_absmax(state), persistent=False)
    layer.register_buffer("gemv_code", state.code.float().to(layer.weight.device).contiguous(), persistent=False)
    layer.__class__ = _converted_class(type(layer))


def _relative_error(layer: nn.Module) -> float:
    """|kernel - dequantized weight| / |dequantized| on random inputs of one and of MAX_ROWS rows."""
    import bitsandbytes.functional as F

    weight = F.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    worst = 0.0
    for rows in (1, MAX_ROWS):
        x = torch.randn(rows, weight.shape[1], device=weight.device, dtype=layer.compute_dtype or torch.bfloat16)
        want = x.float() @ weight.T
        got = torch.ops.quant.gemv_4bit(x, layer.gemv_packed, layer.gemv_absmax, layer.gemv_code,
                                        weight.shape[0]).float()
        worst = max(worst, float((got - want).norm() / want.norm().clamp_min(1e-12)))
    return worst


def convert_model(model: nn.Module) -> tuple[int, list[str]]:
    """Convert every bitsandbytes 4-bit layer the kernel can run, each checked against bitsandbytes' dequantized
    weight first; returns (layers converted, warnings naming the layers left as they were and why)."""
    from bitsandbytes.nn import Linear4bit

    converted, left = 0, {}
    for name, module in model.named_modules():
        if not isinstance(module, Linear4bit) or is_converted(module):
            continue
        refusal = layer_refusal(module)
        if refusal is None:
            convert_layer(module)
            error = _relative_error(module)
            if error > _MAX_RELATIVE_ERROR:
                module.__class__ = type(module).__mro__[1]
                del module.gemv_packed, module.gemv_absmax, module.gemv_code
                refusal = f"the kernel's result differs from bitsandbytes' by {error:.1e}"
        if refusal is None:
            converted += 1
        else:
            left.setdefault(refusal, []).append(name)
    warnings = [f"{len(names)} 4-bit layers stay on bitsandbytes' kernel: {reason} ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''})." for reason, names in left.items()]
    log.info("Gave %d bitsandbytes 4-bit layers the Triton batch-1 kernel.", converted)
    return converted, warnings
