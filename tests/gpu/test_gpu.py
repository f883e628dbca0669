"""On a CUDA GPU (device machine): every mode loads on the GPU, reports GPU memory, and gives it all back."""

from __future__ import annotations

import contextlib

import pytest
import torch

from quant.generation import chat_stream
from quant.loader import LoadRequest
from quant.methods import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA
from tests.support.gpu_memory import assert_memory_returned

pytestmark = pytest.mark.gpu


def greedy(loaded, n=12):
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt").to(loaded.device)
    out = loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def load_chat_unload(registry: ModelRegistry, mode: str, layer: str, keep: list | None = None):
    """One cycle for `assert_memory_returned`; `keep` collects the models to leak them on purpose."""
    def cycle() -> None:
        loaded = registry.load(LoadRequest(model=LLAMA, mode=mode, device_map="cuda:0"))
        assert loaded.device.type == "cuda"
        assert loaded.report.gpu_allocated_bytes["cuda:0"] > 0
        assert layer in loaded.report.linear_layers
        assert greedy(loaded).strip()
        if keep is not None:
            keep.append(loaded.model)
        key = loaded.key
        del loaded
        registry.unload(key)

    return cycle


@pytest.mark.parametrize(("mode", "layer"), [("fp16", "Linear"), ("int8", "Linear8bitLt"),
                                             ("nf4", "Dequantizing4bitLinear")])  # quant.nf4_dequant's on a GPU
def test_mode_on_gpu_reports_memory_and_unload_returns_it(mode, layer):
    assert_memory_returned(load_chat_unload(ModelRegistry(max_models=1), mode, layer))


def test_nf4_on_the_gpu_holds_the_model_in_its_compute_dtype():
    """No cast around each 4-bit layer: its compute dtype (bf16 by default) is the rest of the model's dtype."""
    from bitsandbytes.nn import Linear4bit

    registry = ModelRegistry(max_models=1)
    loaded = registry.load(LoadRequest(model=LLAMA, mode="nf4", device_map="cuda:0"))
    layers = [m for m in loaded.model.modules() if isinstance(m, Linear4bit)]  # quant.nf4_dequant's subclass too
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert loaded.model.dtype == torch.bfloat16 and loaded.model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert greedy(loaded)
    registry.unload_all()


def test_the_memory_check_fails_when_a_load_leaks():
    """The check above is not blind: a cycle that keeps each model alive after its unload fails it."""
    kept: list = []
    with pytest.raises(AssertionError, match="MiB more after"):
        assert_memory_returned(load_chat_unload(ModelRegistry(max_models=1), "fp16", "Linear", keep=kept))
    assert len(kept) == 4
    kept.clear()


@pytest.mark.parametrize("backend", ["gptq_torch", "gptq_triton", "gptq_exllama_v2"])
def test_gptq_kernels_on_gpu_agree(gpu_gptq_llama_dir, backend):
    registry = ModelRegistry(max_models=1)
    reference = registry.load(LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                                          options=QuantOptions(gptq_backend="gptq_torch")))
    expected = greedy(reference)
    registry.unload_all()
    del reference
    loaded = registry.load(LoadRequest(model=str(gpu_gptq_llama_dir), mode="gptq", device_map="cuda:0",
                                       options=QuantOptions(gptq_backend=backend)))
    assert loaded.report.quantization["backend"] == backend
    assert greedy(loaded) == expected
    # ExLlamaV2 launches on the default stream: an eager chat on it must not take a stream of its own
    on_default_stream = isinstance(chat_stream(loaded), contextlib.nullcontext)
    assert on_default_stream == (backend == "gptq_exllama_v2"), loaded.default_stream_reason
    registry.unload_all()


def test_a_split_load_is_refused_per_device_before_loading():
    """device_map=auto with max_memory: the memory planner's per-device plan refuses it, before anything loads."""
    from quant.errors import PlacementError

    registry = ModelRegistry()
    with pytest.raises(PlacementError, match="does not fit with device_map=auto: .* left over within GPU 0"):
        registry.load(LoadRequest(model=LLAMA, mode="bf16", device_map="auto", max_memory="0=1500KiB"))
    assert registry.loaded() == []
