"""On a CUDA GPU (device machine): torchao int8 / int4 weight-only and fp8 (weight-only and dynamic) load on the GPU
with the footprint of their bytes per weight, take the compiled decode path (Inductor + one CUDA graph a step) with
eager's tokens, are written to disk and loaded back with the same greedy tokens, and give their memory back. Their
CPU side is tests/unit/test_method_torchao.py."""

from __future__ import annotations

import json

import pytest
import torch

from quant.errors import UnsupportedModeError
from quant.loader import LoadRequest, load_model
from quant.methods import QuantOptions
from quant.registry import ModelRegistry
from tests.conftest import LLAMA
from tests.support.fastpath import check_against_eager
from tests.support.gpu_memory import assert_memory_returned

pytestmark = pytest.mark.gpu

FP8 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="fp8 needs compute capability 8.9+")
MODES = [
    pytest.param("torchao_int8", QuantOptions(), "Linear[Int8Tensor]", id="int8"),
    pytest.param("torchao_int4", QuantOptions(), "Linear[Int4TilePackedTo4dTensor]", id="int4-g128"),
    pytest.param("torchao_int4", QuantOptions(torchao_group_size="256"), "Linear[Int4TilePackedTo4dTensor]",
                 id="int4-g256"),
    pytest.param("fp8", QuantOptions(), "Linear[Float8Tensor]", id="fp8-weight-only", marks=FP8),
    pytest.param("fp8", QuantOptions(fp8_activation="dynamic"), "Linear[Float8Tensor]", id="fp8-dynamic", marks=FP8),
]
PER_LAYER = {
    "torchao_int8": lambda o: lambda n, k: n * k + 5 * n,  # int8; an fp32 scale and an int8 zero point per row
    "torchao_int4": lambda o: lambda n, k: n * k // 2 + 4 * n * k // int(o.torchao_group_size),  # + bf16 scale, zero
    "fp8": lambda o: lambda n, k: n * k + 4 * n,  # fp8 e4m3; an fp32 scale per row
}


def greedy(loaded, n: int = 12) -> list[int]:
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt").to(loaded.device)
    with torch.inference_mode():
        return loaded.model.generate(**inputs, max_new_tokens=n, do_sample=False)[0].tolist()


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A random 2-layer Llama whose widths are multiples of 1024: PyTorch's GPU int4 layout pads input sizes to a
    multiple of 1024 (the demo model's 128 would take 8x), so here every format should hold its theoretical bytes."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from quant.source import resolve_location

    out = tmp_path_factory.mktemp("wide") / "llama"
    tokenizer = AutoTokenizer.from_pretrained(resolve_location(LLAMA)[0])
    config = LlamaConfig(hidden_size=1024, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(("mode", "options", "layer"), MODES)
def test_footprint_on_the_gpu_is_the_theoretical_bytes(wide_llama, mode, options, layer, monkeypatch):
    monkeypatch.setenv("QUANT_FAST_GENERATION", "off")
    bf16 = load_model(LoadRequest(model=str(wide_llama), mode="bf16", device_map="cuda:0"))
    per_layer = PER_LAYER[mode](options)
    theory = sum(b.numel() * b.element_size() for b in bf16.model.buffers())
    for name, module in bf16.model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not bf16.model.get_output_embeddings():
            theory += per_layer(module.out_features, module.in_features)
        else:
            theory += sum(2 * p.numel() for p in module.parameters(recurse=False))
    del bf16
    loaded = load_model(LoadRequest(model=str(wide_llama), mode=mode, options=options, device_map="cuda:0"))
    assert loaded.report.linear_layers == {layer: 14, "Linear": 1}
    assert loaded.report.footprint_bytes == theory
    assert loaded.report.bytes_by_device == {"cuda:0": theory}
    assert greedy(loaded)


def model_for(options: QuantOptions, wide_llama) -> str:
    """The demo model, but for int4 with groups of 256, which its 128-wide layers cannot hold (they stay bf16, with
    the load report's warning): the wide random Llama there, so that the test sees int4 layers."""
    return str(wide_llama) if options.torchao_group_size == "256" else LLAMA


@pytest.mark.parametrize(("mode", "options", "layer"), MODES)
def test_compiled_path_matches_eager(mode, options, layer, wide_llama, kernel_cache):
    loaded = check_against_eager(LoadRequest(model=model_for(options, wide_llama), mode=mode, options=options,
                                             device_map="cuda:0"))
    assert layer in loaded.report.linear_layers, loaded.report.linear_layers


@pytest.mark.parametrize(("mode", "options", "without_settings"), [
    pytest.param("torchao_int8", QuantOptions(), "_weight_int8pack_mm(", id="int8"),
    pytest.param("fp8", QuantOptions(fp8_activation="none"), "extern_kernels.mm(", id="fp8-weight-only", marks=FP8),
])
def test_a_batch1_matmul_reads_the_1_byte_weight_in_one_kernel(mode, options, without_settings):
    """What the method's Inductor settings (quant/methods/torchao.py, GEMV_SETTINGS) are for, on this GPU's torch: a
    one-row matmul on the int8 or fp8 weight is one Triton reduction reading it (no extern matmul, no bf16 copy of the
    weight); with Inductor's defaults int8 goes to `aten._weight_int8pack_mm` and fp8 to a bf16 copy and cuBLAS
    (bench/cuda_codegen_probe.py saw the same on a CPU, torch 2.14). The compiled output matches eager's."""
    from torch._inductor.utils import fresh_cache, run_and_get_code
    from torchao.quantization import quantize_

    from quant.methods import METHODS

    method = METHODS[mode]
    torch.manual_seed(0)
    layer = torch.nn.Linear(4096, 14336, bias=False, dtype=torch.bfloat16, device="cuda")
    torch.nn.init.normal_(layer.weight, std=0.02)
    quantize_(layer, method.torchao_config(options, on_cuda=True))
    x = torch.randn(1, 1, 4096, dtype=torch.bfloat16, device="cuda")
    bf16_copy = "empty_strided_cuda((4096, 14336)"

    def generated(settings):
        compiled = torch.compile(layer, dynamic=False, options=settings or None)
        with fresh_cache(), torch.inference_mode():
            out, sources = run_and_get_code(compiled, x)
        return out, "\n".join(sources)

    with torch.inference_mode():
        want = layer(x)
    got, code = generated(method.compile_options(options))
    assert "triton_red_" in code or "triton_per_" in code
    assert "_weight_int8pack_mm(" not in code and "extern_kernels.mm(" not in code and bf16_copy not in code
    torch.testing.assert_close(got, want, rtol=2e-2, atol=3e-2)
    _, defaults = generated({})
    assert without_settings in defaults
    torch._dynamo.reset()


@pytest.mark.parametrize(("mode", "layer"), [("torchao_int4", "Linear[Int4TilePackedTo4dTensor]"),
                                             pytest.param("fp8", "Linear[Float8Tensor]", marks=FP8),
                                             ("torchao_int8", "Linear[Int8Tensor]")])
def test_quantize_on_the_gpu_and_load_back_gives_the_same_tokens(mode, layer, tmp_path, monkeypatch):
    from quant.quantize import quantize

    monkeypatch.setenv("QUANT_FAST_GENERATION", "off")
    folder = tmp_path / mode
    result = quantize(LLAMA, method=mode, out_dir=folder, evaluate=False)
    assert result.kernel == layer
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    direct = greedy(load_model(LoadRequest(model=LLAMA, mode=mode, device_map="cuda:0")))
    reloaded = load_model(LoadRequest(model=str(folder), mode=mode, device_map="cuda:0"))
    assert reloaded.report.linear_layers[layer] == 28
    assert greedy(reloaded) == direct
    if mode == "torchao_int4":  # the GPU kernel's layout: refused on the CPU, with what works there
        with pytest.raises(UnsupportedModeError, match="no CPU kernel"):
            load_model(LoadRequest(model=str(folder), mode=mode, device_map="cpu"))


@pytest.mark.parametrize(("mode", "options", "layer"), MODES)
def test_unload_gives_the_memory_back(mode, options, layer, wide_llama, monkeypatch):
    monkeypatch.setenv("QUANT_FAST_GENERATION", "off")
    registry = ModelRegistry(max_models=1)

    def cycle() -> None:
        loaded = registry.load(LoadRequest(model=model_for(options, wide_llama), mode=mode, options=options,
                                           device_map="cuda:0"))
        assert layer in loaded.report.linear_layers and greedy(loaded)
        key = loaded.key
        del loaded
        registry.unload(key)

    assert_memory_returned(cycle)
