"""HQQ (Half-Quadratic Quantization, the `hqq` package): a loaded model's linear layers quantized in place, without
calibration, and the layers that run them.

Why not transformers' `HqqConfig`: transformers 5.23 can neither quantize with it nor load what it saves. Its
`HqqHfQuantizer` has no quantize operation for the new weight-loading code (`from_pretrained` raises
"QuantizationMethod.HQQ is not available yet and will be supported soon", quantizers/base.py `get_quantize_ops`), it
refuses any placement with the CPU in it (`validate_environment`), and a saved HQQ checkpoint loads back as plain
`nn.Linear` layers with random weights: `prepare_for_hqq_linear` only tags the layers, nothing builds `HQQLinear`
before the weights arrive, so every `W_q`/`scale`/`zero` tensor is left unused and every `weight` is missing (checked
with hqq 0.2.8.post1: save_pretrained of a model of HQQLinear layers, then from_pretrained).

So the model loads in 16 bits and each linear layer (the output head excepted) is quantized on its own device with
hqq's quantizer, exactly as `HQQLinear` does it (`Quantizer.quantize` with `hqq_base_quant_config`'s settings:
min-max start, then the half-quadratic proximal solver for the zero point, axis 1, round zero at 4 bits), and
replaced by a layer that runs it:

- `Int4PackedLinear` (quant.int4pack, PyTorch's int4 matmul "tinygemm") for 4 bits with group size 32-256: HQQ
  computes w = s * (q - z) per group with a fractional z, which is tinygemm's s * (q - 8) + s * (8 - z), exact up to
  storing the scale and that zero in bfloat16. It runs on the CPU and the GPU and traces for the compiled decode.
- `HQQDequantLinear` otherwise (8, 3, 2 bits, other group sizes): it holds hqq's packed codes, scale and zero as
  buffers (so the footprint counts them) and dequantizes the weight at every call, as hqq's PYTORCH backend does.
- on a GPU, gemlite (hqq's Triton backend, `gemlite.helper.A16Wn`) for 8 and 4 bits, on request (its 2-bit
  kernel faulted on an H200: quant.methods.hqq.GEMLITE_BITS).

A layer whose input size is not a multiple of the group size stays in 16 bits and is named in the load report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

BITS = (8, 4, 3, 2)
GROUP_SIZES = (32, 64, 128, 256)
BACKENDS: dict[str, str] = {
    "hqq_int4pack": "PyTorch's int4 matmul (tinygemm): CPU and GPU, 4-bit, group size 32-256; bf16; compiles",
    "hqq_torch": "dequantize at every call, then matmul (hqq's PyTorch backend): CPU and GPU, every bit width",
    "hqq_gemlite": "gemlite (HQQ's Triton kernels): GPU, 8/4-bit",
}
_PACKING = {8: "8bit_u8", 4: "4bit_u8", 3: "3bit_32", 2: "2bit_u8"}
_ROWS_PER_WORD = {8: 1, 4: 2, 3: 1, 2: 4}
"""hqq packs along the rows of the [groups, group_size] code matrix, this many rows to a byte; without padding, so
the row count must be a multiple (3-bit: ten rows to an int32, padded with zero rows)."""


def bytes_per_weight(bits: int, group_size: int, scale_bytes: int = 2) -> float:
    """The size of one HQQ weight: its code (3-bit: ten codes in an int32) plus a 16-bit scale and zero per group.
    tinygemm (hqq_int4pack) also keeps a bf16 scale and zero per group, in its own layout: the same size."""
    code = 0.4 if bits == 3 else bits / 8
    return code + 2 * scale_bytes / group_size


def layer_bytes(out_features: int, in_features: int, bits: int, group_size: int, scale_bytes: int = 2) -> int:
    """The exact size of one HQQDequantLinear's weight: hqq's packed codes (3-bit: its rows padded to a multiple of
    ten) and a scale and a zero per group."""
    rows = out_features * in_features // group_size
    per_word = _ROWS_PER_WORD[bits] if bits != 3 else 10
    words = -(-rows // per_word) * group_size
    return words * (4 if bits == 3 else 1) + 2 * scale_bytes * rows


def _unpack(packed: torch.Tensor, bits: int, rows: int) -> torch.Tensor:
    """hqq's codes [rows, group_size] from its packing (`hqq.core.bitpack.BitPack`: row blocks stacked into the bits
    of one word), written with cat instead of slice assignment so that torch.compile fuses it."""
    if bits == 8:
        return packed
    shifts = {4: (4, 0), 2: (6, 4, 2, 0), 3: (27, 24, 21, 18, 15, 12, 9, 6, 3, 0)}[bits]
    mask = (1 << bits) - 1
    codes = torch.cat([(packed >> shift) & mask for shift in shifts], dim=0)
    return codes[:rows] if bits == 3 else codes


class HQQDequantLinear(nn.Module):
    """A linear layer in hqq's storage (packed codes, a scale and a zero per group along the input), dequantized at
    every call: w = (q - zero) * scale, then one matmul in the activations' dtype."""

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int, group_size: int,
                 in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.bits = bits
        self.group_size = group_size
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.register_buffer("bias", bias)

    def dequantize(self) -> torch.Tensor:
        rows = self.out_features * self.in_features // self.group_size
        codes = _unpack(self.packed_weight, self.bits, rows).to(self.scale.dtype)
        return ((codes - self.zero) * self.scale).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantize().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


@dataclass
class HQQResult:
    layers: int
    seconds: float
    left: list[str] = field(default_factory=list)
    """Linear layers left in 16 bits (their input size is not a multiple of the group size)."""
    max_relative_error: float = 0.0
    """Largest |layer(x) - x @ hqq's dequantized weight| / |...| of the layers moved to tinygemm."""


def _targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers HQQ replaces: all but the output head and the modules the model class keeps in float32
    (`_keep_in_fp32_modules`, which transformers' quantizers never convert either: T5's feed-forward reads
    `self.wo.weight.dtype`, so a replaced `wo` failed at the first forward)."""
    from .kept import KEEP_ATTRIBUTES, skipped_by

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keep = [p for attribute in KEEP_ATTRIBUTES for p in (getattr(type(model), attribute, None) or ())]
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and module is not head and module.weight.device.type != "meta"
            and not skipped_by(name, keep)]


@torch.no_grad()
def quantize_layer(linear: nn.Linear, bits: int, group_size: int, backend: str,
                   dtype: torch.dtype) -> tuple[nn.Module, float]:
    """The HQQ-quantized replacement of one linear layer (on its device) and, for tinygemm, its relative error against
    hqq's own dequantized weight on random inputs (0.0 for the others, which compute that weight themselves)."""
    from hqq.core.quantize import Quantizer, hqq_base_quant_config

    weight = linear.weight
    out_features, in_features = weight.shape
    params = hqq_base_quant_config(nbits=bits, group_size=group_size, axis=1)["weight_quant_params"]
    packed, meta = Quantizer.quantize(weight, device=str(weight.device), compute_dtype=dtype, **params)
    scale, zero = meta["scale"].to(dtype), meta["zero"].to(dtype)  # [groups of the whole weight, 1]
    bias = None if linear.bias is None else linear.bias.detach().to(dtype).clone()
    if backend == "hqq_torch":
        return HQQDequantLinear(packed.contiguous(), scale.contiguous(), zero.contiguous(), bits=bits,
                                group_size=group_size, in_features=in_features, out_features=out_features,
                                bias=bias), 0.0
    rows = out_features * in_features // group_size
    codes = _unpack(packed, bits, rows).reshape(out_features, in_features)
    if backend == "hqq_gemlite":
        from gemlite.helper import A16Wn

        layer = A16Wn(device=str(weight.device), dtype=dtype).from_weights(
            codes.to(torch.uint8), scale, zero, bits, group_size, bias=bias)
        return layer, 0.0
    from .int4pack import _relative_error, pack_int4_linear
    from .settings import load_settings

    groups = in_features // group_size
    scale_g = scale.float().view(out_features, groups).t()  # [groups, out]
    zero_g = zero.float().view(out_features, groups).t()
    new = pack_int4_linear(codes, scale_g, scale_g * (8 - zero_g), group_size=group_size, bias=bias,
                           dequantize_from_rows=load_settings().int4_dequantize_rows)
    expected = ((codes.float().view(out_features, groups, group_size) - zero_g.t()[..., None])
                * scale_g.t()[..., None]).view(out_features, in_features).t()  # [in, out]
    rows_checked = (4, new.dequantize_from_rows) if new.dequantize_from_rows else (4,)
    return new, max(_relative_error(new, expected, bias, torch.bfloat16, n) for n in rows_checked)


def quantize_model(model: nn.Module, bits: int, group_size: int, backend: str, dtype: torch.dtype,
                   progress: Callable[[str], None] | None = None) -> HQQResult:
    """Quantize every linear layer of `model` but the output head with HQQ, one at a time on its own device, replacing
    it (the 16-bit weight is freed as each layer is replaced)."""
    from .int4pack import Int4PackError

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    names = [name for name, _ in _targets(model)]  # names only: each 16-bit layer is freed once it is replaced
    left, worst, done = [], 0.0, 0
    for index, name in enumerate(names):
        linear = model.get_submodule(name)
        if linear.in_features % group_size or (linear.out_features * linear.in_features // group_size) % \
                _ROWS_PER_WORD[bits]:
            left.append(name)
            continue
        try:
            new, error = quantize_layer(linear, bits, group_size, backend, dtype)
        except Int4PackError as exc:  # a shape tinygemm does not take (out_features not a multiple of 8)
            log.info("%s stays on hqq_torch: %s", name, exc)
            new, error = quantize_layer(linear, bits, group_size, "hqq_torch", dtype)
        worst = max(worst, error)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        del linear, new
        done += 1
        if index % 16 == 15:
            progress(f"HQQ: {index + 1}/{len(names)} layers quantized")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return HQQResult(done, time.perf_counter() - started, left, worst)
