"""The checks of tests/unit/test_kv_placement.py, run in a process of their own with TRITON_INTERPRET=1 set before
triton is imported: `python -m tests.support.kv_placement_checks` prints one JSON object, each check's name with "ok"
or its traceback. Each check compares quant.kv_placement's kernel with torch's indexing (its reference)."""

from __future__ import annotations

import os

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

from tests.support.interpreter_checks import report  # noqa: E402

import torch  # noqa: E402

from quant import kv_placement  # noqa: E402
from quant.ragged import Placement  # noqa: E402


def placed_as_torch_places(rows: int, span: int, heads: int, dim: int, batch: int, slots: int, dtype: torch.dtype,
                           transposed: bool) -> None:
    """A group of right-padded prompts into a left-padded batch cache, the placement quant.ragged computes."""
    generator = torch.Generator().manual_seed(rows * 31 + heads)
    counts = torch.randint(1, span + 1, (rows,), generator=generator).tolist()
    counts[0] = span
    placement = Placement.of(torch.randperm(batch, generator=generator)[:rows], counts, slots + 1)
    if transposed:  # as the attention hands its keys over: a view of [rows, span, heads, dim]
        source = torch.randn(rows, span, heads, dim, generator=generator).to(dtype).transpose(1, 2)
    else:
        source = torch.randn(rows, heads, span, dim, generator=generator).to(dtype)
    want = torch.randn(batch, heads, slots, dim, generator=generator).to(dtype)
    got = want.clone()
    kv_placement.torch_place(source, want, placement.local, placement.column, placement.row, placement.slot)
    kv_placement.place(source, got, placement.local, placement.column, placement.row, placement.slot)
    assert torch.equal(got, want), (got - want).abs().max()
    assert not torch.equal(want, torch.zeros_like(want))


def no_positions_place_nothing() -> None:
    target = torch.ones(2, 2, 4, 8)
    empty = torch.empty(0, dtype=torch.long)
    kv_placement.place(torch.zeros(1, 2, 3, 8), target, empty, empty, empty, empty)
    assert torch.equal(target, torch.ones(2, 2, 4, 8))


def what_does_not_fit_is_refused() -> None:
    index = torch.zeros(1, dtype=torch.long)
    for source, target, message in ((torch.zeros(1, 2, 3, 8), torch.zeros(2, 3, 4, 8), "do not fit"),
                                    (torch.zeros(1, 2, 3, 8).half(), torch.zeros(2, 2, 4, 8), "do not fit"),
                                    (torch.zeros(1, 2, 8, 3).transpose(2, 3), torch.zeros(2, 2, 4, 8), "contiguous")):
        try:
            kv_placement.place(source, target, index, index, index, index)
        except ValueError as exc:
            assert message in str(exc), exc
        else:
            raise AssertionError(f"placed {tuple(source.shape)} into {tuple(target.shape)}")


CASES = {"8b heads bf16": (4, 37, 8, 128, 16, 64, torch.bfloat16, True),
         "odd heads and dim fp16": (3, 12, 3, 80, 5, 20, torch.float16, True),
         "contiguous source fp32": (2, 9, 2, 64, 4, 16, torch.float32, False)}

CHECKS = {**{f"placed as torch places: {name}": (lambda case=case: placed_as_torch_places(*case))
             for name, case in CASES.items()},
          "no positions place nothing": no_positions_place_nothing,
          "what does not fit is refused": what_does_not_fit_is_refused}


if __name__ == "__main__":
    report(CHECKS)
