"""On a CUDA GPU (device machine): every mode loads on the GPU, reports GPU memory, and gives it all back."""

from __future__ import annotations

import pytest
import torch

from quant.loader import LoadRequest
from quant.modes import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA

pytestmark = pytest.mark.gpu


def greedy(loaded, n=12):
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt").to(loaded.device)
    out = loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize(("mode", "layer"), [("fp16", "Linear"), ("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_mode_on_gpu_reports_memory_and_unload_returns_it(mode, layer):
    registry = ModelRegistry(max_models=1)

    def cycle() -> None:
        loaded = registry.load(LoadRequest(model=LLAMA, mode=mode, device_map="cuda:0"))
        assert loaded.device.type == "cuda"
        assert loaded.report.gpu_allocated_bytes["cuda:0"] > 0
        assert layer in loaded.report.linear_layers
        assert greedy(loaded).strip()
        key = loaded.key
        del loaded
        registry.unload(key)

    before = torch.cuda.memory_allocated()
    cycle()
    # The first generation allocates cuBLAS / bitsandbytes workspaces once per process (32 MiB for cuBLAS).
    after_first = torch.cuda.memory_allocated()
    assert after_first - before <= 40 * 2**20
    for _ in range(3):
        cycle()
    assert torch.cuda.memory_allocated() == after_first  # no leak per load/unload cycle


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
    registry.unload_all()
