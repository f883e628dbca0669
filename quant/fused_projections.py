"""Projections that read the same input (attention's q/k/v, the MLP's gate/up) computed as one matmul over their
weights concatenated along the output dimension.

Why: at batch 1 a decode step's matmuls are matrix-vector products bound by reading the weights, and cuBLAS reads a
small one (Llama-3-8B's 1024x4096 k and v) well below the bandwidth, with split-K reduce kernels after it. On an H200
(bench/results/fused-projections-8b.md, kernels alone in a CUDA graph) q/k/v as one 6144x4096 product took 0.58x the
time of three separate ones, in bf16 and in int4pack (GPTQ) alike; gate/up 0.91-0.92x.

How, without rewriting any architecture's attention or MLP: each member layer (an `nn.Linear` or an
`Int4PackedLinear`) keeps its name, place and state_dict entries, but its tensors become views into the group's
concatenated ones (no memory added) and its forward asks the group. The first member called with an input computes
the whole group's product and leaves it for the others; a member called with that same input tensor takes its slice;
the last member clears it. A member called with another input (another thread's call, or an architecture that feeds
its projections different tensors) computes the group's product for its own input: slower, never wrong. Under
torch.compile the hand-over is a Python attribute that dynamo traces as a side effect inside the compiled region, so
one compiled decoder layer still serves every layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .int4pack import Int4PackedLinear

logger = logging.getLogger(__name__)

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling layers that decoder-only architectures feed the same tensor (Llama, Mistral, Qwen, Gemma, OPT...)."""


class ProjectionGroup:
    """The fused layer of a group of sibling projections and the product one member leaves for the others."""

    def __init__(self, fused: nn.Module, sizes: tuple[int, ...], names: tuple[str, ...]) -> None:
        self.fused = fused
        self.sizes = sizes
        self.names = names
        self._pending: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        # One read of the pair, then only this call's own tuple: another thread may replace it meanwhile.
        pending = self._pending
        if pending is None or pending[0] is not x:
            pending = (x, self.fused(x).split(self.sizes, dim=-1))
            self._pending = pending
        if index == len(self.sizes) - 1:
            self._pending = None
        return pending[1][index]


class FusedMember:
    """Mixed into a member layer's class: its forward takes its slice of the group's product."""

    _projection_group: ProjectionGroup
    _projection_index: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._projection_group.output(x, self._projection_index)

    def extra_repr(self) -> str:
        group = self._projection_group
        return f"{super().extra_repr()}, fused with {'/'.join(group.names)} (part {self._projection_index + 1})"


_member_classes: dict[type, type] = {}


def _member_class(cls: type) -> type:
    if cls not in _member_classes:
        _member_classes[cls] = type(f"Fused{cls.__name__}", (FusedMember, cls), {})
    return _member_classes[cls]


@dataclass(frozen=True)
class FusionResult:
    groups: int
    """Groups fused."""
    names: tuple[str, ...]
    """Which kinds of group, e.g. ("q_proj/k_proj/v_proj", "gate_proj/up_proj")."""
    skipped: tuple[str, ...] = ()
    """Why some candidate groups were left as they were (one line per reason)."""

    def describe(self) -> str:
        if not self.groups:
            return ""
        return f"{' and '.join(self.names)} each one matmul ({self.groups} groups)"


def _outputs(m: nn.Module) -> int:
    """A layer's output features as its tensors hold them (a tensor-parallel rank's slice keeps the whole layer's
    `out_features` attribute)."""
    return m.weight.shape[0] if isinstance(m, nn.Linear) else m.scales_and_zeros.shape[1]


def _inputs(m: nn.Module) -> int:
    return m.weight.shape[1] if isinstance(m, nn.Linear) else m.in_features


def _fusable(members: list[nn.Module]) -> str | None:
    """Why these sibling layers cannot be one matmul (None: they can)."""
    kinds = {type(m) for m in members}
    if len(kinds) != 1 or next(iter(kinds)) not in (nn.Linear, Int4PackedLinear):
        return "not all plain Linear or all Int4PackedLinear layers"
    if isinstance(members[0], nn.Linear) and any(type(t) is not nn.Parameter for m in members
                                                 for t in (m.weight, m.bias) if t is not None):
        return "weights of a tensor subclass (torchao's quantized tensors), not plain tensors"
    if any(hasattr(m, "_hf_hook") for m in members):
        return "offloaded by accelerate hooks"
    if any(m._forward_hooks or m._forward_pre_hooks for m in members):
        return "forward hooks on a layer (they would see one product for all)"
    first = members[0]
    if any(_inputs(m) != _inputs(first) for m in members):
        return "different input widths"
    if len({(m.bias is None) for m in members}) != 1:
        return "a bias on some only"
    tensors = ([m.weight for m in members] if isinstance(first, nn.Linear) else
               [t for m in members for t in (m.packed_weight, m.scales_and_zeros)])
    if len({t.device for t in tensors}) != 1 or any(t.is_meta for t in tensors) or \
            (isinstance(first, nn.Linear) and len({t.dtype for t in tensors}) != 1):
        return "on different devices or dtypes"
    if isinstance(first, Int4PackedLinear):
        if len({(m.group_size, m.dequantize_from_rows, m.on_cuda, m.packed_weight.shape[1:], m.gemv_weight is None)
                for m in members}) != 1:
            return "different group sizes, kernels or packings"
        orders = [m.input_order for m in members]
        if any(o is None for o in orders) != all(o is None for o in orders) or \
                (orders[0] is not None and not all(torch.equal(orders[0], o) for o in orders)):
            return "different input orders (act-order)"
    return None


def _fuse_linears(members: list[nn.Linear]) -> nn.Linear:
    first = members[0]
    fused = nn.Linear(_inputs(first), sum(map(_outputs, members)), bias=first.bias is not None, device="meta")
    fused.weight = nn.Parameter(torch.cat([m.weight.detach() for m in members]), requires_grad=False)
    if first.bias is not None:
        fused.bias = nn.Parameter(torch.cat([m.bias.detach() for m in members]), requires_grad=False)
    start = 0
    for m in members:  # the members' parameters become views: the separate tensors are freed
        end = start + _outputs(m)
        m.weight.data = fused.weight.data[start:end]
        if m.bias is not None:
            m.bias.data = fused.bias.data[start:end]
        start = end
    return fused


def _fuse_int4(members: list[Int4PackedLinear]) -> Int4PackedLinear:
    """The group's Int4PackedLinear. quant.awq_gemv's layout (QUANT_INT4_GEMV=awq) is fused too: it packs blocks of 4
    output rows independently, so the members' weights stacked along the outputs are the group's, as tinygemm's are."""
    first = members[0]
    bias = torch.cat([m.bias for m in members]) if first.bias is not None else None
    gemv = None if first.gemv_weight is None else (torch.cat([m.gemv_weight for m in members]),
                                                   torch.cat([m.gemv_scales for m in members], dim=1),
                                                   torch.cat([m.gemv_zeros for m in members], dim=1))
    fused = Int4PackedLinear(torch.cat([m.packed_weight for m in members]),
                             torch.cat([m.scales_and_zeros for m in members], dim=1),
                             group_size=first.group_size, in_features=first.in_features,
                             out_features=sum(map(_outputs, members)), input_order=first.input_order, bias=bias,
                             dequantize_from_rows=first.dequantize_from_rows, gemv=gemv)
    start = row = gemv_row = 0
    for m in members:  # the members' buffers become views: the separate tensors are freed
        end, rows = start + _outputs(m), m.packed_weight.shape[0]
        m.packed_weight = fused.packed_weight[row:row + rows]
        m.scales_and_zeros = fused.scales_and_zeros[:, start:end]
        if bias is not None:
            m.bias = fused.bias[start:end]
        if gemv is not None:
            gemv_rows = m.gemv_weight.shape[0]
            m.gemv_weight = fused.gemv_weight[gemv_row:gemv_row + gemv_rows]
            m.gemv_scales, m.gemv_zeros = fused.gemv_scales[:, start:end], fused.gemv_zeros[:, start:end]
            gemv_row += gemv_rows
        start, row = end, row + rows
    return fused


def fusion_wanted(settings, kind: str, devices: set[str]) -> bool:
    """QUANT_FUSE_PROJECTIONS for a model of this kind on these devices. Decoder-only models only: an
    encoder-decoder's cross-attention feeds k/v the encoder's states and q the decoder's, and during decoding calls q
    alone (k/v are cached), where a fused q would compute all three."""
    if kind != "causal" or settings.fuse_projections == "off":
        return False
    return settings.fuse_projections == "on" or all(device.startswith("cuda") for device in devices)


def fuse_projections(model: nn.Module) -> FusionResult:
    """Fuse every group of GROUPS found among a module's children. Each fused group is checked on one random row
    against its members' own products first; a group whose product differs is left as it was."""
    groups, names, skipped = 0, [], set()
    for parent in list(model.modules()):
        for group_names in GROUPS:
            members = [getattr(parent, name, None) for name in group_names]
            if any(m is None for m in members) or any(isinstance(m, FusedMember) for m in members):
                continue
            reason = _fusable(members)
            if reason:
                skipped.add(f"{'/'.join(group_names)}: {reason}")
                continue
            first = members[0]
            originals = [_tensors(m) for m in members]  # kept until the check below passes
            linear = isinstance(first, nn.Linear)
            device = originals[0][0].device
            # a generator of its own: a load must not move the global random state that seeded sampling relies on
            probe = torch.randn(1, _inputs(first), dtype=first.weight.dtype if linear else torch.bfloat16,
                                device=device, generator=torch.Generator(device=device).manual_seed(0))
            try:
                with torch.no_grad():
                    want = torch.cat([m(probe) for m in members], dim=-1)
                    fused = _fuse_linears(members) if linear else _fuse_int4(members)
                    got = [fused(probe)]
                    if linear:  # and each member's own product through its view
                        got.append(torch.cat([m(probe) for m in members], dim=-1))
                tolerance = 1e-2 * float(want.abs().max()) + 1e-6
                failure = None if all(
                    g.shape == want.shape and torch.allclose(g.float(), want.float(), rtol=1e-2, atol=tolerance)
                    for g in got) else "the fused product differed from the separate ones"
            except Exception as exc:  # noqa: BLE001 - a kernel that refuses the fused shape: the group stays as loaded
                failure = f"fusing failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            if failure:
                for member, tensors in zip(members, originals):  # their own tensors back, as loaded
                    _set_tensors(member, tensors)
                skipped.add(f"{'/'.join(group_names)}: {failure}")
                continue
            group = ProjectionGroup(fused, tuple(map(_outputs, members)), group_names)
            for index, member in enumerate(members):
                member.__class__ = _member_class(type(member))
                member._projection_group = group
                member._projection_index = index
            groups += 1
            label = "/".join(group_names)
            if label not in names:
                names.append(label)
    if skipped:
        logger.info("Projections left separate: %s", "; ".join(sorted(skipped)))
    return FusionResult(groups, tuple(names), tuple(sorted(skipped)))


def _tensor_names(m: nn.Module) -> tuple[str, ...]:
    return ("weight", "bias") if isinstance(m, nn.Linear) else ("packed_weight", "scales_and_zeros", "bias",
                                                                "gemv_weight", "gemv_scales", "gemv_zeros")


def _tensors(m: nn.Module) -> tuple:
    return tuple(None if getattr(m, name) is None else getattr(m, name).data for name in _tensor_names(m))


def _set_tensors(m: nn.Module, tensors: tuple) -> None:
    for name, tensor in zip(_tensor_names(m), tensors):
        if tensor is None:
            continue
        if isinstance(getattr(m, name), nn.Parameter):
            getattr(m, name).data = tensor
        else:
            setattr(m, name, tensor)


def unfuse_projections(model: nn.Module) -> None:
    """Give every fused member its own forward back (its tensors stay views into the group's: the same values; an
    int4 member's scales, a strided column slice, are made contiguous again, as tinygemm and gemv_fast take them).
    The group stays referenced: a call of another thread already inside a member's fused forward still finishes."""
    for module in model.modules():
        if isinstance(module, FusedMember):
            module.__class__ = next(c for c in type(module).__mro__[1:] if c in _member_classes)
            if isinstance(module, Int4PackedLinear):
                module.scales_and_zeros = module.scales_and_zeros.contiguous()
                if module.gemv_weight is not None:  # gemv_fast reads its scales and zeros as contiguous too
                    module.gemv_scales = module.gemv_scales.contiguous()
                    module.gemv_zeros = module.gemv_zeros.contiguous()
