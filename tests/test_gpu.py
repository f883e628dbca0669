"""On a CUDA GPU (device machine): every mode loads on the GPU, reports GPU memory, and gives it all back."""

from __future__ import annotations

import pytest
import torch

from quant.loader import LoadRequest
from quant.methods import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA

pytestmark = pytest.mark.gpu


def greedy(loaded, n=12):
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt").to(loaded.device)
    out = loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False)
    return loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def free_per_process_caches() -> None:
    """Free what libraries allocate once per process and keep for its life, whatever was loaded:
    - cuBLAS's workspaces, one per (handle, stream), sized by PyTorch for the GPU (32 MiB each on an H100; 96 MiB in
      all stayed after a first cycle on an H200);
    - bitsandbytes' 4-bit code tables (16 floats per quant type and device, cached at the first 4-bit matmul) and
      its 8-bit dynamic map (256 floats, cached on the device of the first blockwise quantization: nf4's double
      quantization).
    All through the libraries' own handles on them; where a future release renames one, its bytes stay and the
    check below names them (on an H200: 1,024 bytes left, the dynamic map, before it was freed here too)."""
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    try:
        from bitsandbytes import functional
        from bitsandbytes.backends.utils import _code_4bit_cache
    except ImportError:
        return
    _code_4bit_cache.clear()
    functional.name2qmap.clear()


def assert_memory_returned(cycle, repeats: int = 3) -> None:
    """Run `cycle` (a load, a generation, an unload) 1 + `repeats` times; fail if GPU memory stays allocated.

    What libraries allocate once per process is freed through them (`free_per_process_caches`) before and after,
    rather than allowed for with one card's figure: every other byte must come back, and later cycles must
    allocate nothing more than the first.
    """
    free_per_process_caches()
    before = torch.cuda.memory_allocated()
    cycle()
    after_first = torch.cuda.memory_allocated()
    for _ in range(repeats):
        cycle()
    leaked_per_cycle = torch.cuda.memory_allocated() - after_first
    assert leaked_per_cycle == 0, f"{leaked_per_cycle / 2**20:.2f} MiB more after {repeats} more cycles"
    free_per_process_caches()
    left = torch.cuda.memory_allocated() - before
    assert left == 0, (f"{left:,} bytes still allocated after the cycles, beyond the libraries' per-process caches "
                       f"({(after_first - before) / 2**20:.1f} MiB stayed after the first cycle)")


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


@pytest.mark.parametrize(("mode", "layer"), [("fp16", "Linear"), ("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_mode_on_gpu_reports_memory_and_unload_returns_it(mode, layer):
    assert_memory_returned(load_chat_unload(ModelRegistry(max_models=1), mode, layer))


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
    registry.unload_all()
