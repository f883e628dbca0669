"""quant.weight_stream reads safetensors files into the tensors safetensors itself gives, in pieces smaller than a
tensor and over several threads, and refuses a malformed or truncated file with a message. The GPU path (pinned
buffers, one stream per thread) is tested in tests/gpu/test_gpu_weight_stream.py."""

import json
import logging
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from quant.errors import QuantError
from quant.weight_stream import read_safetensors, safetensors_entries


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "big.bf16": torch.randn(300, 77, generator=generator).to(torch.bfloat16),
        "odd.f32": torch.randn(13, generator=generator),
        "ids.i64": torch.arange(-5, 40, dtype=torch.int64).reshape(5, 9),
        "mask.bool": torch.rand(7, 3, generator=generator) > 0.5,
        "bytes.u8": torch.randint(0, 255, (33,), dtype=torch.uint8, generator=generator),
        "fp8": torch.randn(16, 4, generator=generator).to(torch.float8_e4m3fn),
        "empty.f16": torch.empty(0, 8, dtype=torch.float16),
        "scalar.f16": torch.tensor(3.5, dtype=torch.float16),
    }


@pytest.mark.parametrize("threads,buffer_bytes", [(1, 1 << 20), (3, 1000), (8, 64)])
def test_the_reader_gives_safetensors_own_tensors(tmp_path, threads, buffer_bytes):
    first, second = tmp_path / "model-00001.safetensors", tmp_path / "model-00002.safetensors"
    tensors = _tensors()
    names = list(tensors)
    save_file({n: tensors[n] for n in names[:4]}, first, metadata={"format": "pt"})
    save_file({n: tensors[n] for n in names[4:]}, second)
    expected = {**load_file(first), **load_file(second)}

    read = read_safetensors([first, second], "cpu", threads=threads, buffer_bytes=buffer_bytes)

    assert set(read) == set(expected)
    for name, tensor in expected.items():
        assert read[name].dtype == tensor.dtype and read[name].shape == tensor.shape, name
        assert torch.equal(read[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    # each tensor its own storage: a model that replaces one (fused projections) frees it
    pointers = [t.untyped_storage().data_ptr() for t in read.values() if t.numel()]
    assert len(set(pointers)) == len(pointers)


def test_the_entries_are_where_safetensors_put_them(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(3, 2), "b": torch.zeros(5, dtype=torch.int32)}, path)
    entries = {e.name: e for e in safetensors_entries(path)}
    raw = path.read_bytes()
    assert entries["a"].shape == (3, 2) and entries["a"].dtype == torch.float32
    assert entries["a"].end - entries["a"].start == 24 and entries["b"].end - entries["b"].start == 20
    assert struct.unpack("<6f", raw[entries["a"].start:entries["a"].end]) == (1.0,) * 6


def test_a_cut_short_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(QuantError, match="m.safetensors.*(cut short|end of the file)"):
        read_safetensors([path], "cpu")


def _with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("content,message", [
    (b"\x01\x00", "shorter than its header"),
    (struct.pack("<Q", 10**9) + b"{}", "header says"),
    (struct.pack("<Q", 5) + b"nope!", "not JSON"),
    (_with_header({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "dtype 'Q4_K'"),
    (_with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4)), "do not match its shape"),
])
def test_a_malformed_file_is_refused_with_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(QuantError, match=message):
        read_safetensors([path], "cpu")


def test_a_tensor_in_two_files_is_refused(tmp_path):
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    with pytest.raises(QuantError, match="w is in two checkpoint files"):
        read_safetensors([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], "cpu")


def test_from_pretrained_on_the_read_state_dict_gives_the_folders_model():
    """What bench/weight_load.py times as the streamed load: the model class's own loading (dtype, tied embeddings)
    over the reader's state dict gives the tensors from_pretrained(folder) gives."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant.source import resolve_location
    from quant.weight_stream import checkpoint_files

    folder = resolve_location("demo:tiny-llama-chat")[0]
    config = AutoConfig.from_pretrained(folder)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu")
    streamed = model_class.from_pretrained(None, config=config, dtype=torch.bfloat16, device_map="cpu",
                                           state_dict=read_safetensors(checkpoint_files(folder), "cpu", threads=2))
    expected, got = reference.state_dict(), streamed.state_dict()
    assert set(expected) == set(got)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    assert got["lm_head.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("model,mode", [("demo:tiny-llama-chat", "bf16"), ("demo:tiny-t5", "bf16")])
def test_a_streamed_load_gives_the_usual_loads_model_and_replies(monkeypatch, caplog, model, mode):
    """QUANT_STREAM_WEIGHTS=on through quant.loader: the same weights, generation config, name and greedy reply as
    transformers' own loading of the folder."""
    from quant.loader import LoadRequest, load_model, prepare, streamed_weights_device

    request = LoadRequest(model=model, mode=mode, device_map="cpu")
    usual = load_model(request)
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    prepared = prepare(request)
    assert streamed_weights_device(prepared.source, prepared.kwargs, mode) == "cpu"
    with caplog.at_level(logging.INFO, logger="quant.loader"):
        streamed = load_model(request)
    assert any(r.getMessage().startswith("Streamed ") and r.getMessage().endswith(" s") for r in caplog.records)

    expected, got = usual.model.state_dict(), streamed.model.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[n], got[n]) for n in expected)
    assert streamed.model.generation_config.to_dict() == usual.model.generation_config.to_dict()
    assert streamed.model.name_or_path == usual.model.name_or_path
    assert streamed.report.dtype == usual.report.dtype and streamed.report.parameters == usual.report.parameters
    assert usual.report.weights_read == "transformers' from_pretrained"
    read = streamed.report.weights_read
    assert read.startswith("streamed by ") and " threads to cpu: " in read
    assert f"(weights {streamed.report.weights_read})" in streamed.report.to_text()
    inputs = usual.tokenizer("The with statement is used to", return_tensors="pt")
    replies = [m.model.generate(**inputs, max_new_tokens=10, do_sample=False) for m in (usual, streamed)]
    assert torch.equal(replies[0], replies[1])


@pytest.mark.parametrize("setting", ["", "auto", "off"])
def test_by_default_and_when_off_a_cpu_load_is_not_streamed(monkeypatch, setting):
    """auto (the default) streams onto GPUs only: on the CPU transformers' mmap load is lazy."""
    from quant.loader import LoadRequest, prepare, streamed_weights_device

    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", setting)
    prepared = prepare(LoadRequest(model="demo:tiny-llama-chat", mode="bf16", device_map="cpu"))
    assert streamed_weights_device(prepared.source, prepared.kwargs, "bf16") is None
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    assert streamed_weights_device(prepared.source, prepared.kwargs, "bf16") == "cpu"


def test_an_unknown_stream_weights_setting_is_refused_by_name(monkeypatch):
    from quant.errors import QuantError
    from quant.loader import LoadRequest, prepare

    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "sometimes")
    with pytest.raises(QuantError, match="QUANT_STREAM_WEIGHTS='sometimes' is not one of auto, on, off"):
        prepare(LoadRequest(model="demo:tiny-llama-chat", mode="bf16", device_map="cpu"))


@pytest.mark.parametrize("mode", ["nf4", "int8", "fp32", "fp16"])
def test_quantizing_and_converting_loads_are_not_streamed(monkeypatch, mode):
    """On-the-fly quantization takes transformers' own path (its quantizer sees each weight as it loads), and so does
    a load in another dtype than the stored one (the demo model is stored in bf16)."""
    from quant.loader import LoadRequest, prepare, streamed_weights_device

    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    prepared = prepare(LoadRequest(model="demo:tiny-llama-chat", mode=mode, device_map="cpu"))
    assert streamed_weights_device(prepared.source, prepared.kwargs, mode) is None


def test_a_prequantized_checkpoint_is_not_streamed(monkeypatch, gptq_llama_dir):
    from quant.loader import LoadRequest, prepare, streamed_weights_device

    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    prepared = prepare(LoadRequest(model=str(gptq_llama_dir), mode="gptq", device_map="cpu"))
    assert streamed_weights_device(prepared.source, prepared.kwargs, "gptq") is None


def test_the_checkpoint_files_are_the_index_shards_not_every_safetensors_file(tmp_path):
    from quant.weight_stream import checkpoint_files

    assert checkpoint_files(tmp_path) == []
    (tmp_path / "consolidated.safetensors").write_bytes(b"")
    assert checkpoint_files(tmp_path) == []
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert checkpoint_files(tmp_path) == [tmp_path / "model.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    assert checkpoint_files(tmp_path) == [tmp_path / "model-00001-of-00002.safetensors",
                                          tmp_path / "model-00002-of-00002.safetensors"]


def test_a_checkpoint_whose_own_code_runs_is_not_streamed(monkeypatch, tmp_path):
    """With trust_remote_code on, a checkpoint's auto_map class loads it: the streamed path, which builds
    transformers' built-in class, steps aside; with it off (the built-in class either way) it streams."""
    import shutil

    from quant.loader import LoadRequest, prepare, streamed_weights_device
    from quant.source import resolve_location

    folder = tmp_path / "llama-with-code"
    shutil.copytree(resolve_location("demo:tiny-llama-chat")[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    request = LoadRequest(model=str(folder), mode="bf16", device_map="cpu")
    prepared = prepare(request)
    assert streamed_weights_device(prepared.source, prepared.kwargs, "bf16") == "cpu"
    monkeypatch.setenv("QUANT_TRUST_REMOTE_CODE", "on")
    prepared = prepare(request)
    assert streamed_weights_device(prepared.source, prepared.kwargs, "bf16") is None


def test_a_cut_short_checkpoint_fails_the_streamed_load_with_a_message(monkeypatch, tmp_path):
    """Through quant.loader: the reader's refusal reaches the user as a QuantError naming the file, not a traceback
    from deep in a thread."""
    import shutil

    from quant.loader import LoadRequest, load_model
    from quant.source import resolve_location

    folder = tmp_path / "cut-short"
    shutil.copytree(resolve_location("demo:tiny-llama-chat")[0], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    with pytest.raises(QuantError, match="model.safetensors"):
        load_model(LoadRequest(model=str(folder), mode="bf16", device_map="cpu"))


def test_a_streamed_load_skips_transformers_allocator_warmup_in_its_own_thread_only(monkeypatch):
    """from_pretrained warms the GPU's caching allocator with a block the model's size: next to streamed weights that
    would be the model twice. The streamed load's thread skips it; a load in another thread meanwhile keeps it."""
    import threading

    import transformers.modeling_utils as modeling_utils

    from quant.loader import LoadRequest, _allocator_warmup_switch, _no_allocator_warmup, load_model

    calls = []
    monkeypatch.setattr(modeling_utils, "caching_allocator_warmup", lambda *args: calls.append(args[1]))
    assert _allocator_warmup_switch()
    request = LoadRequest(model="demo:tiny-llama-chat", mode="bf16", device_map="cpu")
    load_model(request)  # transformers' own load: through the warm-up
    assert len(calls) == 1 and set(calls[0].values()) == {"cpu"}
    monkeypatch.setenv("QUANT_STREAM_WEIGHTS", "on")
    load_model(request)  # streamed: skipped
    assert len(calls) == 1
    other = []
    with _no_allocator_warmup():
        thread = threading.Thread(target=lambda: (modeling_utils.caching_allocator_warmup(None, {"a": "cpu"}, None),
                                                  other.append(len(calls))))
        thread.start()
        thread.join()
        modeling_utils.caching_allocator_warmup(None, {"b": "cpu"}, None)
    assert other == [2] and len(calls) == 2
    modeling_utils.caching_allocator_warmup(None, {"c": "cpu"}, None)
    assert len(calls) == 3
