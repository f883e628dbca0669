"""quant.ragged: a padded batch of ragged prompts prefilled in groups of similar length (the default,
QUANT_BATCH_PREFILL=grouped) gives the replies of the batch prefilled whole (QUANT_BATCH_PREFILL=padded) and of each
prompt alone, without a forward over the padded batch; groups follow the token budget; what it cannot serve (sliding
or hybrid caches, seq2seq, tensor parallel) is said, and a batch with little padding is prefilled whole."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

from quant import ragged
from quant.generation import GenerationSettings, generate_batch
from quant.loader import LoadRequest
from tests.conftest import LLAMA
from tests.support.batching import prefilled_both_ways, recorded_forwards

GREEDY = GenerationSettings(max_new_tokens=24)
RAGGED = ["x", "def add(a, b):\n    return a + b\n" * 6, "import os", "The with statement " * 20,
          "class A:\n    pass\n" * 3, "hi there"]


@pytest.fixture(scope="module")
def fp32():
    import os

    from quant.registry import ModelRegistry

    previous = os.environ.get("QUANT_FAST_GENERATION")
    os.environ["QUANT_FAST_GENERATION"] = "off"  # the eager path: where the grouped prefill runs
    registry = ModelRegistry(max_models=1)
    yield registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"))
    registry.unload_all()
    os.environ.pop("QUANT_FAST_GENERATION") if previous is None else os.environ.update(
        QUANT_FAST_GENERATION=previous)


def test_grouped_prefill_gives_the_padded_batchs_replies_without_its_padded_forward(fp32, monkeypatch):
    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups from these six prompts
    (padded, padded_shapes), (grouped, grouped_shapes) = prefilled_both_ways(fp32, RAGGED, GREEDY, monkeypatch)
    width = padded_shapes[0][1]  # the padded batch's first forward: all rows, every position
    assert padded_shapes[0] == (len(RAGGED), width) and width > 80
    assert grouped == padded and sum(count > 1 for _, count in grouped) >= 4  # (a reply may end at once)
    assert grouped == [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]  # and each prompt alone
    prefill = [s for s in grouped_shapes if s[1] > 1]
    groups = ragged.prefill_groups([sum(m) for m in fp32.tokenizer(RAGGED)["attention_mask"]], 200)
    assert len(prefill) == len(groups) >= 2  # one forward per group, none over the whole padded batch
    assert sum(rows * positions for rows, positions in prefill) < 0.75 * len(RAGGED) * width
    assert grouped_shapes[len(prefill)] == (len(RAGGED), 1)  # then decode: the whole batch, one position a step


def test_a_batch_with_little_padding_is_prefilled_whole(fp32, monkeypatch):
    alike = ["def add(a, b):", "def sub(a, b):", "def mul(a, b):"]
    monkeypatch.setenv("QUANT_BATCH_PREFILL", "grouped")
    with recorded_forwards(fp32.model) as shapes:
        replies = generate_batch(fp32, alike, GREEDY)
    assert shapes[0][0] == len(alike) and shapes[0][1] > 1 and replies


def test_groups_follow_the_token_budget_and_never_start_with_a_one_token_prompt():
    assert ragged.prefill_groups([5, 100, 1, 50, 20], 120) == [[2, 0, 4], [3], [1]]
    assert ragged.prefill_groups([1, 1, 30], 10) == [[0, 1, 2]]  # the 1-token rows join the next group
    assert ragged.prefill_groups([7, 7], 100) == [[0, 1]]
    assert not ragged.worth_it(torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]]))  # 7 of 8 positions are tokens
    assert ragged.worth_it(torch.tensor([[0, 0, 0, 1], [1, 1, 1, 1]]))
    assert not ragged.worth_it(torch.tensor([[0, 0, 0, 1]]))  # one row: nothing to regroup


@pytest.mark.parametrize(("kind", "config", "tensor_parallel", "reason"), [
    ("causal", LlamaConfig(), False, None),
    ("causal", Qwen2Config(), False, None),
    ("causal", MistralConfig(sliding_window=4096), False, "sliding-window or hybrid"),
    ("causal", Gemma2Config(), False, "sliding-window or hybrid"),
    ("seq2seq", LlamaConfig(), False, "seq2seq"),
    ("causal", LlamaConfig(), True, "tensor parallel"),
])
def test_what_cannot_be_prefilled_in_groups_says_why(kind, config, tensor_parallel, reason):
    refusal = ragged.config_refusal(kind, config, tensor_parallel=tensor_parallel)
    assert refusal is None if reason is None else reason in refusal


def test_the_compiled_loop_prefills_a_ragged_batch_in_groups_into_its_static_cache(fp32, monkeypatch, tmp_path):
    """The compiled decode loop (quant.decode, on the CPU with QUANT_FAST_GENERATION=all) prefills a ragged padded
    batch in groups straight into its static cache, then runs only the last column over the whole batch: the replies
    of the same loop prefilled whole (QUANT_BATCH_PREFILL=padded) and of each prompt alone on the eager path."""
    from tests.support.fastpath import load

    for key, value in {"QUANT_COMPILE_BACKEND": "eager", "QUANT_COMPILED_BATCH_SIZES": f"1,{len(RAGGED)}",
                       "QUANT_STATIC_CACHE_TOKENS": "256", "QUANT_KERNEL_CACHE": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups from these six prompts
    fast = load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"), fast=True)
    try:
        assert fast.path.compiled_batch_size(len(RAGGED), 200) == len(RAGGED)
        (padded, padded_shapes), (grouped, grouped_shapes) = prefilled_both_ways(fast, RAGGED, GREEDY, monkeypatch)
        width = padded_shapes[0][1]
        assert padded_shapes[0] == (len(RAGGED), width) and width > 80
        prefill = [s for s in grouped_shapes if s[1] > 1]
        groups = ragged.prefill_groups([sum(m) for m in fast.tokenizer(RAGGED)["attention_mask"]], 200)
        assert len(prefill) == len(groups) >= 2 and all(rows < len(RAGGED) for rows, _ in prefill)
        assert grouped_shapes[len(prefill)] == (len(RAGGED), 1)  # the last column, on the static cache
        assert grouped == padded and sum(count > 1 for _, count in grouped) >= 4
        assert grouped == [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]
    finally:
        fast.path.close()
