"""A prefilled group's keys (or values) laid into the batch's static cache by one Triton kernel that copies whole
head rows (QUANT_KV_PLACEMENT=triton; quant.ragged.Placement.copy otherwise uses torch's indexing).

Why: the grouped prefill (quant.ragged) places every group's keys and values, for every layer, at each prompt's slots
of the left-padded cache: torch's indexing does it as a gather of the real positions into a temporary, then an
index_put through transposed views, element by element. One position's heads x dim values are contiguous rows of
`dim` in both tensors (the group's keys come as a transposed view of [rows, span, heads, dim]), so one program per
position copies its [heads, dim] tile: each value read and written once. Whether it is faster is measured by
bench/kv_placement.py (against torch's path and a plain copy) before it becomes a default.

The CPU tests run the kernel in Triton's interpreter against torch's path (tests/unit/test_kv_placement.py).
"""

from __future__ import annotations

import functools
import logging

import torch

from . import triton_support

log = logging.getLogger(__name__)


@functools.cache
def _kernel(interpret: bool):
    """The @triton.jit kernel, built on first use (and once more under TRITON_INTERPRET=1): importing this module must
    not need Triton."""
    import triton
    import triton.language as tl

    @triton.jit
    def place_rows_kernel(source, target, local, column, row, slot, source_row, source_head, source_position,
                          target_row, target_head, target_slot, HEADS: tl.constexpr, DIM: tl.constexpr,
                          HEADS_BLOCK: tl.constexpr, DIM_BLOCK: tl.constexpr):
        at = tl.program_id(0)
        head = tl.arange(0, HEADS_BLOCK)[:, None]
        d = tl.arange(0, DIM_BLOCK)[None, :]
        inside = (head < HEADS) & (d < DIM)
        start = tl.load(local + at).to(tl.int64) * source_row + tl.load(column + at).to(tl.int64) * source_position
        end = tl.load(row + at).to(tl.int64) * target_row + tl.load(slot + at).to(tl.int64) * target_slot
        values = tl.load(source + start + head * source_head + d, mask=inside)
        tl.store(target + end + head * target_head + d, values, mask=inside)

    return place_rows_kernel


def place(source: torch.Tensor, target: torch.Tensor, local: torch.Tensor, column: torch.Tensor, row: torch.Tensor,
          slot: torch.Tensor) -> None:
    """target[row[i], :, slot[i], :] = source[local[i], :, column[i], :] for every i: `source` [rows, heads, span, dim]
    and `target` [batch, heads, slots, dim] of one dtype on one device, each with its last dimension contiguous (any
    strides otherwise); the four index tensors on that device."""
    from triton import knobs, next_power_of_2

    if source.dtype != target.dtype or source.shape[1] != target.shape[1] or source.shape[3] != target.shape[3]:
        raise ValueError(f"keys {tuple(source.shape)} {source.dtype} do not fit a cache {tuple(target.shape)} "
                         f"{target.dtype}")
    if source.stride(3) != 1 or target.stride(3) != 1:
        raise ValueError("want the last dimension contiguous")
    count = local.numel()
    if count == 0:
        return
    heads, dim = source.shape[1], source.shape[3]
    kernel = _kernel(bool(knobs.runtime.interpret))
    with triton_support.launch_device(target):
        kernel[(count,)](source, target, local, column, row, slot, source.stride(0), source.stride(1),
                         source.stride(2), target.stride(0), target.stride(1), target.stride(2), HEADS=heads, DIM=dim,
                         HEADS_BLOCK=next_power_of_2(heads), DIM_BLOCK=next_power_of_2(dim))


def torch_place(source: torch.Tensor, target: torch.Tensor, local: torch.Tensor, column: torch.Tensor,
                row: torch.Tensor, slot: torch.Tensor) -> None:
    """The same with torch's indexing (the reference, and what runs where the kernel does not): `local` and `column`
    on the source's device, `row` and `slot` on the target's (a model split over GPUs keeps each layer's cache on its
    GPU)."""
    target.transpose(1, 2)[row, slot] = source.transpose(1, 2)[local, column]


def _mismatch() -> str | None:
    """The kernel against torch's indexing on the GPU: a transposed source as the attention hands it over, heads and
    dims that are not powers of two, and a target of other strides."""
    generator = torch.Generator().manual_seed(0)
    for heads, dim, dtype in ((8, 128, torch.bfloat16), (3, 80, torch.float16), (2, 64, torch.float32)):
        source = torch.randn(3, 10, heads, dim, generator=generator).to(dtype).cuda().transpose(1, 2)
        want = torch.randn(5, heads, 24, dim, generator=generator).to(dtype).cuda()
        got = want.clone()
        local = torch.tensor([0, 0, 1, 2, 2, 2], device="cuda")
        column = torch.tensor([0, 9, 3, 0, 1, 5], device="cuda")
        row = torch.tensor([4, 4, 0, 2, 2, 2], device="cuda")
        slot = torch.tensor([10, 23, 7, 0, 1, 2], device="cuda")
        torch_place(source, want, local, column, row, slot)
        place(source, got, local, column, row, slot)
        if not torch.equal(got, want):
            return f"its placement differs from torch's indexing ({heads} heads of {dim}, {dtype})"
    return None


CHECK = triton_support.KernelCheck(_mismatch, log, "The grouped prefill places keys with torch's indexing")
"""Decided at the first placement that asks for the kernel: used only where its check passes."""
