"""Placement logic on the CPU: accelerate's balanced vs sequential maps for two GPUs, and refusals."""

from __future__ import annotations

import pytest
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM

from quant.errors import PlacementError
from quant.loader import LoadRequest
from quant.placement import WeightBytes, check_fits, parse_device_map, plan_placement
from quant.registry import ModelRegistry
from quant.source import resolve_source
from tests.conftest import LLAMA


@pytest.fixture(scope="module")
def skeleton():
    source = resolve_source(LLAMA)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(source.config)


BF16 = WeightBytes(frozenset(), 2.0, 2.0)
"""Every parameter at 2 bytes."""


def devices(plan) -> set:
    return set(plan.values())


def test_sequential_fills_gpu_0_first_and_balanced_spreads(skeleton):
    roomy = {0: "10MiB", 1: "10MiB"}
    assert devices(plan_placement(skeleton, "sequential", roomy, BF16)) == {0}
    balanced = plan_placement(skeleton, "balanced", roomy, BF16)
    assert devices(balanced) == {0, 1}
    assert balanced["model.embed_tokens"] == 0 and balanced["lm_head"] == 1


def test_a_tight_gpu_0_pushes_layers_to_gpu_1_and_the_cpu(skeleton):
    plan = plan_placement(skeleton, "sequential", {0: "1MiB", 1: "1MiB", "cpu": "10MiB"}, BF16)
    assert {0, 1, "cpu"} <= devices(plan)
    layers = [k for k in plan if k.startswith("model.layers")]
    assert layers  # decoder blocks are never split inside (no_split_modules)


def test_nothing_fits_is_refused_before_loading():
    with pytest.raises(PlacementError, match="max_memory allows 0 MiB"):
        check_fits({"cpu": "100KiB"}, 5 * 2**20)
    check_fits({"cpu": "10MiB"}, 5 * 2**20)  # fits: no error
    registry = ModelRegistry()
    with pytest.raises(PlacementError, match=r"needs about \d MiB in this mode and max_memory allows 0 MiB"):
        registry.load(LoadRequest(model=LLAMA, mode="bf16", max_memory="cpu=200KiB"))
    assert registry.loaded() == []


@pytest.mark.parametrize("spec", ["balanced", "balanced_low_0", "sequential", "auto", "cpu"])
def test_device_map_strategies_are_accepted(spec):
    assert parse_device_map(spec) in (spec, {"": "cpu"})
