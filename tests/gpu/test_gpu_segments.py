"""On CUDA: the segmented compiled decode step (quant/segments.py): a model split over two GPUs by accelerate decodes
through one CUDA graph per device segment and gives the eager path's greedy tokens, with each static cache layer on
its decoder layer's GPU. The cut on one GPU (QUANT_DECODE_SEGMENTS) runs on a one-GPU machine too."""

from __future__ import annotations

import pytest
import torch

from quant.loader import LoadRequest
from tests.conftest import LLAMA
from tests.support.fastpath import PROMPTS, assert_compiled_rows_match, assert_same_up_to_noise, greedy_ids, load

pytestmark = pytest.mark.gpu

two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="needs two CUDA GPUs")


def layer_devices(loaded) -> list[str]:
    return [str(next(layer.parameters()).device) for layer in loaded.model.model.layers]


def check_segments(eager, fast, description: str) -> None:
    assert fast.path.compiled and fast.path.captured, fast.path.describe()
    assert description in fast.report.generation_path and "one CUDA graph per segment" in \
        fast.report.generation_path, fast.report.generation_path
    for prompts in ([PROMPTS[0]], [PROMPTS[1]], PROMPTS[:3] + [PROMPTS[2]]):  # batch 1, and 4 (compiled sizes)
        assert_compiled_rows_match(eager, fast, prompts)
    for loop in fast.path._loops.values():  # every cache layer on its decoder layer's GPU
        assert [str(layer.keys.device) for layer in loop.cache.layers] == layer_devices(fast)


@two_gpus
def test_a_model_split_over_two_gpus_decodes_in_compiled_segments(kernel_cache):
    # embedding and layers 0-1 on cuda:0; layers 2-3, norm, rotary and head on cuda:1 (passed on 2 H200s, 2026-12-01)
    request = LoadRequest(model=LLAMA, mode="bf16", device_map="sequential", max_memory="0=2MiB, 1=1GiB")
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert layer_devices(fast) == ["cuda:0"] * 2 + ["cuda:1"] * 2, fast.report.device_map
    assert eager.report.generation_path == "eager (QUANT_FAST_GENERATION=off)"
    check_segments(eager, fast, "2 segments over cuda:0, cuda:1")
    fast.path.close()


@two_gpus
def test_an_embedding_alone_on_its_gpu_stays_eager_with_the_reason(kernel_cache):
    """The embedding alone on cuda:0: the first graph's capture failed on 2 H200s (it builds the masks from a cache on
    cuda:1), so the plan refuses it before compiling, and says what to change."""
    fast = load(LoadRequest(model=LLAMA, mode="bf16", device_map="sequential", max_memory="0=1MiB, 1=1GiB"), fast=True)
    assert layer_devices(fast) == ["cuda:1"] * 4, fast.report.device_map
    assert not fast.path.compiled
    assert "the input embedding's cuda:0 holds no decoder layer" in fast.report.generation_path


def test_segments_on_one_gpu_give_the_eager_tokens(kernel_cache, monkeypatch):
    """The same graphs per segment, cut on one GPU: what the segments cost without the link between GPUs
    (bench/multi_gpu.py --decode-paths measures it)."""
    monkeypatch.setenv("QUANT_DECODE_SEGMENTS", "3")
    request = LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0")
    eager, fast = load(request, fast=False), load(request, fast=True)
    check_segments(eager, fast, "3 segments over cuda:0")
    fast.path.close()


@two_gpus
@pytest.mark.parametrize("mode", ["nf4", "gptq"])
def test_a_split_4bit_model_dequantizes_each_layer_on_its_own_gpu(mode, kernel_cache, monkeypatch, request):
    """Triton launches on the current GPU (cuda:0 here), so a 4-bit layer on cuda:1 of a split model that dequantizes
    with quant.nf4_dequant or quant.int4_dequant eagerly (every call here: from one row) must launch on its own GPU
    (triton_support.launch_device) and give the one-GPU model's greedy tokens."""
    monkeypatch.setenv("QUANT_NF4_DEQUANTIZE_ROWS", "1")
    monkeypatch.setenv("QUANT_INT4_DEQUANTIZE_ROWS", "1")
    model = LLAMA if mode == "nf4" else str(request.getfixturevalue("gpu_gptq_llama_dir"))
    one = load(LoadRequest(model=model, mode=mode, device_map="cuda:0"), fast=False)
    split = load(LoadRequest(model=model, mode=mode, device_map="sequential", max_memory="0=700KiB, 1=1GiB"),
                 fast=False)
    assert "cuda:1" in layer_devices(split), f"lower max_memory's cuda:0 share: {split.report.device_map}"
    assert torch.cuda.current_device() == 0
    encoded, expected, _ = greedy_ids(one, PROMPTS)
    _, got, _ = greedy_ids(split, PROMPTS)
    for row, (want, have) in enumerate(zip(expected, got)):
        assert_same_up_to_noise(one, encoded, row, want, have)
