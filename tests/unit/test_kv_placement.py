"""quant.kv_placement's kernel (a group's keys into the batch's static cache, one program per position) against torch's
indexing, in Triton's CPU interpreter (tests/support/kv_placement_checks.py, a process of its own), and where the
grouped prefill uses it."""

from __future__ import annotations

import pytest
import torch

from quant import kv_placement
from quant.ragged import Placement
from quant.settings import SettingsError, load_settings
from tests.support.interpreter_checks import interpreter_tests

CHECKS = ["placed as torch places: 8b heads bf16", "placed as torch places: odd heads and dim fp16",
          "placed as torch places: contiguous source fp32", "no positions place nothing",
          "what does not fit is refused"]

results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests(
    "tests.support.kv_placement_checks", CHECKS)


@pytest.mark.parametrize("setting", ["torch", "triton"])
def test_a_placement_off_the_gpu_uses_torch_whatever_the_setting(setting, monkeypatch):
    """The kernel runs on a GPU only: on the CPU a placement asked for the kernel decides for torch's indexing, once
    for the group, and places what torch places."""
    monkeypatch.setenv("QUANT_KV_PLACEMENT", setting)
    placement = Placement.of(torch.tensor([2, 0]), [3, 1], 6)
    source, target = torch.randn(2, 2, 3, 4), torch.zeros(3, 2, 5, 4)
    placement.copy(source, target)
    assert placement.kernel is False
    want = torch.zeros(3, 2, 5, 4)
    kv_placement.torch_place(source, want, placement.local, placement.column, placement.row, placement.slot)
    assert torch.equal(target, want)
    assert torch.equal(target[2, :, 2:5], source[0]) and torch.equal(target[0, :, 4], source[1, :, 0])


def test_an_unknown_placement_setting_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("QUANT_KV_PLACEMENT", "cuda")
    with pytest.raises(SettingsError, match="QUANT_KV_PLACEMENT"):
        load_settings()
