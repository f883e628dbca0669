"""The segmented compiled decode step (quant/segments.py) on the CPU: the step of a model split over GPUs, with its
segments forced onto one device by QUANT_DECODE_SEGMENTS, gives the eager path's tokens; it runs without accelerate's
hooks breaking its graphs; a structure it does not know stays eager and says why.

As in test_fastpath.py the segments compile with the "eager" dynamo backend; the real split over two GPUs, with a
CUDA graph per segment, is tests/gpu/test_gpu_segments.py.
"""

from __future__ import annotations

import re

import pytest
import torch

from quant.generation import GenerationSettings, generate_batch, stream_chat
from quant.loader import LoadRequest
from quant.segments import SegmentedDecodeLoop, segment_plan
from tests.conftest import LLAMA
from tests.support.fastpath import PROMPTS, greedy_ids, load

GREEDY = GenerationSettings(max_new_tokens=24)


@pytest.fixture
def compiled_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANT_COMPILE_BACKEND", "eager")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1,4")
    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "128")
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    return monkeypatch


@pytest.fixture(scope="module")
def eager_llama():
    return load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)


@pytest.mark.parametrize(("segments", "layers", "regions"), [(2, [[0, 1], [2, 3]], "model"),
                                                          (3, [[0], [1, 2], [3]], "layers")])
def test_a_segmented_step_gives_the_eager_tokens(compiled_settings, eager_llama, segments, layers, regions):
    compiled_settings.setenv("QUANT_DECODE_SEGMENTS", str(segments))
    compiled_settings.setenv("QUANT_COMPILE_REGIONS", regions)
    cut = load(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="sdpa"), fast=True)
    try:
        shared = "; one compiled decoder layer for all layers" if regions == "layers" else ""
        assert re.fullmatch(re.escape(f"static cache + torch.compile (batch 1, 4; up to 128 tokens; {segments} "
                                      f"segments over cpu{shared}; grouped-query decode without repeated KV; batch "
                                      "prefill through one compiled decoder layer (compiled and checked in ")
                            + r"\d+\.\d s\)\)", cut.report.generation_path), cut.report.generation_path
        assert sorted(cut.path._loops) == [(1, 128), (4, 128)]
        for loop in cut.path._loops.values():
            assert isinstance(loop, SegmentedDecodeLoop)
            assert [list(group.layers) for group in loop.groups] == layers
            assert loop.groups[0].prologue and loop.groups[-1].norm and loop.groups[-1].head
        # Batch 1 (the chat) and 3 prompts padded up to the compiled 4 (left padding: the mask matters)
        history = [{"role": "user", "content": PROMPTS[0]}]
        want, got = (list(stream_chat(m, history, settings=GREEDY))[-1] for m in (eager_llama, cut))
        assert got.stats.path == "compiled" and got.text == want.text
        assert generate_batch(cut, PROMPTS[:3], GREEDY) == generate_batch(eager_llama, PROMPTS[:3], GREEDY)
        for loop in cut.path._loops.values():  # each cache layer where its decoder layer is
            assert [layer.keys.device for layer in loop.cache.layers] == \
                [next(layer.parameters()).device for layer in cut.model.model.layers]
    finally:
        cut.path.close()


def test_gemma3_decodes_in_segments_as_eager_does(compiled_settings, tmp_path):
    """Gemma 3's forward builds a mask per layer type, picks each layer's by `decoder_layer.attention_type`, scales its
    embedding and has sliding-window layers: the segments take all of it from the model's own forward."""
    from tests.support.architectures import build

    compiled_settings.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    compiled_settings.setenv("QUANT_DECODE_SEGMENTS", "2")
    request = LoadRequest(model=str(build("gemma3", tmp_path / "gemma3")), mode="fp32")
    eager, cut = load(request, fast=False), load(request, fast=True)
    try:
        assert "2 segments over cpu" in cut.report.generation_path, cut.report.generation_path
        for prompt in ("hello world " * 10, "def main():"):  # past gemma's window of 32 in the prompt, then decoding
            _, want, _ = greedy_ids(eager, [prompt], new_tokens=40)
            _, got, compiled = greedy_ids(cut, [prompt], new_tokens=40)
            assert compiled and got == want
    finally:
        cut.path.close()


def test_accelerate_hooks_do_not_break_the_segments_graphs(compiled_settings):
    """A model placed by accelerate over several devices carries a hook on every placed module, and accelerate keeps
    those hooks out of torch.compile: each would split the step's graph. The segments run hook-free copies; the
    model keeps its hooks. Hooks are forced here on one device, as accelerate attaches them for a split."""
    from accelerate import dispatch_model
    from torch._dynamo.utils import counters

    from quant.fastpath import prepare_generation_path
    from quant.settings import load_settings

    compiled_settings.setenv("QUANT_FAST_GENERATION", "all")
    compiled_settings.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    compiled_settings.setenv("QUANT_DECODE_SEGMENTS", "2")
    loaded = load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)
    model = loaded.model
    placed = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(4)}, "model.norm": "cpu",
              "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatch_model(model, device_map=placed, main_device="cpu", force_hooks=True)
    assert all(hasattr(m, "_hf_hook") for m in (model, model.model.embed_tokens, model.model.layers[0], model.lm_head))
    encoded = loaded.tokenizer([PROMPTS[1]], return_tensors="pt")
    kwargs = dict(**encoded, max_new_tokens=24, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    with torch.inference_mode():
        want = model.generate(**kwargs)
    breaks = sum(counters["graph_break"].values())
    path = prepare_generation_path(model, loaded.tokenizer, method_refusal=None, kind="causal", context=None,
                                   settings=load_settings())
    try:
        assert path.compiled and path.segments is not None, path.describe()
        assert sum(counters["graph_break"].values()) == breaks, dict(counters["graph_break"])
        got = path.submit(model.generate, kwargs, 1, total_tokens=encoded["input_ids"].shape[1] + 24).result()
        assert torch.equal(got, want)
        assert hasattr(model.model.layers[0], "_hf_hook") and hasattr(model, "_hf_hook")  # the model keeps its own
    finally:
        path.close()


def test_a_structure_the_segments_do_not_know_stays_eager_and_says_why(compiled_settings, tmp_path):
    """GPT-2 keeps its blocks at transformer.h: split over GPUs (or cut by QUANT_DECODE_SEGMENTS) it decodes eagerly,
    with the reason in the load report."""
    from tests.support.architectures import build

    compiled_settings.setenv("QUANT_DECODE_SEGMENTS", "2")
    gpt2 = load(LoadRequest(model=str(build("gpt2", tmp_path / "gpt2")), mode="fp32"), fast=True)
    assert segment_plan(gpt2.model) == "GPT2LMHeadModel keeps no decoder layers at model.layers"
    assert not gpt2.path.compiled
    assert gpt2.report.generation_path == \
        "eager (QUANT_DECODE_SEGMENTS=2: GPT2LMHeadModel keeps no decoder layers at model.layers)"


@pytest.mark.parametrize(("family", "path_says"), [
    ("mixtral", "; one compiled decoder layer for all layers"),
    ("gpt2", "; whole model compiled (GPT2LMHeadModel keeps no decoder layers at model.layers)")])
def test_a_family_compiles_one_layer_for_all_or_whole_with_the_reason(compiled_settings, tmp_path, family, path_says):
    """QUANT_COMPILE_REGIONS=layers (the default). Mixtral through one compiled layer for all: its forward reads
    `router_logits` from its decoder's output, which the head's stand-in decoder must answer (it failed to compile
    once for lack of it). GPT-2 keeps its blocks nowhere the segments know: its whole forward is compiled in one
    graph, as before, and the load report says why. Both give the eager path's tokens."""
    from tests.support.architectures import build

    compiled_settings.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    request = LoadRequest(model=str(build(family, tmp_path / family)), mode="fp32")
    eager, fast = load(request, fast=False), load(request, fast=True)
    try:
        assert fast.path.compiled and fast.path.regional == (family != "gpt2")
        assert path_says in fast.report.generation_path, fast.report.generation_path
        _, want, _ = greedy_ids(eager, ["def main():"], new_tokens=24)
        _, got, compiled = greedy_ids(fast, ["def main():"], new_tokens=24)
        assert compiled and got == want
    finally:
        fast.path.close()


def test_a_layer_that_refuses_its_cache_view_is_compiled_whole_with_the_reason(compiled_settings):
    """A model whose attention checks that it is given a transformers Cache (remote code may) fails with one compiled
    layer for all (each layer gets its own view of the cache): the whole forward is compiled instead, the load
    report says why, and the tokens are eager's."""
    from transformers.cache_utils import Cache

    from quant.fastpath import prepare_generation_path
    from quant.settings import load_settings

    compiled_settings.setenv("QUANT_FAST_GENERATION", "all")
    compiled_settings.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    loaded = load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)
    model = loaded.model
    for layer in model.model.layers:
        def attention(*args, _original=layer.self_attn.forward, past_key_values=None, **kwargs):
            if past_key_values is not None and not isinstance(past_key_values, Cache):
                raise TypeError("this attention takes a transformers Cache")
            return _original(*args, past_key_values=past_key_values, **kwargs)
        layer.self_attn.forward = attention
    encoded = loaded.tokenizer([PROMPTS[1]], return_tensors="pt")
    kwargs = dict(**encoded, max_new_tokens=16, do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    with torch.inference_mode():
        want = model.generate(**kwargs)
    path = prepare_generation_path(model, loaded.tokenizer, method_refusal=None, kind="causal", context=None,
                                   settings=load_settings())
    try:
        assert path.compiled and not path.regional and path.segments is None, path.describe()
        assert "whole model compiled (one compiled layer for all failed: this attention takes a transformers Cache)" \
            in path.describe()
        got = path.submit(model.generate, kwargs, 1, total_tokens=encoded["input_ids"].shape[1] + 16).result()
        assert torch.equal(got, want)
    finally:
        path.close()


def test_segments_follow_the_devices_and_the_cuts():
    """The plan of the demo Llama on one device: one segment, or the cuts asked for (never more than the layers)."""
    loaded = load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)
    cpu = torch.device("cpu")
    assert segment_plan(loaded.model).segments == ((cpu, range(0, 4)),)
    assert segment_plan(loaded.model, 4).segments == tuple((cpu, range(i, i + 1)) for i in range(4))
    assert segment_plan(loaded.model, 9).segments == tuple((cpu, range(i, i + 1)) for i in range(4))
    assert segment_plan(loaded.model, 2).describe() == "2 segments over cpu"


def test_the_compiled_calls_follow_the_devices():
    """One compiled call (CUDA graph) per change of device: the embedding alone on cuda:0 (accelerate put every
    layer on cuda:1), and a head tied to the embedding back on cuda:0 after the norm on cuda:1."""
    from quant.segments import SegmentPlan, _groups

    gpu0, gpu1 = torch.device("cuda:0"), torch.device("cuda:1")
    tied = SegmentPlan(embed=gpu0, segments=((gpu1, range(0, 4)),), norm=gpu1, head=gpu0)
    assert tied.describe() == "1 segment over cuda:0, cuda:1"
    assert [g.describe() for g in _groups(tied)] == ["prologue on cuda:0", "layers 0-3 + norm on cuda:1",
                                                     "head on cuda:0"]
    split = SegmentPlan(embed=gpu0, segments=((gpu0, range(0, 2)), (gpu1, range(2, 4))), norm=gpu1, head=gpu1)
    assert split.describe() == "2 segments over cuda:0, cuda:1"
    assert [g.describe() for g in _groups(split)] == ["prologue + layers 0-1 on cuda:0",
                                                      "layers 2-3 + norm + head on cuda:1"]
