"""On a CUDA GPU: HQQ and AWQ load with each kernel, report the footprint of their bits, and the compiled decode
loop (static cache, CUDA graph) gives the eager path's greedy tokens with every kernel that claims to trace
(HQQMethod/AWQMethod.TRACEABLE_BACKENDS); AWQ quantizes on the GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quant.hqq import layer_bytes
from quant.loader import LoadRequest
from quant.methods import QuantOptions
from tests.conftest import CALIBRATION_TEXT, LLAMA
from tests.support.fastpath import (
    PROMPTS,
    assert_same_up_to_noise,
    check_against_eager,
    greedy_ids,
    load,
)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_awq_llama_dir(tmp_path_factory) -> Path:
    """The demo Llama quantized to 4-bit AWQ (g128) on the GPU."""
    from quant.gptq import GPTQRecipe, quantize_awq
    from quant.source import resolve_location

    out = tmp_path_factory.mktemp("awq-gpu") / "tiny-awq"
    return quantize_awq(resolve_location(LLAMA)[0], GPTQRecipe(num_samples=32, seq_len=128),
                        [CALIBRATION_TEXT.read_text()], out, device="cuda:0").out_dir


@pytest.mark.parametrize(("bits", "group_size", "backend", "layer"), [
    (4, 64, "hqq_int4pack", "Int4PackedLinear"), (8, 64, "hqq_torch", "HQQDequantLinear"),
    (3, 64, "hqq_torch", "HQQDequantLinear"),
    pytest.param(4, 64, "hqq_gemlite", None, marks=pytest.mark.xfail(
        reason="gemlite 0.6 gave NaN logits on the demo model in 2 of 3 H200 sessions (2026-12-02: once compiled, once "
               "eager); the load report says so", strict=False))])  # 2-bit gemlite: refused (it faulted)
def test_hqq_on_the_gpu_compiles_to_the_eager_tokens(bits, group_size, backend, layer, kernel_cache):
    request = LoadRequest(model=LLAMA, mode="hqq", device_map="cuda:0", options=QuantOptions(
        hqq_bits=bits, hqq_group_size=group_size, hqq_backend=backend))
    eager = load(request, fast=False)
    assert eager.report.quantization["backend"] == backend and eager.report.quantization["layers"] == 28
    print(backend, bits, group_size, eager.report.linear_layers, eager.report.footprint_bytes,
          eager.report.quantization["quantize_seconds"])
    if layer:
        assert eager.report.linear_layers[layer] == 28
        quantized = sum(layer_bytes(m.out_features, m.in_features, bits, group_size)
                        for m in eager.model.modules() if type(m).__name__ == layer)
        rest = sum(t.numel() * t.element_size() for m in eager.model.modules() if type(m).__name__ != layer
                   for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)))
        assert eager.report.footprint_bytes == quantized + rest  # codes + a 16-bit scale and zero per group
    eager.path.close()
    check_against_eager(request)


def test_hqq_int4pack_gives_hqq_torchs_tokens(kernel_cache):
    """The 4-bit HQQ weights on tinygemm against the same weights dequantized per call (both eager, bf16)."""
    common = dict(model=LLAMA, mode="hqq", device_map="cuda:0")
    reference = load(LoadRequest(**common, options=QuantOptions(hqq_backend="hqq_torch", compute_dtype="bf16")),
                     fast=False)
    repacked = load(LoadRequest(**common, options=QuantOptions(hqq_backend="hqq_int4pack")), fast=False)
    for prompts in ([PROMPTS[0]], PROMPTS):
        encoded, expected, _ = greedy_ids(reference, prompts)
        _, got, _ = greedy_ids(repacked, prompts)
        for row, (want, have) in enumerate(zip(expected, got)):
            assert_same_up_to_noise(reference, encoded, row, want, have)


@pytest.mark.parametrize("backend", ["awq_int4pack", "awq_torch", "awq_marlin"])
def test_awq_on_the_gpu_compiles_to_the_eager_tokens(gpu_awq_llama_dir, backend, kernel_cache):
    request = LoadRequest(model=str(gpu_awq_llama_dir), mode="awq", device_map="cuda:0",
                          options=QuantOptions(awq_backend=backend))
    check_against_eager(request)


def test_awq_int4pack_gives_the_torch_kernels_tokens(gpu_awq_llama_dir, kernel_cache):
    folder = str(gpu_awq_llama_dir)
    reference = load(LoadRequest(model=folder, mode="awq", device_map="cuda:0",
                                 options=QuantOptions(awq_backend="awq_torch", compute_dtype="bf16")), fast=False)
    repacked = load(LoadRequest(model=folder, mode="awq", device_map="cuda:0",
                                options=QuantOptions(awq_backend="awq_int4pack")), fast=False)
    assert repacked.report.linear_layers["Int4PackedLinear"] == 28 and not repacked.report.warnings
    assert repacked.model.dtype == torch.bfloat16 and repacked.report.dtype == "bfloat16"  # no fp16 <-> bf16 casts
    for prompts in ([PROMPTS[0]], PROMPTS):
        encoded, expected, _ = greedy_ids(reference, prompts)
        _, got, _ = greedy_ids(repacked, prompts)
        for row, (want, have) in enumerate(zip(expected, got)):
            assert_same_up_to_noise(reference, encoded, row, want, have)


@pytest.mark.parametrize("mode", ["nf4", "fp4"])
def test_the_triton_4bit_kernel_gives_bitsandbytes_tokens_eager_and_compiled(mode, kernel_cache):
    """bnb4_kernel=triton (quant.gemv4bit): every 4-bit layer converted, the same weights as bitsandbytes' own kernel
    (greedy tokens equal up to near ties, eager against eager), and its compiled decode loop against its eager path."""
    common = dict(model=LLAMA, mode=mode, device_map="cuda:0")
    reference = load(LoadRequest(**common), fast=False)
    request = LoadRequest(**common, options=QuantOptions(bnb4_kernel="triton"))
    triton = load(request, fast=False)
    assert triton.report.linear_layers.get("Gemv4bitLinear") == 28 and triton.report.quantization["backend"] == "triton"
    for prompts in ([PROMPTS[0]], PROMPTS):
        encoded, expected, _ = greedy_ids(reference, prompts)
        _, got, _ = greedy_ids(triton, prompts)
        for row, (want, have) in enumerate(zip(expected, got)):
            assert_same_up_to_noise(reference, encoded, row, want, have)
    triton.path.close()
    check_against_eager(request)
