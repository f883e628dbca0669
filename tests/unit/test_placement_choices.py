"""The placements a model has (quant.planner.placement_choices): one GPU, split over GPUs, tensor parallel, with
bytes per GPU and traffic, for configs of real widths (no weights) on GPUs named in max_memory."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, Qwen2Config

from quant.planner import GiB, placement_choices
from quant.source import ModelSource
from quant.ui_strings import KO

FOUR_GPUS = "0=80GiB,1=80GiB,2=80GiB,3=80GiB"


@pytest.fixture(autouse=True)
def tensor_parallel_on_gpus(monkeypatch):
    """The operator's setting that offers tensor parallelism on GPUs (off by default: the test below): these tests
    are about what the model and mode allow."""
    monkeypatch.setenv("QUANT_TENSOR_PARALLEL_GPUS", "on")


def _source(name, config, architecture):
    return ModelSource(name, "", True, None, config, "causal", architecture, None)


@pytest.fixture(scope="module")
def llama_8b():
    """Llama 3 8B's widths: 32 heads, 8 KV heads, untied 128k head."""
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
    return _source("llama-3-8b-shape", config, "LlamaForCausalLM")


def test_8b_bf16_on_two_gpus_offers_all_three_with_bytes_and_costs(llama_8b):
    one, split, tp = placement_choices(llama_8b, "bf16", "0=80GiB,1=80GiB")
    assert (one.kind, split.kind, tp.kind) == ("one_gpu", "split", "tensor_parallel")
    assert one.offered and split.offered and tp.offered and one.fits and split.fits and tp.fits
    total = one.per_gpu[0]
    assert total == pytest.approx(8.03e9 * 2, rel=0.01)
    assert split.gpus == tp.gpus == (0, 1) and sum(split.per_gpu) == total
    assert min(split.per_gpu) > 0.4 * total  # balanced: whole layers, about half each
    # tensor parallel: every linear of the layers is halved; the embeddings, the head (both gathered whole on every
    # rank: quant.tensor_parallel.localize) and the norms stay whole
    assert tp.per_gpu[0] == tp.per_gpu[1]
    ends = 2 * 128256 * 4096 * 2
    assert total / 2 + ends / 2 < tp.per_gpu[0] < total / 2 + ends / 2 + 2**20
    assert "twice per layer (all-reduce): 64 all-reduces a token over 32 layers" in tp.describe()
    assert "One copy of the hidden state per boundary (1 a token)" in split.describe()
    assert "GPU 0 15.0 GiB" in one.describe() and "GPU 1 8.5 GiB" in tp.describe()
    assert "all-reduce" in tp.describe("ko") and KO["placements.kind.tensor_parallel"] in tp.describe("ko")


def test_tensor_parallel_on_gpus_is_off_unless_the_operator_turns_it_on_and_says_what_it_measured(llama_8b,
                                                                                                     monkeypatch):
    """Off by default on GPUs, with the measured reason and the setting that turns it on; the split stays offered.
    The CPU ranks (QUANT_TENSOR_PARALLEL_CPU_RANKS) are not GPUs: the setting does not apply to them."""
    from quant.methods import METHODS
    from quant.planner import tensor_parallel_refusal

    monkeypatch.delenv("QUANT_TENSOR_PARALLEL_GPUS")
    _, split, tp = placement_choices(llama_8b, "bf16", "0=80GiB,1=80GiB")
    assert split.offered and not tp.offered and tp.refusal == "gpus_off"
    assert "QUANT_TENSOR_PARALLEL_GPUS=on" in tp.describe() and "0.06x one GPU" in tp.describe()
    assert "QUANT_TENSOR_PARALLEL_GPUS=on" in tp.describe("ko")
    assert tensor_parallel_refusal(llama_8b, METHODS["bf16"], 2, on_gpus=False) is None
    # the model's own refusals come first: turning the setting on would not help them
    assert placement_choices(llama_8b, "nf4", "0=80GiB,1=80GiB")[2].refusal == "quantized"


def test_8b_on_one_small_gpu_does_not_fit_and_nothing_is_split(llama_8b):
    one, split, tp = placement_choices(llama_8b, "bf16", "0=10GiB")
    assert one.offered and not one.fits and "does not fit" in one.describe()
    assert not split.offered and "needs at least 2 GPUs (1 here)" in split.describe()
    assert not tp.offered and tp.refusal == "gpus"


def test_quantized_modes_refuse_tensor_parallel(llama_8b):
    one, split, tp = placement_choices(llama_8b, "nf4", "0=80GiB,1=80GiB")
    assert split.offered and one.per_gpu[0] < 6 * GiB
    assert not tp.offered and tp.refusal == "quantized" and "nf4" in tp.describe()


def test_qwen_with_2_kv_heads_on_4_gpus_refuses_tensor_parallel_with_the_reason():
    """Qwen2.5-0.5B: 14 attention heads, 2 KV heads; 4 GPUs cannot each hold whole heads, 2 GPUs can't either
    (14 heads divide by 2, and so do 2 KV heads: offered)."""
    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    source = _source("qwen2.5-0.5b-shape", config, "Qwen2ForCausalLM")
    one, split, tp = placement_choices(source, "bf16", FOUR_GPUS)
    assert split.offered and len(split.gpus) == 4
    assert not tp.offered and tp.refusal == "heads"
    assert tp.describe() == ("Tensor parallel: 14 attention heads and 2 KV heads do not divide by 4 GPUs "
                             "(each GPU must hold whole heads)")
    assert placement_choices(source, "bf16", "0=80GiB,1=80GiB")[2].offered


def test_no_gpu_offers_nothing_and_seq2seq_has_no_plan():
    from quant.source import resolve_source

    t5 = resolve_source("demo:tiny-t5")
    one, split, tp = placement_choices(t5, "bf16", "cpu=8GiB")
    assert not one.offered and not split.offered and not tp.offered
    _, _, tp = placement_choices(t5, "bf16", "0=8GiB,1=8GiB")
    assert not tp.offered and tp.refusal == "no_plan" and "T5ForConditionalGeneration" in tp.describe()


def test_torchao_is_refused_as_not_yet_and_every_mode_has_words():
    from quant.methods import METHODS
    from quant.ui_strings import EN

    source = _source("small-llama-shape", LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                                      num_attention_heads=4, num_key_value_heads=2), "LlamaForCausalLM")
    tp = placement_choices(source, "torchao_int8", "0=8GiB,1=8GiB")[2]
    assert tp.refusal == "not_yet" and "can shard torchao_int8's weights" in tp.describe()
    offered = {name for name in METHODS if placement_choices(source, name, "0=8GiB,1=8GiB")[2].offered}
    assert offered == {name for name, m in METHODS.items() if not m.quantizes_weights}
    assert all(f"placements.refused.{m.tensor_parallel_refusal}" in EN for m in METHODS.values()
               if m.tensor_parallel_refusal)


def test_the_plan_lists_the_chosen_modes_placements_in_text_markdown_and_json(capsys):
    import json

    from quant.cli import main

    assert main(["plan", "demo:tiny-llama-chat", "--max-memory", "0=80GiB,1=80GiB", "--modes", "bf16",
                 "--placements", "bf16", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in plan["placements"]] == ["one_gpu", "split", "tensor_parallel"]
    assert all(p["offered"] and p["fits"] for p in plan["placements"])
    assert "Every token crosses the GPUs twice per layer (all-reduce): 8 all-reduces" in plan["placements"][2]["describe"]
    assert main(["plan", "demo:tiny-llama-chat", "--max-memory", "0=80GiB,1=80GiB", "--modes", "bf16"]) == 0
    assert "Placements" not in capsys.readouterr().out  # only when asked for


def test_the_memory_plan_for_device_map_tensor_parallel_puts_a_slice_on_each_gpu(llama_8b):
    """The plan table for the Load choice device_map=tensor_parallel: each GPU holds the tensor-parallel share (the
    same bytes as the placements list), not a whole layer range; with one GPU named it plans the whole model there
    as a CPU-ranks machine does (the load itself refuses: at least 2 GPUs)."""
    from quant.planner import plan_memory

    plan = plan_memory(llama_8b, "tensor_parallel", "0=40GiB,1=40GiB", modes=["bf16"])
    (bf16,) = plan.modes
    _, _, tp = placement_choices(llama_8b, "bf16", "0=40GiB,1=40GiB")
    assert bf16.on("0") == bf16.on("1") == tp.per_gpu[0] and bf16.verdict == "gpu"
    small = plan_memory(llama_8b, "tensor_parallel", "0=7GiB,1=7GiB", modes=["bf16"]).modes[0]
    assert small.verdict == "no"  # 7.5 GiB slices over 7 GiB GPUs (less headroom): does not fit
