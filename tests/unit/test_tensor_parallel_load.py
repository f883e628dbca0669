"""device_map=tensor_parallel as a Load choice, on the CPU (gloo, 2 ranks: QUANT_TENSOR_PARALLEL_CPU_RANKS=2): the
registry loads the demo Llama sharded over two processes, and chat, Stop, seeded sampling and Batch jobs run on every
rank with one process's tokens; work that calls the forward directly is refused with a message; what cannot load is
refused before any process starts; unloading ends the worker."""

from __future__ import annotations

import threading

import pytest
import torch

from bench.common import environment
from quant.batching import PADDED, choose_engine, run_batch
from quant.errors import PlacementError
from quant.generation import GenerationSettings, stream_chat
from quant.loader import LoadRequest
from quant.metrics import perplexity
from quant.quality import measure_quality
from quant.registry import ModelRegistry
from tests.conftest import LLAMA

GREEDY = GenerationSettings(max_new_tokens=24)
HISTORY = [{"role": "user", "content": "What does the with statement do?"}]
PROMPTS = ["def add(a, b):", "The with statement", "import os\nimport sys\n\nclass Config:"]


@pytest.fixture(scope="module")
def cpu_ranks():
    with environment({"QUANT_TENSOR_PARALLEL_CPU_RANKS": "2", "QUANT_FAST_GENERATION": "off"}):
        yield


@pytest.fixture(scope="module")
def models(cpu_ranks):
    """(registry, the model on one process, the model sharded over two)."""
    registry = ModelRegistry(max_models=3)
    single = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cpu"))
    sharded = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
    yield registry, single, sharded
    registry.unload_all()


def reply(loaded, settings=GREEDY, stop=None) -> str:
    return list(stream_chat(loaded, HISTORY, settings=settings, stop=stop))[-1].text


def test_load_report_and_greedy_chat_equal_one_process(models, monkeypatch):
    from quant.planner import placement_choices

    _, single, sharded = models
    report = sharded.report
    assert report.device_map == {"": "tensor parallel: 2 ranks (gloo) on cpu"}
    assert "tensor parallel" in report.generation_path and not sharded.path.compiled
    # rank 0 holds half of each projection, as a plain tensor (quant.tensor_parallel.localize); a row-wise slice
    # sums the ranks' parts itself
    attention = sharded.model.model.layers[0].self_attn
    whole = single.model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape[0] == whole.q_proj.weight.shape[0] // 2
    assert type(attention.o_proj).__name__ == "RowwiseLinear" and type(attention.q_proj) is torch.nn.Linear
    # each rank: half of each projection, the embeddings, head and norms whole: more than half the model, less than it
    per_rank = report.footprint_bytes / 2
    assert single.report.footprint_bytes / 2 < per_rank < single.report.footprint_bytes
    monkeypatch.setenv("QUANT_TENSOR_PARALLEL_GPUS", "on")  # the Model tab's plan of the same split, for two GPUs
    planned = placement_choices(sharded.source, "fp32", "0=8GiB,1=8GiB")[2]
    assert planned.per_gpu[0] == pytest.approx(per_rank, rel=0.01)
    assert any("Tensor parallel over 2 ranks" in w for w in report.warnings)
    text = reply(sharded)
    assert text and text == reply(single)


def test_stop_ends_every_rank_at_the_same_step(models):
    """Stop is rank 0's event: the other rank learns it through the per-step broadcast, so both end together and
    the next reply (a full one) runs in lockstep, not into a rank still generating the stopped one."""
    _, single, sharded = models
    long = GenerationSettings(max_new_tokens=200)
    stop = threading.Event()
    chunks = []
    for chunk in stream_chat(sharded, HISTORY, settings=long, stop=stop):
        chunks.append(chunk)
        stop.set()
    assert chunks[-1].stats.new_tokens < 200
    assert reply(sharded) == reply(single)


def test_a_seeded_sampled_reply_is_the_same_twice(models):
    """Every rank samples with the same seed (drawn from rank 0's generator, which the reply's seed sets): the
    ranks agree, and the reply is reproducible."""
    _, _, sharded = models
    sampled = GenerationSettings(max_new_tokens=24, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, seed=7)
    first = reply(sharded, sampled)
    assert first and reply(sharded, sampled) == first
    assert reply(sharded, GenerationSettings(max_new_tokens=24, do_sample=True, temperature=1.0, seed=8)) != first


def test_a_batch_job_runs_padded_on_every_rank(models):
    _, single, sharded = models
    choice = choose_engine(sharded, GREEDY, "continuous")
    assert choice.engine == PADDED and "tensor parallel" in choice.reason
    rows = list(run_batch(sharded, list(enumerate(PROMPTS, 1)), GREEDY, batch_size=2))[-1].rows
    want = list(run_batch(single, list(enumerate(PROMPTS, 1)), GREEDY, batch_size=2, engine=PADDED))[-1].rows
    assert [r.output for r in rows] == [r.output for r in want] and all(r.output for r in rows)


def test_forward_passes_outside_generate_are_refused(models):
    _, _, sharded = models
    with pytest.raises(PlacementError, match="tensor parallelism") as refused:
        perplexity(sharded, "def add(a, b):\n    return a + b\n" * 8)
    assert "one GPU" in refused.value.hint
    with pytest.raises(PlacementError, match="quality pass"):
        measure_quality(sharded, reference=None)
    assert reply(sharded)  # the group still serves


def test_refused_before_any_process_starts(cpu_ranks, monkeypatch):
    import multiprocessing

    workers = multiprocessing.active_children()
    registry = ModelRegistry(max_models=1)
    with pytest.raises(PlacementError, match="16/32-bit") as quantized:
        registry.load(LoadRequest(LLAMA, mode="nf4", device_map="tensor_parallel"))
    assert "bf16" in quantized.value.hint
    with pytest.raises(PlacementError, match="max_memory does not apply"):
        registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel", max_memory="cpu=8GiB"))
    monkeypatch.setenv("QUANT_TENSOR_PARALLEL_CPU_RANKS", "0")
    with pytest.raises(PlacementError, match="at least 2 GPUs") as no_ranks:
        registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
    assert "QUANT_TENSOR_PARALLEL_CPU_RANKS=2" in no_ranks.value.hint
    assert registry.loaded() == [] and multiprocessing.active_children() == workers


def test_unload_ends_the_worker_and_a_new_group_can_start(models):
    """Last in this module: one process holds one group, so a second sharded load waits for the first's unload."""
    import torch.distributed as dist

    registry, _, sharded = models
    with pytest.raises(Exception, match="already holds"):
        registry.load(LoadRequest(LLAMA, mode="bf16", device_map="tensor_parallel"))
    workers = list(sharded.group.workers)
    registry.unload(sharded.key)
    assert not any(p.is_alive() for p in workers) and not dist.is_initialized()
    again = registry.load(LoadRequest(LLAMA, mode="bf16", device_map="tensor_parallel"))
    assert again.model.dtype == torch.bfloat16 and reply(again)
    registry.unload(again.key)
    assert not dist.is_initialized()


def test_compare_with_tensor_parallel_is_refused_with_what_to_do_instead():
    from quant.compare import ModeSpec, compare
    from quant.methods import Mode, QuantOptions

    registry = ModelRegistry(max_models=1)
    with pytest.raises(PlacementError, match="perplexity and next-token quality") as refused:
        list(compare(LLAMA, [ModeSpec("bf16", Mode.BF16, LLAMA, QuantOptions())], registry=registry,
                     device_map="tensor_parallel"))
    assert "device_map auto" in refused.value.hint and registry.loaded() == []
