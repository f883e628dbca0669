"""The memory planner (quant.planner): per mode and per device, before loading, on the meta device. Llama configs of
the real 8B and 70B widths (no weights) plan for GPUs this machine does not have, through max_memory."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from quant.errors import PlacementError
from quant.methods import METHODS
from quant.placement import check_fits
from quant.planner import GiB, plan_memory, plan_model, planned_modes, refuse_unplaceable
from quant.registry import estimate_footprint
from quant.source import ModelSource
from tests.conftest import LLAMA, T5

SHAPES = {
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64),
}


def llama(size: str) -> ModelSource:
    """Llama 3's shape at `size` (grouped-query attention, 128k vocabulary, untied head), config only."""
    config = LlamaConfig(**SHAPES[size], num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    return ModelSource(f"llama-3-{size.lower()}-shape", "", True, None, config, "causal", "LlamaForCausalLM", None)


@pytest.fixture(scope="module")
def llama_8b() -> ModelSource:
    return llama("8B")


@pytest.fixture(scope="module")
def split_8b(llama_8b):
    return plan_memory(llama_8b, "auto", "0=80GiB,1=80GiB")


def test_8b_in_bf16_fits_two_80gib_gpus_split_but_not_one_10gib(llama_8b, split_8b):
    bf16 = split_8b.mode("bf16")
    assert bf16.verdict == "gpu" and bf16.fits
    assert bf16.on("0") > 5 * GiB and bf16.on("1") > 5 * GiB  # balanced: both GPUs hold about half
    assert bf16.total_bytes == pytest.approx(8.03e9 * 2, rel=0.01)
    assert "fits on GPU 0, 1" in bf16.reason()

    small = plan_memory(llama_8b, "auto", "0=10GiB").mode("bf16")
    assert small.verdict == "no" and not small.fits
    assert small.on("0") <= 9 * GiB and small.on("left over") > 5 * GiB
    assert small.on("0") + small.on("left over") == small.total_bytes
    assert small.reason().startswith("does not fit:")
    with_ram = plan_memory(llama_8b, "auto", "0=10GiB,cpu=64GiB", modes=["bf16", "nf4"])
    assert with_ram.mode("bf16").verdict == "offload" and with_ram.mode("bf16").on("cpu") > 5 * GiB
    assert with_ram.mode("nf4").verdict == "gpu"  # 5.4 GiB: within the 9 GiB usable


def test_nf4_needs_about_a_quarter_of_bf16s_bytes():
    """nf4's blocks take 0.53 bytes a weight (the 4-bit code and its scales), the embeddings and head stay 16-bit:
    at 70B, whose blocks are 97% of its weights, nf4 is a little over a quarter of bf16."""
    source = llama("70B")
    plan = plan_memory(source, "auto", "0=80GiB", modes=["bf16", "nf4"])
    bf16, nf4 = plan.mode("bf16"), plan.mode("nf4")
    assert 0.26 < nf4.total_bytes / bf16.total_bytes < 0.30
    assert bf16.verdict == "no" and nf4.verdict == "gpu"  # one 80 GiB GPU: 131 GiB in bf16, 38 GiB in nf4
    assert plan_memory(source, "auto", "0=80GiB,1=80GiB", modes=["bf16"]).mode("bf16").verdict == "gpu"


def test_per_device_sums_equal_the_registrys_estimate(llama_8b, split_8b):
    """The planner places the bytes estimate_footprint counts (the buffers, a rotary table, aside)."""
    for mode in split_8b.modes:
        estimate = estimate_footprint(llama_8b, mode.mode)
        assert sum(d.bytes for d in mode.devices) == mode.total_bytes
        assert mode.total_bytes == pytest.approx(estimate, rel=1e-4), mode.mode
    assert [m.mode for m in split_8b.modes] == planned_modes(llama_8b) == [
        name for name, method in METHODS.items() if not method.needs_quantized_checkpoint]


def test_strategies_place_as_transformers_does(llama_8b):
    sequential = plan_memory(llama_8b, "sequential", "0=80GiB,1=80GiB", modes=["bf16"]).mode("bf16")
    assert sequential.on("1") == 0 and sequential.verdict == "gpu"  # GPU 0 first, and it holds it all
    low_0 = plan_memory(llama_8b, "balanced_low_0", "0=80GiB,1=80GiB", modes=["bf16"]).mode("bf16")
    assert low_0.on("0") < low_0.on("1")
    one = plan_memory(llama_8b, "cuda:1", "0=80GiB,1=80GiB", modes=["fp32"]).mode("fp32")
    assert one.on("1") == one.total_bytes and one.on("0") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only machine's plan")
def test_without_a_gpu_or_max_memory_the_plan_is_for_ram_and_says_so(llama_8b):
    plan = plan_model(LLAMA)
    assert plan.budget_source == "cpu_only" and list(plan.budgets) == ["cpu"]
    assert plan.note().startswith("No GPU on this machine: this is the plan for CPU RAM")
    assert all(m.verdict == "cpu" for m in plan.modes)
    with pytest.raises(PlacementError, match="asks for a GPU, and this machine has none"):
        plan_model(LLAMA, device_map="cuda")


def test_demo_models_in_tiny_budgets(capsys):
    plan = plan_model(LLAMA, max_memory="0=1MiB, 1=1MiB")
    assert {m.verdict for m in plan.modes} == {"no"}  # no cpu entry: what GPUs cannot hold has nowhere to go
    t5 = plan_model(T5, max_memory="0=10MiB", modes=["bf16", "nf4"])
    assert t5.mode("nf4").total_bytes < t5.mode("bf16").total_bytes and t5.mode("bf16").verdict == "gpu"
    from quant.cli import main

    assert main(["plan", LLAMA, "--max-memory", "0=1MiB,cpu=1GiB", "--modes", "bf16,nf4"]) == 0
    table = capsys.readouterr().out
    assert "Planned for device_map=auto within max_memory: GPU 0 1.0 MiB, CPU RAM 1.0 GiB." in table
    assert "10% of each budget is kept free" in table
    rows = [line.split()[:2] for line in table.splitlines() if line.startswith(("bf16 ", "nf4 "))]
    assert rows == [["bf16", "offload"], ["nf4", "offload"]]


def test_a_split_load_that_cannot_fit_is_refused_per_device(llama_8b):
    with pytest.raises(PlacementError, match=r"does not fit with device_map=auto: .* left over within GPU 0 10\.0 GiB"):
        refuse_unplaceable(llama_8b, "bf16", None, "auto", {0: "10GiB"})
    refuse_unplaceable(llama_8b, "nf4", None, "auto", {0: "10GiB"})  # 5.4 GiB: fits
    refuse_unplaceable(llama_8b, "bf16", None, "sequential", {0: "10GiB", 1: "10GiB"})
    # the totals pass (16 GiB for 15), but GPU 0 keeps room for the largest layer (the 1 GiB embeddings) and no
    # decoder block is split: the rest does not fit
    check_fits({0: "8GiB", 1: "8GiB"}, estimate_footprint(llama_8b, "bf16"))
    with pytest.raises(PlacementError, match="does not fit"):
        refuse_unplaceable(llama_8b, "bf16", None, "sequential", {0: "8GiB", 1: "8GiB"})


def test_the_model_tabs_handler_gives_the_table_in_the_visitors_language():
    import gradio as gr
    from starlette.requests import Request

    from ui.model_tab import plan

    request = gr.Request(request=Request({"type": "http", "headers": [(b"accept-language", b"ko-KR,ko;q=0.9")]}))
    table = plan(request, model=LLAMA, mode="nf4", device_map="auto", max_memory="0=1MiB,cpu=1GiB")
    assert "| 모드 | 들어가나요? | GPU 0번 | CPU 메모리 | 합계 | 이유 |" in table
    assert "| **nf4** | ⚠️ CPU 오프로드 |" in table
    with pytest.raises(gr.Error, match="Unknown device"):
        plan(request, model=LLAMA, mode="nf4", device_map="auto", max_memory="gpu7=1GiB")


def test_only_gpu_names_the_one_gpu_that_holds_every_weight(llama_8b, split_8b):
    """What quant.loader streams weights to under device_map auto (QUANT_STREAM_WEIGHTS): one GPU, or nothing."""
    one = plan_memory(llama_8b, "auto", "0=80GiB,cpu=64GiB", modes=["nf4"]).mode("nf4")
    assert one.only_gpu == "cuda:0" and one.verdict == "gpu"
    balanced = plan_memory(llama_8b, "auto", "0=80GiB,1=80GiB,cpu=64GiB", modes=["nf4"]).mode("nf4")
    assert balanced.on("1") and balanced.only_gpu is None  # auto balances over the GPUs even where one would do
    second = plan_memory(llama_8b, "auto", "0=1MiB,1=80GiB,cpu=64GiB", modes=["nf4"]).mode("nf4")
    assert second.only_gpu == "cuda:1"
    assert split_8b.mode("bf16").verdict == "gpu" and split_8b.mode("bf16").only_gpu is None
    offloaded = plan_memory(llama_8b, "auto", "0=8GiB,cpu=64GiB", modes=["bf16"]).mode("bf16")
    assert offloaded.verdict == "offload" and offloaded.only_gpu is None
    assert plan_memory(llama_8b, "auto", "0=8GiB", modes=["bf16"]).mode("bf16").only_gpu is None  # does not fit
