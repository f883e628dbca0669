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
from tests.support.architectures import FAMILIES
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


def test_a_groups_placement_is_computed_on_the_host_without_reading_the_device():
    """Placement.of builds a group's indices from the host's lists and copies them to the device: on the meta device,
    which has no values to read, it still builds (computed there, repeat_interleave and the count's sum would read
    them, as they synchronised a GPU every group), and its indices are those computed on the CPU."""
    on_meta = ragged.Placement.of([2, 0], [3, 1], 6, "meta")
    on_cpu = ragged.Placement.of([2, 0], [3, 1], 6)
    for name, want in (("local", [0, 0, 0, 1]), ("column", [0, 1, 2, 0]), ("row", [2, 2, 2, 0]),
                       ("slot", [2, 3, 4, 4])):
        assert getattr(on_cpu, name).tolist() == want, name
        assert getattr(on_meta, name).device.type == "meta" and getattr(on_meta, name).shape == (4,)
    index, shift = ragged.on_device(torch.device("meta"), torch.tensor([5, 1, 7]), torch.tensor([2, 0, 1]))
    assert index.shape == (3,) and shift.shape == (3,) and index.device.type == "meta"
    assert [t.tolist() for t in ragged.on_device(torch.device("cpu"), torch.tensor([5, 1]), torch.tensor([3]))] == [
        [5, 1], [3]]


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


def test_the_compiled_prefill_gives_the_eager_prefills_replies_with_one_graph_for_every_layer_and_shape(
        fp32, monkeypatch, tmp_path):
    """QUANT_COMPILE_PREFILL=on (Inductor on the CPU): the compiled loop's groups run through one compiled decoder
    layer; the replies are the eager-prefilled ones and each prompt's alone; a second job of other group shapes
    compiles nothing new (dynamic shapes, one graph for all layers: a layer's own index would make one per layer);
    the model itself keeps its layers (the compiled prefill runs on a copy of its module tree)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch._dynamo.utils import counters

    from tests.support.fastpath import load

    for key, value in {"QUANT_COMPILED_BATCH_SIZES": f"1,{len(RAGGED)}", "QUANT_STATIC_CACHE_TOKENS": "256",
                       "QUANT_KERNEL_CACHE": str(tmp_path), "QUANT_COMPILE_PREFILL": "on",
                       "QUANT_BATCH_PREFILL": "grouped"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups from these six prompts
    fast = load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"), fast=True)
    try:
        assert "batch prefill through one compiled decoder layer" in fast.path.describe(), fast.path.describe()
        loops = list(fast.path._loops.values())
        assert all(loop.prefill_forward is fast.path._prefill.forward for loop in loops if loop.batch_size > 1)
        assert type(fast.model.model.layers[0]).__name__ == "LlamaDecoderLayer"
        with recorded_forwards(fast.model) as shapes:
            compiled = generate_batch(fast, RAGGED, GREEDY)
        graphs = counters["stats"]["unique_graphs"]
        groups = ragged.prefill_groups([sum(m) for m in fast.tokenizer(RAGGED)["attention_mask"]], 200)
        assert len([s for s in shapes if s[1] > 1]) == len(groups) >= 2
        assert compiled == [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]
        monkeypatch.setattr(ragged, "GROUP_TOKENS", 120)  # other groups, other shapes
        assert generate_batch(fast, RAGGED[::-1], GREEDY) == compiled[::-1]
        assert counters["stats"]["unique_graphs"] == graphs
        # dynamo's compiled entries of the one layer call: groups of several rows, and of one row (1 is specialized)
        assert 1 <= len(_debug_get_cache_entry_list(ragged._call_layer.__code__)) <= 2
        monkeypatch.setenv("QUANT_COMPILE_PREFILL", "off")  # read at each job: the same loop prefills eagerly
        assert generate_batch(fast, RAGGED[::-1], GREEDY) == compiled[::-1]
        assert all(loop.prefill_forward is None for loop in loops)
    finally:
        fast.path.close()


def test_the_compiled_prefill_is_checked_against_the_eager_one_and_refused_where_it_cannot_run(fp32):
    """The check at build time passes the compiled prefill (here: dynamo's eager backend), fails one whose layers
    compute something else, and a model split by accelerate's hooks is refused with the reason."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    model = fp32.model
    assert ragged.CompiledPrefill(model, lambda fn: torch.compile(fn, backend="eager")).check(model) \
        is None

    def wrong(fn):
        return lambda layer, hidden, args, kwargs: fn(layer, hidden * 1.5, args, kwargs)

    assert "differs from the eager one" in ragged.CompiledPrefill(model, wrong).check(model)
    add_hook_to_module(model.model.layers[1], ModelHook())
    try:
        assert "split over devices" in ragged.compiled_prefill_refusal(model)
        with pytest.raises(ValueError, match="split over devices"):
            ragged.CompiledPrefill(model, lambda fn: fn)
    finally:
        remove_hook_from_module(model.model.layers[1])
    assert ragged.compiled_prefill_refusal(model) is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_either_checks_its_compiled_prefill_or_says_why_not(family, tmp_path):
    """Each architecture the app is given: the compiled prefill (dynamo's eager backend: the tracing, the per-layer
    slots and the check; Inductor's kernels are the test above's) matches the eager one, or a reason says why the
    batches prefill eagerly (no grouped prefill: sliding or hybrid caches, seq2seq; no decoder.layers)."""
    from quant.loader import load_model
    from tests.support.architectures import build

    loaded = load_model(LoadRequest(str(build(family, tmp_path / family)), mode="fp32"))
    refusal = ragged.refusal(loaded) or ragged.compiled_prefill_refusal(loaded.model)
    eager = {"gemma2": "sliding-window", "gemma3": "sliding-window", "phi3": "sliding-window", "t5": "position ids",
             "bart": "position ids", "gpt2": "not a ModuleList at decoder.layers"}
    assert (refusal is None) == (family not in eager) and (refusal is None or eager[family] in refusal), refusal
    if refusal:
        return
    prefill = ragged.CompiledPrefill(loaded.model, lambda fn: torch.compile(fn, backend="eager"))
    assert prefill.check(loaded.model) is None


def test_unloading_a_model_with_a_compiled_prefill_frees_it_and_its_compiled_frames(monkeypatch, tmp_path):
    """The compiled prefill holds a copy of the model's module tree and dynamo holds its frames: an unload lets the
    model be freed all the same and drops the frames (dynamo's backend: no Inductor compile needed for this)."""
    import gc
    import weakref

    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from quant.registry import ModelRegistry

    for key, value in {"QUANT_COMPILE_BACKEND": "eager", "QUANT_COMPILED_BATCH_SIZES": f"1,{len(RAGGED)}",
                       "QUANT_STATIC_CACHE_TOKENS": "256", "QUANT_KERNEL_CACHE": str(tmp_path),
                       "QUANT_COMPILE_PREFILL": "on", "QUANT_FAST_GENERATION": "all"}.items():
        monkeypatch.setenv(key, value)
    registry = ModelRegistry(max_models=1)
    loaded = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"))
    assert loaded.path._prefill is not None, loaded.path.describe()
    assert all(reply for reply in generate_batch(loaded, RAGGED, GREEDY))
    assert _debug_get_cache_entry_list(ragged._call_layer.__code__), "nothing compiled: the checks prove nothing"
    model, layer, key = weakref.ref(loaded.model), weakref.ref(loaded.model.model.layers[0]), loaded.key
    del loaded
    registry.unload(key)
    gc.collect()
    assert model() is None and layer() is None, "the unloaded model (or its layers, in the copy) is still referenced"
    assert not _debug_get_cache_entry_list(ragged._call_layer.__code__)
