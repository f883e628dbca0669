"""The method objects (quant.methods) and the load lifecycle: what every method must answer, what the forms make of
typed values, and that loads for measuring never compile and always let go of the model."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import weakref

import pytest
import torch

from quant.errors import QuantError, UnsupportedModeError
from quant.forms import LoadForm, add_option_arguments
from quant.loader import LoadRequest, loaded_for_measuring
from quant.methods import ALL_OPTIONS, METHODS, Mode, QuantOptions, check_mode, load_time_methods, quantize_methods
from quant.metrics import perplexity
from quant.ui_strings import EN, KO
from tests.conftest import LLAMA

QUANT_FIELDS = {f.name for f in dataclasses.fields(QuantOptions)}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_answers_what_the_app_asks(name):
    method = METHODS[name]
    assert method.name == name == Mode(name).value and method.description
    assert EN.get(f"mode.{name}") and KO.get(f"mode.{name}"), "a mode needs its line in both languages"
    for option in method.options:
        assert option.field in QUANT_FIELDS
        assert option.parse(option.default) == option.default or option.kind == "names"
    assert method.bytes_per_weight(None) > 0 and method.rest_bytes_per_weight > 0
    if method.quantize_label:
        assert EN.get(f"quantize.method.{name}") and KO.get(f"quantize.method.{name}")
        assert method.card_tags({"bits": 4}) and method.card_requirements is not None
    assert (name in load_time_methods()) != method.needs_quantized_checkpoint
    assert (name in quantize_methods()) == bool(method.quantize_label)


def test_every_option_has_one_cli_flag_and_a_typed_value_reaches_the_request():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    for name in ("mode", "revision", "device_map", "max_memory", "attn_implementation"):
        parser.add_argument(f"--{name}")
    add_option_arguments(parser)  # argparse refuses a flag defined twice: one flag per option
    args = parser.parse_args([LLAMA, "--int8-threshold", "4.5", "--skip-modules", "lm_head, mlp", "--no-double-quant"])
    assert {o.field for o in ALL_OPTIONS} <= set(vars(args))
    args.mode = "int8"
    request = LoadForm.from_args(args).to_request()
    assert request.options.int8_threshold == 4.5 and request.options.int8_skip_modules == ("lm_head", "mlp")
    args.mode = "nf4"
    assert LoadForm.from_args(args).to_request().options.bnb4_double_quant is False


def test_a_form_reads_only_the_chosen_methods_options_and_names_a_bad_value():
    typed = {"model": LLAMA, "mode": "nf4", "int8_threshold": "not a number", "gptq_backend": "gptq_nonsense",
             "bnb4_compute_dtype": "fp16"}
    request = LoadForm.from_values(typed).to_request()  # int8's and GPTQ's fields are not nf4's: not read
    assert request.options == QuantOptions(bnb4_compute_dtype="fp16")
    with pytest.raises(QuantError, match="outlier threshold must be a number"):
        LoadForm.from_values({**typed, "mode": "int8"}).to_request()
    with pytest.raises(UnsupportedModeError, match="Unknown 4-bit compute dtype 'int2'.*bf16"):
        LoadForm.from_values({**typed, "bnb4_compute_dtype": "int2"}).to_request()
    automatic = LoadForm.from_values({**typed, "mode": "gptq", "gptq_backend": ""}).to_request()
    assert automatic.options.gptq_backend is None  # "automatic": the checkpoint decides at load time


@pytest.mark.parametrize(("saved", "mode", "expected"), [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, "int8",
     "already quantized with bitsandbytes \\(nf4\\); it cannot be loaded as int8.*mode nf4"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "bf16", "bitsandbytes \\(int8\\).*mode int8"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "nf4", "GPTQ \\(4-bit\\).*mode gptq"),
    ({"quant_method": "a-format-from-2030"}, "bf16", "a-format-from-2030, which this tool does not load"),
])
def test_a_quantized_checkpoint_loads_only_in_the_mode_that_reads_its_format(saved, mode, expected):
    with pytest.raises(UnsupportedModeError, match=expected):
        check_mode(mode, QuantOptions(), checkpoint_quantization=saved, on_cuda=False)


def test_a_load_for_measuring_compiles_nothing_and_lets_go_of_the_model(monkeypatch):
    """Quantize's checks and perplexity load models that never generate a chat: even where the operator asks for
    compiled generation everywhere (QUANT_FAST_GENERATION=all, CPU included), they compile nothing, and when the block
    ends the model is gone."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("QUANT_FAST_GENERATION", "all")
    frames_before = dict(counters["frames"])
    with loaded_for_measuring(LoadRequest(model=LLAMA, mode="fp32")) as loaded:
        assert not loaded.path.compiled and "not for generation" in loaded.path.reason
        assert perplexity(loaded, "def add(a, b):\n    return a + b\n" * 8, max_tokens=128).value > 1
        model = weakref.ref(loaded.model)
    del loaded
    gc.collect()
    assert model() is None
    assert dict(counters["frames"]) == frames_before


@pytest.mark.parametrize(("mode", "options", "on_cuda", "expected"), [
    ("nf4", QuantOptions(), True, torch.bfloat16),
    ("fp4", QuantOptions(bnb4_compute_dtype="fp16"), True, torch.float16),
    ("nf4", QuantOptions(bnb4_compute_dtype="fp32"), True, torch.float16),  # fp32 compute: the rest stays 16-bit
    ("nf4", QuantOptions(bnb4_compute_dtype="fp16"), False, torch.bfloat16),  # the CPU keeps bf16
    ("nf4", QuantOptions(bnb4_compute_dtype="fp16", compute_dtype="fp32"), True, torch.float32),  # the operator's own
    ("int8", QuantOptions(), True, torch.float16)])
def test_a_4bit_model_on_a_gpu_is_held_in_its_16bit_compute_dtype(mode, options, on_cuda, expected):
    """bitsandbytes' 4-bit layers cast their input to the compute dtype and the output back on every call: on a GPU
    the rest of the model is held in that dtype, so the casts are no-ops."""
    assert METHODS[mode].dtype(options, on_cuda) == expected


def test_only_kernels_that_launch_on_the_default_stream_keep_an_eager_chat_there():
    """ExLlamaV2's kernels launch on the legacy default stream whatever stream PyTorch is on (gptqmodel_ext's
    q_gemm.cu; seen on an H200, bench/results/int4-gemv-kernels-uncaptured.md), unordered with PyTorch's non-blocking
    streams: an eager chat on such a model stays on the default stream (quant.generation.chat_stream); every other
    kernel any method offers lets it take a stream of its own."""
    kept = {}
    for name, method in METHODS.items():
        option = next((o for o in method.options if o.field == method.backend_option), None)
        for backend in [value for value, _ in option.choices if value] if option else [None]:
            options = QuantOptions(**{option.field: backend}) if option else QuantOptions()
            reason = method.default_stream_reason(options)
            if reason:
                kept[(name, backend)] = reason
    assert kept == {("gptq", "gptq_exllama_v2"): "the gptq_exllama_v2 kernel launches on the GPU's default stream"}
    request = LoadRequest(model=LLAMA, mode="gptq", options=QuantOptions(gptq_backend="gptq_exllama_v2"))
    assert request.method.default_stream_reason(request.options) == kept[("gptq", "gptq_exllama_v2")]
