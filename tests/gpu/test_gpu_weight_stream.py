"""On CUDA: quant.weight_stream's pinned-buffer path gives safetensors' own tensors on the GPU (pieces smaller than a
tensor, several threads each with its own stream and two buffers), and the model class's from_pretrained over that
state dict gives from_pretrained(folder)'s model on the GPU."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from quant.weight_stream import checkpoint_files, read_safetensors

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("threads,buffer_bytes", [(1, 4096), (4, 1000), (8, 1 << 20)])
def test_the_gpu_reader_gives_safetensors_own_tensors(tmp_path, threads, buffer_bytes):
    generator = torch.Generator().manual_seed(1)
    tensors = {f"layer.{i}.weight": torch.randn(97, 61 + i, generator=generator).to(torch.bfloat16) for i in range(12)}
    tensors["ids"] = torch.arange(1000, dtype=torch.int32)
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    expected = load_file(path)

    read = read_safetensors([path], "cuda:0", threads=threads, buffer_bytes=buffer_bytes)

    assert set(read) == set(expected)
    for name, tensor in expected.items():
        assert read[name].device == torch.device("cuda:0")
        assert read[name].dtype == tensor.dtype and torch.equal(read[name].cpu(), tensor), name


def test_from_pretrained_on_the_gpu_read_state_dict_gives_the_folders_model():
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant.source import resolve_location

    folder = resolve_location("demo:tiny-llama-chat")[0]
    config = AutoConfig.from_pretrained(folder)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cuda:0")
    streamed = model_class.from_pretrained(None, config=config, dtype=torch.bfloat16, device_map="cuda:0",
                                           state_dict=read_safetensors(checkpoint_files(folder), "cuda:0"))
    expected, got = reference.state_dict(), streamed.state_dict()
    assert set(expected) == set(got)
    for name in expected:
        assert got[name].device.type == "cuda" and torch.equal(expected[name], got[name]), name


@pytest.mark.parametrize("device_map", ["cuda:0", "auto"])
def test_a_streamed_load_on_the_gpu_gives_the_usual_loads_weights_and_compiled_replies(monkeypatch, caplog,
                                                                                       kernel_cache, device_map):
    """Streamed weights (the default on a GPU) through the registry onto cuda:0 (named, or auto: the demo model fits
    one GPU), compiled as at any load, against transformers' own load (QUANT_STREAM_WEIGHTS=off)."""
    from quant.generation import GenerationSettings, stream_chat
    from quant.loader import LoadRequest
    from tests.support.fastpath import load

    request = LoadRequest(model="demo:tiny-llama-chat", mode="bf16", device_map=device_map)
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "off")
    usual = load(request, fast=True)
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "auto")  # the default
    with caplog.at_level(logging.INFO, logger="quant.loader"):
        streamed = load(request, fast=True)
    assert any(r.getMessage().startswith("Streamed ") and " to cuda:0 in " in r.getMessage() for r in caplog.records)
    assert all(p.device == torch.device("cuda:0") for p in streamed.model.parameters())
    expected, got = usual.model.state_dict(), streamed.model.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[n], got[n]) for n in expected)
    settings = GenerationSettings(max_new_tokens=24)
    history = [{"role": "user", "content": "What is a list?"}]
    replies = [list(stream_chat(m, history, settings=settings))[-1] for m in (usual, streamed)]
    assert replies[1].stats.path == "compiled" and replies[0].text == replies[1].text and replies[0].text.strip()
    for loaded in (usual, streamed):
        loaded.path.close()


def test_a_streamed_load_holds_the_model_once_on_the_gpu(monkeypatch):
    """No second model's worth at the peak: transformers' allocator warm-up is skipped for the streamed load (with it,
    the peak is the streamed weights plus a block their size)."""
    from quant.loader import LoadRequest, _from_pretrained, prepare, streamed_weights_device

    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "auto")
    prepared = prepare(LoadRequest(model="demo:tiny-llama-chat", mode="bf16", device_map="cuda:0"))
    assert streamed_weights_device(prepared.source, prepared.kwargs, "bf16") == "cuda:0"  # the default streams here
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model, _, read = _from_pretrained(prepared.source, prepared.kwargs, "bf16")
    assert read.startswith("streamed by ") and " to cuda:0: " in read
    weights = sum({t.data_ptr(): t.nbytes for t in model.state_dict().values()}.values())
    assert next(model.parameters()).device == torch.device("cuda:0")
    assert torch.cuda.memory_allocated() - before >= weights
    assert torch.cuda.max_memory_allocated() - before < 1.5 * weights, (torch.cuda.max_memory_allocated(), weights)
