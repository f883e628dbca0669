"""GPTQ (and AWQ, HQQ) 4-bit layers repacked for PyTorch's own int4 matmul (`aten._weight_int4pack_mm`, the
"tinygemm" kernel).

Why: the GPTQ kernels of gptqmodel 7.6 that need no download either dequantize the whole weight at every step
(TorchLinear: 0.56x the bf16 rate, compiled, on an H100) or do not trace (Triton, ExLlamaV2), or need a 3.5-minute
build and decode one sequence at 0.76x this kernel's rate (Marlin, gpu-bench-8b-marlin.md; Marlin is the faster at
batch 32). PyTorch ships a 4-bit weight x bf16 activation kernel (the one gpt-fast and torchao use) that reads the
int4 weight directly, needs no build, and runs inside torch.compile's CUDA graphs.

The checkpoint is loaded with gptqmodel's torch kernel, then each 4-bit layer is converted: its weight is taken
from gptqmodel's own dequantization, so the result does not depend on how a GPTQ format stores its zero points
(v1/v2, symmetric or not). In each group, w = scale * d with d an integer in a range of at most 16 values; tinygemm
computes w = scale * (q - 8) + zero, so q = d - min(d) and zero = scale * (8 + min(d)), which is exact apart from
storing scale and zero in bfloat16 (the kernel's only dtype). Act-order checkpoints (desc_act) are handled by
sorting the input features by group once, and permuting each input the same way.

Each converted layer is checked on random inputs against gptqmodel's dequantized weight before it replaces the
original; a layer that does not match, or has a shape the kernel does not take, stays as loaded, with the reason.

tinygemm's time grows with every 16 rows, so inputs of many rows (a prefill, a batch's decode step) dequantize the
packed weight instead (quant.int4_dequant's Triton kernel; `dequantize_cuda_packed` from `unpack_cuda_codes`, read
from PyTorch's packing kernel, compiled, where Triton cannot run) and use cuBLAS: see Int4PackedLinear.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from . import awq_gemv, int4_dequant, triton_support  # Triton is imported only when a kernel is used

log = logging.getLogger(__name__)

GROUP_SIZES = (32, 64, 128, 256)
"""Group sizes tinygemm has kernels for."""


def kernel_refusal(bits, group_size, on_cuda: bool, *, weights: str = "", subject: str = "this") -> str | None:
    """Why PyTorch's int4 kernel cannot run `bits`-bit weights in groups of `group_size` here, or None: the one rule
    of every method that repacks into it (GPTQ, AWQ, HQQ). `weights` names the format in the message ("GPTQ"),
    `subject` what is refused ("this checkpoint")."""
    if bits != 4 or group_size not in GROUP_SIZES:
        return (f"PyTorch's int4 kernel runs 4-bit{f' {weights}' if weights else ''} with group size "
                f"{', '.join(map(str, GROUP_SIZES))}; {subject} is {bits}-bit with group size {group_size}.")
    if on_cuda and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        return "PyTorch's int4 kernel needs an Ampere or newer GPU."
    return None
_N_TILE = 8
_K_TILE = 16
_MAX_RELATIVE_ERROR = 2e-2
"""Per-layer check against gptqmodel's dequantized weight: |new - old| / |old| on random inputs. bf16 rounding of the
activations, scales and zeros gives about 1e-3 on the demo model; a wrong conversion gives ~1."""


def unpack_cuda_codes(packed: torch.Tensor) -> torch.Tensor:
    """The 4-bit codes [out, in] (int32, 0..15) held in tinygemm's CUDA layout, without running the kernel.

    `_convert_weight_to_int4pack` (aten/src/ATen/native/cuda/int4mm.cu, `matrix_to_m16n8k16_Bint4_layout`) stores
    codes [n][k] as packed[n // 8][k // (16 * inner)][lane][j] (int32, eight nibbles), for the m16n8k16 tensor-core
    fragment: lane t holds row n = 8 * tile + t // 4, and nibble p of word j holds column
    k = 16 * inner * outer + 32 * j + 8 * (p % 4) + 2 * (t % 4) + p // 4. Pure view/shift work, so torch.compile
    fuses it with the scaling into one kernel.
    """
    n_tiles, outer, lanes, words = packed.shape
    nibbles = torch.stack([(packed >> (4 * p)) & 0xF for p in range(8)], dim=-1)  # [nt, ko, 32, j, 8]
    # lane = 4 * row_in_tile + pair; nibble = 4 * low + slot
    nibbles = nibbles.view(n_tiles, outer, 8, 4, words, 2, 4)  # [nt, ko, row, pair, j, low, slot]
    codes = nibbles.permute(0, 2, 1, 4, 6, 3, 5)  # [nt, row, ko, j, slot, pair, low]
    return codes.reshape(n_tiles * 8, outer * words * 32)


def dequantize_cuda_packed(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The bfloat16 weight [out, in] that `_weight_int4pack_mm` multiplies by: scale * (code - 8) + zero per group."""
    codes = unpack_cuda_codes(packed)
    out_features, in_features = codes.shape
    scales = scales_and_zeros[..., 0].t().float()  # [out, groups]
    zeros = scales_and_zeros[..., 1].t().float()
    grouped = codes.view(out_features, in_features // group_size, group_size).float()
    weight = (grouped - 8) * scales[..., None] + zeros[..., None]
    return weight.view(out_features, in_features).to(torch.bfloat16)


_dequantize_kernel = None


def _compiled_dequantize():
    """dequantize_cuda_packed as one fused kernel (eager, it is eight passes over the weight: 2.9 ms against 0.47 ms
    for the 8B gate projection, bench/results/int4mm-shapes-first.md). torch.compile's default shape handling: each
    layer shape compiles once, at load (repack_layer's check). Marking every size dynamic from the start (group size
    included) gave a kernel 3x slower (int4mm-shapes-dynamic.md)."""
    global _dequantize_kernel
    if _dequantize_kernel is None:
        _dequantize_kernel = torch.compile(dequantize_cuda_packed)
    return _dequantize_kernel


def dequantize_kernel_choice() -> str:
    """Which kernel dequantizes the packed weight for long inputs on this GPU: "triton" (quant.int4_dequant: writes
    the weight at several times the rate of the compiled torch version) where it runs and gives torch's weights on a
    check of every packing layout (once a process), else "torch" (the compiled `dequantize_cuda_packed`), with the
    reason logged. QUANT_INT4_DEQUANTIZE_KERNEL=torch keeps torch's (to measure the two). Called when a layer is
    built, outside any compiled region."""
    from .settings import load_settings

    if load_settings().int4_dequantize_kernel == "torch" or TRITON_DEQUANTIZE.reason():
        return "torch"
    int4_dequant.dequantize_op()  # registered here, outside the compiled regions that call it
    return "triton"


def dequantize_kernel_warnings(model: nn.Module) -> list[str]:
    """The load report's line where `model`'s int4pack layers dequantize with the slower torch version although the
    operator did not ask for it (the Triton kernel refused here, with its reason); else none."""
    dequantizing = [m for m in model.modules() if isinstance(m, Int4PackedLinear) and m.dequantize_from_rows]
    refused = TRITON_DEQUANTIZE.known_reason
    if not dequantizing or all(m.dequantize_kernel == "triton" for m in dequantizing) or not refused:
        return []
    return [f"Prompts and batches of {dequantizing[0].dequantize_from_rows} rows or more dequantize the int4 weights "
            f"with the compiled torch kernel, several times slower than quant.int4_dequant's Triton kernel: "
            f"{refused}."]


def gemv_choice(in_features: int, out_features: int, group_size: int) -> bool:
    """Whether a layer of this shape built now takes quant.awq_gemv's gemv_fast for 1-7 rows: QUANT_INT4_GEMV=awq,
    a shape it takes, and its build and check passed in this process. Called when a layer is built."""
    from .settings import load_settings

    return (load_settings().int4_gemv == "awq" and awq_gemv.shape_refusal(in_features, out_features, group_size) is None
            and awq_gemv.CHECK.reason() is None)


def kernel_warnings(model: nn.Module) -> list[str]:
    """The load report's lines on `model`'s int4pack kernels: `dequantize_kernel_warnings`, and with QUANT_INT4_GEMV=awq
    which layers decode on gemv_fast (their second copy of the 4-bit weights in MiB) or why none does."""
    from .settings import load_settings

    warnings = dequantize_kernel_warnings(model)
    layers = [m for m in model.modules() if isinstance(m, Int4PackedLinear)]
    if load_settings().int4_gemv != "awq" or not layers:
        return warnings
    on_gemv = [m for m in layers if m.gemv_weight is not None]
    if not on_gemv:
        shapes = (awq_gemv.shape_refusal(m.in_features, m.out_features, m.group_size) for m in layers)
        reason = ("the int4 layers are not on a GPU" if not any(m.on_cuda for m in layers)
                  else awq_gemv.CHECK.known_reason or next((r for r in shapes if r), "no layer took it"))
        return warnings + [f"QUANT_INT4_GEMV=awq: decode steps stay on tinygemm ({reason})."]
    extra = sum(t.numel() * t.element_size() for m in on_gemv for t in (m.gemv_weight, m.gemv_scales, m.gemv_zeros))
    return warnings + [f"QUANT_INT4_GEMV=awq: {len(on_gemv)} of {len(layers)} int4 layers decode 1-7 rows on "
                       f"llm-awq's gemv_fast, holding their 4-bit weights a second time ({extra / 2**20:,.0f} MiB)."]


def _triton_dequantize_mismatch() -> str | None:
    """Where the Triton kernel's weights differ from torch's by more than one bfloat16 step (Triton may contract the
    multiply-add into an FMA), on random codes packed by PyTorch's own kernel; or None."""
    generator = torch.Generator().manual_seed(0)
    for inner_k_tiles, group_size in ((8, 128), (4, 64), (2, 32), (8, 256)):
        n, k = 48, 1024
        codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32).cuda()
        packed = _pack_for_cuda(codes, inner_k_tiles)
        scales_and_zeros = torch.stack([torch.rand(k // group_size, n, generator=generator) * 0.02 + 1e-3,
                                        torch.randn(k // group_size, n, generator=generator) * 0.01], dim=-1)
        scales_and_zeros = scales_and_zeros.to(torch.bfloat16).cuda().contiguous()
        want = dequantize_cuda_packed(packed, scales_and_zeros, group_size).float()
        got = int4_dequant.dequantize_op()(packed, scales_and_zeros, group_size).float()
        if not torch.all((got - want).abs() <= want.abs() * 2**-7 + 1e-30):
            return (f"the Triton kernel's weights differ from torch's (inner_k_tiles {inner_k_tiles}, group size "
                    f"{group_size})")
    return None


TRITON_DEQUANTIZE = triton_support.KernelCheck(_triton_dequantize_mismatch, log,
                                               "int4 layers dequantize long inputs with the compiled torch kernel")
"""Whether quant.int4_dequant's kernel dequantizes in this process (decided at the first layer that wants it)."""


def _dequantize(kernel: str, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    if kernel == "triton":
        # the op by name, registered when the layer chose it: Dynamo would trace dequantize_op's cache wrapper away
        return torch.ops.quant.int4pack_dequantize(packed, scales_and_zeros, group_size)
    return _compiled_dequantize()(packed, scales_and_zeros, group_size)


class Int4PackError(ValueError):
    """A layer or model that cannot be repacked for the int4 kernel, with the reason."""


class Int4PackedLinear(nn.Module):
    """A linear layer whose 4-bit grouped weight is in tinygemm's layout; computes in bfloat16.

    Inputs of another dtype are cast to bfloat16 and the output back, so it can replace a layer of an fp16 model.
    tinygemm's time grows with every 16 rows (bench/results/int4mm-shapes-static.md, H100: the Llama-8B gate
    projection takes 0.03 ms for 1 row and 4.1 ms for 1024, where bf16 cuBLAS takes 0.06 and 0.16 ms). So on a GPU,
    calls of `dequantize_from_rows` rows or more (a prefill: a long prompt, or a batch's prompts and its decode steps)
    dequantize the weight to bf16 (`dequantize_kernel`: quant.int4_dequant's Triton kernel, or the compiled torch
    version where that cannot run) and multiply with cuBLAS (0.55 ms for those 1024 rows with the torch version); fewer
    rows stay on tinygemm. 0 keeps tinygemm for everything. The bf16 weight exists only during the call.
    """

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, *, group_size: int, in_features: int,
                 out_features: int, input_order: torch.Tensor | None, bias: torch.Tensor | None,
                 dequantize_from_rows: int = 0, gemv: tuple[torch.Tensor, ...] | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.on_cuda = packed.is_cuda
        self.dequantize_from_rows = dequantize_from_rows
        self.dequantize_kernel = dequantize_kernel_choice() if self.on_cuda and dequantize_from_rows else "torch"
        self.register_buffer("packed_weight", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("input_order", input_order)
        self.register_buffer("bias", bias)
        gemv_weight, gemv_scales, gemv_zeros = gemv or (None, None, None)
        self.register_buffer("gemv_weight", gemv_weight)  # quant.awq_gemv's layout for 1-7 rows, or None
        self.register_buffer("gemv_scales", gemv_scales)
        self.register_buffer("gemv_zeros", gemv_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], self.out_features)
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.input_order is not None:
            rows = rows.index_select(1, self.input_order)
        rows = rows.contiguous()
        if self.on_cuda and 0 < self.dequantize_from_rows <= rows.shape[0]:
            weight = _dequantize(self.dequantize_kernel, self.packed_weight, self.scales_and_zeros, self.group_size)
            out = nn.functional.linear(rows, weight)
        elif self.on_cuda and self.gemv_weight is not None and rows.shape[0] < awq_gemv.ROWS:
            out = awq_gemv.matmul(rows, self.gemv_weight, self.gemv_scales, self.gemv_zeros, self.out_features,
                                  self.group_size)
        elif self.on_cuda:
            out = torch.ops.aten._weight_int4pack_mm(rows, self.packed_weight, self.group_size, self.scales_and_zeros)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(
                rows, self.packed_weight, self.group_size, self.scales_and_zeros
            )
        out = out.to(x.dtype)
        if self.bias is not None:
            # The bias keeps the checkpoint's dtype (GPTQ saves fp16 biases; the model here computes in bf16). Added
            # as is, fp16 + bf16 promotes to fp32 and the next layer fails on a dtype mismatch (Qwen2's q/k/v and
            # OPT's every projection have biases), so it is added in the activations' dtype.
            out = out + self.bias.to(out.dtype)
        return out.reshape(shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}, "
                f"dequantize_from_rows={self.dequantize_from_rows}"
                + (f", dequantize_kernel={self.dequantize_kernel}" if self.dequantize_from_rows else "")
                + (", gemv=awq" if self.gemv_weight is not None else ""))


@dataclass(frozen=True)
class RepackResult:
    layers: int
    """Layers now on the int4 kernel."""
    max_relative_error: float
    """Largest per-layer |new - old| / |old| seen in the check."""
    left: int = 0
    """Layers left on gptqmodel's torch kernel, because of `reason`."""
    reason: str | None = None
    dequantize_reason: str | None = None
    """Why prefills stay on tinygemm instead of dequantizing (Int4PackedLinear), if asked for and refused."""


def is_gptq_layer(module: nn.Module) -> bool:
    """gptqmodel's torch-kernel layer (the one this converts from)."""
    return type(module).__name__ == "TorchLinear" and hasattr(module, "qweight") and hasattr(module, "g_idx")


def check_layer(layer: nn.Module) -> str | None:
    """Why `layer` cannot go to the int4 kernel, or None."""
    bits, group, k, n = layer.bits, layer.group_size, layer.in_features, layer.out_features
    if bits != 4:
        return f"the int4 kernel runs 4-bit GPTQ only; this checkpoint is {bits}-bit"
    if group not in GROUP_SIZES:
        return f"the int4 kernel takes group sizes {', '.join(map(str, GROUP_SIZES))}; this checkpoint uses {group}"
    shape = check_shape(k, n, group)
    if shape:
        return shape
    if getattr(layer, "adapter", None):
        return "a layer with a LoRA adapter cannot be repacked"
    return None


@torch.no_grad()
def repack_layer(layer: nn.Module, dtype: torch.dtype = torch.bfloat16,
                 dequantize_from_rows: int = 0) -> tuple[Int4PackedLinear, float]:
    """The int4-kernel equivalent of one gptqmodel TorchLinear layer (same device), and its relative error against
    the layer's own dequantized weight on random `dtype` inputs: with `dequantize_from_rows`, on a GPU, both for a
    few rows (tinygemm) and for that many (the dequantizing path, whose kernel this also builds now rather than at a
    first long prompt)."""
    reason = check_layer(layer)
    if reason:
        raise Int4PackError(reason)
    group, k, n = layer.group_size, layer.in_features, layer.out_features
    # gptqmodel's own dequantization (the class method: the instance's is wrapped in torch.compile).
    original = type(layer).dequantize_weight(layer)[:k].float()  # [in, out]
    groups = layer.g_idx[:k].long()
    order = torch.argsort(groups, stable=True)
    sorted_groups = groups[order]
    expected = torch.arange(k, device=groups.device) // group
    if not torch.equal(sorted_groups, expected):
        raise Int4PackError("the layer's groups are not all of the group size (g_idx)")
    identity = torch.equal(order, torch.arange(k, device=order.device))
    weight = original[order]
    scales = layer.scales.float()  # [groups, out]
    per_row_scale = scales[sorted_groups]
    safe = torch.where(per_row_scale == 0, torch.ones_like(per_row_scale), per_row_scale)
    steps = torch.round(weight / safe)  # integers: the quantization grid
    steps = torch.where(per_row_scale == 0, torch.zeros_like(steps), steps)
    steps = steps.view(k // group, group, n)
    low = steps.amin(dim=1)  # [groups, out]
    codes = steps - low[:, None, :]
    if codes.max() > 15:
        raise Int4PackError("the weights do not sit on a 16-level grid per group")
    zeros = scales * (8 + low)
    codes = codes.view(k, n).t()  # [out, in]
    bias = None if layer.bias is None else layer.bias.detach().to(dtype).clone()  # the activations' dtype
    new = pack_int4_linear(codes, scales, zeros, group_size=group, bias=bias,
                           input_order=None if identity else order.to(torch.int64),
                           dequantize_from_rows=dequantize_from_rows)
    rows_checked = (4, new.dequantize_from_rows) if new.dequantize_from_rows else (4,)
    return new, max(_relative_error(new, original, bias, dtype, rows) for rows in rows_checked)


def check_shape(in_features: int, out_features: int, group_size: int) -> str | None:
    """Why tinygemm cannot take a layer of this shape and group size, or None."""
    if group_size not in GROUP_SIZES:
        return f"the int4 kernel takes group sizes {', '.join(map(str, GROUP_SIZES))}, not {group_size}"
    if in_features % group_size or in_features % (2 * _K_TILE):
        return f"in_features {in_features} is not a multiple of the group size {group_size} and of {2 * _K_TILE}"
    if out_features % _N_TILE:
        return f"out_features {out_features} is not a multiple of {_N_TILE}"
    return None


def pack_int4_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, *, group_size: int,
                     bias: torch.Tensor | None, input_order: torch.Tensor | None = None,
                     dequantize_from_rows: int = 0) -> Int4PackedLinear:
    """An Int4PackedLinear (on the codes' device) computing w = scale * (code - 8) + zero per group.

    `codes`: [out, in] integers 0..15; `scales`, `zeros`: [in / group_size, out]. Any 4-bit format with a scale and a
    (possibly fractional) zero point per group of consecutive input features maps onto this exactly: a format that
    computes scale * (q - z) has zero = scale * (8 - z) (GPTQ: quant.int4pack.repack_layer; AWQ: repack_awq_layer;
    HQQ: quant.hqq)."""
    out_features, in_features = codes.shape
    reason = check_shape(in_features, out_features, group_size)
    if reason:
        raise Int4PackError(reason)
    codes = codes.to(torch.int32).contiguous()
    scales_and_zeros = torch.stack([scales.float(), zeros.float()], dim=-1).to(torch.bfloat16).contiguous()
    gemv = None
    if codes.is_cuda:
        packed = _pack_for_cuda(codes, next(t for t in (8, 4, 2) if in_features % (t * _K_TILE) == 0))
        if gemv_choice(in_features, out_features, group_size):
            gemv = awq_gemv.pack(codes, scales, zeros)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        dequantize_from_rows = 0
    return Int4PackedLinear(packed, scales_and_zeros, group_size=group_size, in_features=in_features,
                            out_features=out_features, input_order=input_order, bias=bias,
                            dequantize_from_rows=dequantize_from_rows, gemv=gemv)


def _pack_for_cuda(codes: torch.Tensor, inner_k_tiles: int) -> torch.Tensor:
    """Codes [out, in] (0..15, on a GPU) in tinygemm's CUDA layout, by PyTorch's own packing kernel."""
    as_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    return torch.ops.aten._convert_weight_to_int4pack(as_bytes.contiguous(), inner_k_tiles)


def _relative_error(new: Int4PackedLinear, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                    rows: int = 4) -> float:
    """|new(x) - (x @ weight + bias)| / |x @ weight + bias| on random inputs (weight: [in, out], float32, on the
    layer's device)."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(rows, new.in_features, generator=generator).to(device=weight.device, dtype=dtype)
    expected = x.float() @ weight + (0 if bias is None else bias.float())
    got = new(x).float()
    return ((got - expected).norm() / expected.norm().clamp_min(1e-12)).item()


def is_awq_layer(module: nn.Module) -> bool:
    """gptqmodel's AWQ torch-kernel layer (GEMM layout), the one repack_awq_layer converts from."""
    return type(module).__name__ == "AwqTorchLinear" and hasattr(module, "qweight") and hasattr(module, "qzeros")


@torch.no_grad()
def repack_awq_layer(layer: nn.Module, dtype: torch.dtype = torch.bfloat16,
                     dequantize_from_rows: int = 0) -> tuple[Int4PackedLinear, float]:
    """The int4-kernel equivalent of one gptqmodel AwqTorchLinear layer, and its relative error against the layer's
    own dequantized weight (gptqmodel's `dequantize_gemm`, the arithmetic its torch kernel runs).

    AWQ stores, per group of `group_size` input features and per output, an integer zero point z and a scale s, and
    computes w = s * (q - z): tinygemm's zero is s * (8 - z), the codes are q. Read with gptqmodel's own unpacking
    (the GEMM layout's column order included), so nothing here depends on how AWQ orders its nibbles."""
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm, reverse_awq_order, unpack_awq

    bits, group, k, n = layer.bits, layer.group_size, layer.in_features, layer.out_features
    if bits != 4:
        raise Int4PackError(f"the int4 kernel runs 4-bit AWQ only; this checkpoint is {bits}-bit")
    if group == -1:
        group = k
    scales = layer.scales.float()  # [groups, out]
    codes, zero_points = unpack_awq(layer.qweight, layer.qzeros, bits, scales.shape[-1])
    codes, zero_points = reverse_awq_order(codes, zero_points, bits)
    codes, zero_points = codes & 15, zero_points & 15  # [in, out], [groups, out]
    original = dequantize_gemm(layer.qweight, layer.qzeros, scales, bits, group)[:k].float()  # [in, out]
    bias = None if layer.bias is None else layer.bias.detach().to(dtype).clone()
    new = pack_int4_linear(codes.t(), scales, scales * (8 - zero_points.float()), group_size=group, bias=bias,
                           dequantize_from_rows=dequantize_from_rows)
    rows_checked = (4, new.dequantize_from_rows) if new.dequantize_from_rows else (4,)
    return new, max(_relative_error(new, original, bias, dtype, rows) for rows in rows_checked)


def _repack(layer: nn.Module, dtype: torch.dtype, dequantize_from_rows: int) -> tuple[Int4PackedLinear, float]:
    return (repack_awq_layer if is_awq_layer(layer) else repack_layer)(layer, dtype, dequantize_from_rows)


def repack_model(model: nn.Module, dequantize_from_rows: int = 0) -> RepackResult:
    """Replace each gptqmodel TorchLinear (GPTQ) or AwqTorchLinear (AWQ) of `model` with an Int4PackedLinear, after
    checking it against the original.

    Layers are swapped one at a time, so memory holds one extra layer at most. A layer that cannot be converted stops
    the work: the layers before it stay converted (each was checked), the rest stay as loaded, and the result says
    why. Either way the model computes what it computed before, up to bf16 rounding. `dequantize_from_rows` (GPU only)
    sends calls of that many rows or more to a dequantized weight and cuBLAS; if that cannot run or does not match on
    the first layer, every layer keeps tinygemm and `dequantize_reason` says why.
    """
    dtype = getattr(model, "dtype", torch.bfloat16)
    targets = [(name, module) for name, module in model.named_modules()
               if is_gptq_layer(module) or is_awq_layer(module)]
    if not targets:
        return RepackResult(0, 0.0, 0, "the model has no GPTQ or AWQ layers loaded with the torch kernel")
    dequantize_reason, first = None, None
    if dequantize_from_rows and targets[0][1].qweight.is_cuda:
        dequantize_reason, first = _try_dequantized(targets[0][1], dtype, dequantize_from_rows)
        if dequantize_reason:
            dequantize_from_rows = 0
    worst = 0.0
    for done, (name, layer) in enumerate(targets):
        try:
            new, error = first if done == 0 and first else _repack(layer, dtype, dequantize_from_rows)
            if not error <= _MAX_RELATIVE_ERROR:
                raise Int4PackError(f"the repacked layer differs from the original by {error:.1%}")
        except (Int4PackError, RuntimeError) as exc:  # RuntimeError: offloaded (meta) weights, out of memory
            return RepackResult(done, worst, len(targets) - done, f"{name}: {str(exc).splitlines()[0]}",
                                dequantize_reason)
        worst = max(worst, error)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        del layer
    log.info("Repacked %d layers for the int4 kernel (largest relative error %.2e)", len(targets), worst)
    return RepackResult(len(targets), worst, dequantize_reason=dequantize_reason)


def _try_dequantized(layer: nn.Module, dtype: torch.dtype,
                     dequantize_from_rows: int) -> tuple[str | None, tuple[Int4PackedLinear, float] | None]:
    """The model's first layer repacked with the dequantized path for long inputs: (None, (layer, error)) where that
    path works, else (why not, None); (None, None) where the layer cannot be repacked at all (repack_model reports
    that when it repacks it)."""
    try:
        new, error = _repack(layer, dtype, dequantize_from_rows)
    except Int4PackError:
        return None, None
    except Exception as exc:  # noqa: BLE001 - e.g. torch.compile failing: prefills keep tinygemm
        return f"dequantizing for long inputs failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", None
    if not error <= _MAX_RELATIVE_ERROR:
        return f"the dequantized weight differs from the original by {error:.1%}", None
    return None, (new, error)
