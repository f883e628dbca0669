"""On two CUDA GPUs (nccl): quant.tensor_parallel shards the demo Llama by transformers' tp_plan and gives one GPU's
greedy tokens in fp32, eager and with a static cache (which transformers compiles on CUDA); close() ends the worker."""

from __future__ import annotations

import pytest
import torch

from quant.source import resolve_location
from tests.conftest import LLAMA

pytestmark = pytest.mark.gpu

PROMPTS = [[0, 5, 17, 99, 300, 42], [0, 1000, 7, 7, 7], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tp_over_two_gpus_gives_one_gpus_greedy_tokens(monkeypatch):
    from transformers import AutoModelForCausalLM

    from quant.tensor_parallel import start_group

    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    path = resolve_location(LLAMA)[0]
    single = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda:1").eval()
    # collectives time out (with the op named, on both ranks) well before pytest's own faulthandler_timeout
    group = start_group(path, world_size=2, dtype="float32", backend="nccl", timeout_s=180)
    try:
        assert str(group.model.device) == "cuda:0"
        for ids in PROMPTS:
            ids = torch.tensor([ids])
            kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
            expected = single.generate(ids.to("cuda:1"), **{**kwargs, "attention_mask": kwargs["attention_mask"]
                                                            .to("cuda:1")}).cpu()
            assert group.generate(input_ids=ids, **kwargs).tolist() == expected.tolist()
            static = group.generate(input_ids=ids, cache_implementation="static", **kwargs)
            assert static.tolist() == expected.tolist()
    finally:
        workers = list(group.workers)
        group.close()
    assert not any(p.is_alive() for p in workers)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_the_load_choice_tensor_parallel_chats_and_stops_on_two_gpus(monkeypatch):
    """device_map=tensor_parallel through the registry (the Model tab's path): the report names both GPUs with a
    slice each, greedy chat equals one GPU's, Stop ends both ranks at the same step (the next reply runs), and
    unloading ends the worker."""
    import threading

    from quant.generation import GenerationSettings, stream_chat
    from quant.loader import LoadRequest
    from quant.registry import ModelRegistry

    from quant.errors import PlacementError

    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    monkeypatch.setenv("QUANT_FAST_GENERATION", "off")
    registry = ModelRegistry(max_models=2)
    with pytest.raises(PlacementError, match="QUANT_TENSOR_PARALLEL_GPUS=on"):  # off on GPUs unless turned on
        registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
    monkeypatch.setenv("QUANT_TENSOR_PARALLEL_GPUS", "on")
    history = [{"role": "user", "content": "What does the with statement do?"}]
    greedy = GenerationSettings(max_new_tokens=24)
    single = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cuda:1"))  # fp32: sums in any order agree
    sharded = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
    try:
        assert sharded.report.device_map == {"": "tensor parallel: 2 ranks (nccl) on cuda:0, cuda:1"}
        assert set(sharded.report.bytes_by_device) == {"cuda:0", "cuda:1"}
        want = list(stream_chat(single, history, settings=greedy))[-1].text
        assert list(stream_chat(sharded, history, settings=greedy))[-1].text == want
        stop = threading.Event()
        chunks = []
        for chunk in stream_chat(sharded, history, settings=GenerationSettings(max_new_tokens=200), stop=stop):
            chunks.append(chunk)
            stop.set()
        assert chunks[-1].stats.new_tokens < 200
        assert list(stream_chat(sharded, history, settings=greedy))[-1].text == want
    finally:
        workers = list(sharded.group.workers)
        registry.unload_all()
    assert not any(p.is_alive() for p in workers)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tp_on_the_compiled_path_over_two_gpus_chats_like_one_gpu(monkeypatch):
    """QUANT_FAST_GENERATION=all: every rank slices the model into plain tensors (localize), compiles and captures its
    decode step with its all-reduces inside the CUDA graph, and a greedy chat gives one GPU's reply (fp32)."""
    from quant.generation import GenerationSettings, stream_chat
    from quant.loader import LoadRequest
    from quant.registry import ModelRegistry

    for key, value in {"NCCL_NVLS_ENABLE": "0", "QUANT_FAST_GENERATION": "all",
                       "QUANT_TENSOR_PARALLEL_GPUS": "on"}.items():
        monkeypatch.setenv(key, value)
    registry = ModelRegistry(max_models=2)
    history = [{"role": "user", "content": "What does the with statement do?"}]
    greedy = GenerationSettings(max_new_tokens=24)
    single = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="cuda:1"))
    sharded = registry.load(LoadRequest(LLAMA, mode="fp32", device_map="tensor_parallel"))
    try:
        path = sharded.report.generation_path
        assert path.startswith("tensor parallel over 2 ranks, each: static cache + torch.compile"), path
        assert "one CUDA graph per step" in path, path
        want = list(stream_chat(single, history, settings=greedy))[-1]
        got = list(stream_chat(sharded, history, settings=greedy))[-1]
        assert got.stats.path == "compiled" and got.text == want.text
    finally:
        workers = list(sharded.group.workers)
        registry.unload_all()
    assert not any(p.is_alive() for p in workers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_all_reduce_runs_inside_the_captured_decode_step_on_one_gpu(tmp_path, monkeypatch, kernel_cache):
    """One GPU, a one-rank group (cpu:gloo,cuda:nccl, as the ranks' own): the row-wise layers' all-reduce
    (RowwiseLinear, what localize makes) traces under torch.compile and is recorded in the decode step's CUDA graph,
    and greedy tokens equal eager generate's. What two GPUs add is the link (the tests above)."""
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from quant.fastpath import prepare_generation_path
    from quant.tensor_parallel import RowwiseLinear, _init

    monkeypatch.setenv("QUANT_FAST_GENERATION", "all")
    path = resolve_location(LLAMA)[0]
    _init(0, 1, str(tmp_path / "rendezvous"), "nccl", 120)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda:0").eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        for layer in model.model.layers:
            layer.self_attn.o_proj.__class__ = RowwiseLinear
            layer.mlp.down_proj.__class__ = RowwiseLinear
        ids = torch.tensor([PROMPTS[2]], device="cuda:0")
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24,
                      do_sample=False)
        with torch.inference_mode():
            expected = model.generate(**kwargs).tolist()
        generation = prepare_generation_path(model, tokenizer, method_refusal=None, kind="causal", context=2048)
        try:
            assert generation.compiled and generation.captured, generation.describe()
            total = ids.shape[1] + 24
            assert generation.compiled_batch_size(1, total) == 1
            got = generation.submit(model.generate, kwargs, 1, total).result().tolist()
            assert got == expected
        finally:
            generation.close()
    finally:
        dist.destroy_process_group()
