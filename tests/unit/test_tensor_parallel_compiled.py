"""Tensor parallel on the compiled decode path (QUANT_FAST_GENERATION=all; on the CPU with gloo, 2 ranks, and the
"eager" dynamo backend: it traces what Inductor would compile, quickly): every rank slices the model into plain
tensors with explicit all-reduces (quant.tensor_parallel.localize), compiles its decode loop in lockstep, and a chat
runs on the loops of every rank with one process's tokens; Stop ends the ranks at the same step; another model's
unload (which resets the compiled code) turns the group eager on every rank instead of recompiling one rank alone."""

from __future__ import annotations

import threading

import pytest

from bench.common import environment
from quant.generation import GenerationSettings, stream_chat
from quant.loader import LoadRequest
from quant.registry import ModelRegistry
from tests.conftest import LLAMA

GREEDY = GenerationSettings(max_new_tokens=24)
HISTORY = [{"role": "user", "content": "What does the with statement do?"}]
SETTINGS = {"QUANT_TENSOR_PARALLEL_CPU_RANKS": "2", "QUANT_FAST_GENERATION": "all", "QUANT_COMPILE_BACKEND": "eager",
            # as on GPUs by default: each rank's q/k/v and gate/up slices fused (a slice's layer keeps the whole
            # layer's out_features attribute: the fusion must go by its tensors)
            "QUANT_FUSE_PROJECTIONS": "on"}


@pytest.fixture(scope="module")
def models():
    with environment(SETTINGS):  # before the load: the worker processes inherit them
        registry = ModelRegistry(max_models=3)
        try:
            single = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"))
            sharded = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
            yield registry, single, sharded
        finally:
            registry.unload_all()


def chat(loaded, settings=GREEDY, stop=None):
    return list(stream_chat(loaded, HISTORY, settings=settings, stop=stop))[-1]


def test_every_rank_decodes_on_its_compiled_loop_with_one_processs_tokens(models):
    _, single, sharded = models
    assert sharded.report.generation_path.startswith("tensor parallel over 2 ranks, each: static cache + "
                                                     "torch.compile"), sharded.report.generation_path
    assert "q_proj/k_proj/v_proj and gate_proj/up_proj each one matmul" in sharded.report.generation_path
    assert single.path.compiled
    got, want = chat(sharded), chat(single)
    assert got.text and got.text == want.text and got.stats.path == "compiled"
    # rank 0's batch-1 loop ran the replies: each decode step moves its position on by one
    [loop] = [loop for (size, _), loop in sharded.group.path._loops.items() if size == 1]
    after_24 = int(loop.position[0, 0])
    shorter = chat(sharded, GenerationSettings(max_new_tokens=12))
    assert shorter.stats.new_tokens == 12 and shorter.text == want.text[:len(shorter.text)]
    assert after_24 - int(loop.position[0, 0]) == 12


def test_stop_ends_every_rank_at_the_same_step_on_the_compiled_loops(models):
    _, single, sharded = models
    stop = threading.Event()
    chunks = []
    for chunk in stream_chat(sharded, HISTORY, settings=GenerationSettings(max_new_tokens=200), stop=stop):
        chunks.append(chunk)
        stop.set()
    assert chunks[-1].stats.new_tokens < 200 and chunks[-1].stats.path == "compiled"
    assert chat(sharded).text == chat(single).text  # the ranks are still in step


def test_another_models_unload_turns_the_group_eager_on_every_rank(models):
    """Unloading a compiled model resets dynamo's compiled code, and every other compiled path warms up again; a
    tensor-parallel path cannot (its warm-up needs every rank): rank 0 stops using it, and the workers follow rank
    0's decision with each request, so the next reply runs eagerly on every rank, with the same tokens."""
    registry, single, sharded = models
    want = chat(single).text
    registry.unload(single.key)
    assert not sharded.group.path.compiled and "not recompiled" in sharded.group.path.reason
    got = chat(sharded)
    assert got.stats.path == "eager" and got.text == want
