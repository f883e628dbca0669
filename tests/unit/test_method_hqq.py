"""HQQ (mode hqq): each bit width loads on the CPU with the footprint of its bits and scales, its layers compute
hqq's own dequantized weights, it chats and batches, takes its options from the command line, and what cannot run
here is refused before anything loads. (It runs in a Compare in tests/test_method_awq.py, beside AWQ.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quant.errors import QuantError, UnsupportedModeError
from quant.generation import GenerationSettings, stream_chat
from quant.hqq import HQQDequantLinear, bytes_per_weight, layer_bytes, quantize_layer
from quant.int4pack import Int4PackedLinear
from quant.loader import LoadRequest, load_model
from quant.methods import METHODS, QuantOptions, check_mode
from quant.source import resolve_location
from tests.conftest import LLAMA
from tests.support.checkpoints import PROMPTS, assert_batch_matches_one_by_one, block_and_rest, safetensors_parameter_count

@pytest.fixture(scope="module")
def hqq4():
    return load_model(LoadRequest(model=LLAMA, mode="hqq"))


@pytest.mark.parametrize(("bits", "group_size", "layer"), [
    (4, 64, "Int4PackedLinear"), (8, 64, "HQQDequantLinear"), (3, 64, "HQQDequantLinear"),
    (2, 32, "HQQDequantLinear")])
def test_each_bit_width_loads_with_the_footprint_of_its_bits(bits, group_size, layer, hqq4):
    folder = Path(resolve_location(LLAMA)[0])
    loaded = hqq4 if (bits, group_size) == (4, 64) else load_model(
        LoadRequest(model=LLAMA, mode="hqq", options=QuantOptions(hqq_bits=bits, hqq_group_size=group_size)))
    report = loaded.report
    assert report.linear_layers == {layer: 28, "Linear": 1}  # 4 blocks x 7 projections; the output head stays
    assert report.parameters == safetensors_parameter_count(folder)
    assert report.dtype == "bfloat16"
    block, rest = block_and_rest(folder)
    buffers = 128  # the rotary embedding's fp32 inv_freq
    # The code (3-bit: ten to an int32, hqq pads each layer's rows to a multiple of ten) plus a 16-bit scale and zero
    # per group, exactly; the rest in bf16. tinygemm keeps the same: a bf16 scale and zero per group.
    quantized = sum(layer_bytes(m.out_features, m.in_features, bits, group_size) for m in loaded.model.modules()
                    if type(m).__name__ == layer)
    assert report.footprint_bytes == quantized + 2 * rest + buffers
    assert quantized == pytest.approx(block * bytes_per_weight(bits, group_size), rel=0.03 if bits == 3 else 0)
    # What the method object says a loaded weight takes (the bench's theory), not the 16-bit peak it plans room for.
    method = METHODS["hqq"]
    options = loaded.request.options
    assert method.bytes_per_weight(None) == 2.0
    assert quantized == pytest.approx(block * method.loaded_bytes_per_weight(None, options), rel=0.03 if bits == 3
                                      else 0)
    quantization = report.quantization
    assert (quantization["quant_method"], quantization["nbits"], quantization["group_size"]) == ("hqq", bits,
                                                                                                   group_size)
    assert quantization["backend"] == ("hqq_int4pack" if bits == 4 else "hqq_torch") and quantization["layers"] == 28
    assert quantization["bytes_per_weight"] == bytes_per_weight(bits, group_size)
    assert report.generation_path.startswith("eager (CPU")
    inputs = loaded.tokenizer(PROMPTS[0], return_tensors="pt")
    out = loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert loaded.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
def test_layers_compute_hqqs_own_dequantized_weight(bits):
    """The same weight through hqq's HQQLinear (its PyTorch forward) and through this tool's layers: the same
    dequantized weight (HQQDequantLinear), the same output up to bf16 rounding (tinygemm: up to its bf16 zero)."""
    from hqq.core.quantize import HQQBackend, HQQLinear, hqq_base_quant_config

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96, bias=True, dtype=torch.bfloat16)
    x = torch.randn(5, 256, dtype=torch.bfloat16)
    reference = HQQLinear(linear, hqq_base_quant_config(bits, 64), del_orig=False, compute_dtype=torch.bfloat16,
                          device="cpu")
    HQQLinear.set_backend(HQQBackend.PYTORCH_FORWARD)
    expected = reference(x).float()
    backends = ["hqq_torch", "hqq_int4pack"] if bits == 4 else ["hqq_torch"]
    for backend in backends:
        layer, _ = quantize_layer(linear, bits, 64, backend, torch.bfloat16)
        assert isinstance(layer, Int4PackedLinear if backend == "hqq_int4pack" else HQQDequantLinear)
        if backend == "hqq_torch":
            assert torch.equal(layer.dequantize(), reference.dequantize())
        got = layer(x).float()
        tolerance = 5e-3 if backend == "hqq_torch" else 2e-2  # bf16 rounding of the bias sum; tinygemm's bf16 zero
        assert (got - expected).norm() / expected.norm() < tolerance, backend


def test_hqq_4bit_beats_round_to_nearest_and_chats_and_batches(hqq4):
    """HQQ's solver for the zero points: lower perplexity than min-max rounding at the same bits and group size."""
    from quant.metrics import perplexity
    from tests.support.rtn import HELD_OUT, rtn_perplexity

    assert perplexity(hqq4, HELD_OUT, max_tokens=4096).value < rtn_perplexity(4, 64)
    settings = GenerationSettings(max_new_tokens=10)
    reply = list(stream_chat(hqq4, [{"role": "user", "content": "What is a generator?"}], settings=settings))[-1]
    assert reply.text.strip() and reply.stats.new_tokens > 0
    assert_batch_matches_one_by_one(hqq4, PROMPTS, settings)


def test_cli_flags_come_from_the_options(capsys):
    from quant.cli import main  # in this process: the same code as `python -m quant`

    status = main(["load", LLAMA, "--mode", "hqq", "--hqq-bits", "8", "--hqq-group-size", "128", "--json"])
    out = capsys.readouterr().out
    assert status == 0
    report = json.loads(out)
    assert report["quantization"]["nbits"] == 8 and report["quantization"]["group_size"] == 128
    assert report["linear_layers"]["HQQDequantLinear"] == 28
    assert main(["load", LLAMA, "--mode", "hqq", "--hqq-backend", "hqq_gemlite"]) == 2
    assert "error: The hqq_gemlite kernel needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (QuantOptions(hqq_backend="hqq_gemlite"), "hqq_gemlite kernel needs a CUDA GPU"),
    (QuantOptions(hqq_bits=8, hqq_backend="hqq_int4pack"), "int4 kernel runs 4-bit"),
    (QuantOptions(hqq_bits=5), "Unknown hqq bits '5'. Use one of 8, 4, 3, 2"),
    (QuantOptions(hqq_group_size=48), "Unknown hqq group size '48'. Use one of 32, 64, 128, 256"),
])
def test_what_cannot_run_here_is_refused_before_loading(options, message):
    with pytest.raises(UnsupportedModeError, match=message):
        check_mode("hqq", options, checkpoint_quantization=None, on_cuda=False)


def test_gemlite_2_bit_is_refused_on_a_gpu_with_the_reason():
    """gemlite's 2-bit kernel faulted on an H200 (an illegal memory access ends the process's CUDA context); checked
    as the load on a GPU checks it (on_cuda=True), before anything is loaded."""
    with pytest.raises(UnsupportedModeError, match="runs 8- and 4-bit HQQ here; not 2-bit") as refused:
        check_mode("hqq", QuantOptions(hqq_bits=2, hqq_group_size=32, hqq_backend="hqq_gemlite"),
                   checkpoint_quantization=None, on_cuda=True)
    assert "hqq_torch" in refused.value.hint


def test_hqq_checkpoints_are_not_written_and_say_why():
    from quant.quantize import quantize

    with pytest.raises(QuantError, match="transformers 5.23 cannot load them back.*Load the original model in mode"):
        quantize(LLAMA, method="hqq")


def test_t5_loads_with_its_float32_wo_left_as_transformers_quantizers_leave_it():
    """T5's feed-forward reads `self.wo.weight.dtype`: HQQ leaves the modules of `_keep_in_fp32_modules` unconverted,
    as transformers' quantizers do (a replaced `wo` failed at the first forward), and the report says why."""
    from tests.conftest import T5

    loaded = load_model(LoadRequest(model=T5, mode="hqq"))
    wo = [name for name, module in loaded.model.named_modules() if name.endswith("DenseReluDense.wo")]
    assert wo and all(type(loaded.model.get_submodule(name)) is torch.nn.Linear for name in wo)
    assert loaded.report.linear_layers.get("Int4PackedLinear", 0) > 0
    kept = {group["reason"]: group for group in loaded.report.kept}
    assert kept["keep_fp32_unquantized"]["modules"] == len(wo)
    inputs = loaded.tokenizer("translate English to German: hello", return_tensors="pt")
    out = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > 1


def test_gemlite_is_loaded_on_request_with_its_known_faults_in_the_report(monkeypatch):
    """4-bit gemlite on a GPU passes the checks, and the load report says what the GPU tests saw (NaN logits) and
    that it was slower, so that no one takes it for the faster kernel."""
    from quant.methods import hqq as hqq_method

    monkeypatch.setattr(hqq_method, "is_installed", lambda module: True)
    warnings = check_mode("hqq", QuantOptions(hqq_bits=4, hqq_group_size=64, hqq_backend="hqq_gemlite"),
                          checkpoint_quantization=None, on_cuda=True)
    assert hqq_method.GEMLITE_WARNING in warnings and "NaN logits" in hqq_method.GEMLITE_WARNING
    other = QuantOptions(hqq_bits=4, hqq_group_size=64, hqq_backend="hqq_torch")  # fp16: no bf16 check on the CPU
    assert hqq_method.GEMLITE_WARNING not in check_mode("hqq", other, checkpoint_quantization=None, on_cuda=True)
