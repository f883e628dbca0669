"""Every mode that runs on the CPU loads through `quant`, reports what it loaded, and generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quant.loader import LoadRequest, load_model
from quant.source import resolve_location
from tests.conftest import LLAMA, T5
from tests.support.checkpoints import safetensors_parameter_count

PROMPT = "The with statement is used to"


def greedy(loaded, prompt: str = PROMPT, new_tokens: int = 12) -> str:
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    start = 0 if loaded.source.kind == "seq2seq" else inputs["input_ids"].shape[1]
    return loaded.tokenizer.decode(out[0, start:], skip_special_tokens=True)


@pytest.mark.parametrize(
    ("mode", "layer_type"),
    [("fp32", "Linear"), ("bf16", "Linear"), ("int8", "Linear8bitLt"), ("nf4", "Linear4bit"), ("fp4", "Linear4bit")],
)
def test_causal_mode_loads_and_generates(mode, layer_type):
    loaded = load_model(LoadRequest(model=LLAMA, mode=mode))
    report = loaded.report
    assert report.kind == "causal" and report.mode == mode
    # Every linear layer but the output head is quantized in the bnb modes.
    assert report.linear_layers[layer_type] == (29 if layer_type == "Linear" else 28)
    assert report.parameters == safetensors_parameter_count(Path(resolve_location(LLAMA)[0]))
    text = greedy(loaded)
    assert len(text.strip()) > 0
    assert report.load_seconds > 0 and report.ram_after_bytes > 0
    assert report.device_map == {"": "cpu"}


def test_trained_demo_model_continues_text_sensibly():
    """The demo model is trained: a greedy continuation of reference-like text uses real words."""
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    text = greedy(loaded, "The \"with\" statement is used to wrap the execution of a block", 16)
    words = [w.strip(".,\"'()") for w in text.split()]
    english = {"the", "a", "of", "to", "is", "with", "and", "in", "block", "statement", "be", "that", "by"}
    assert sum(w.lower() in english for w in words) >= 2, text


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_seq2seq_t5_loads_and_generates(mode):
    loaded = load_model(LoadRequest(model=T5, mode=mode))
    assert loaded.report.kind == "seq2seq"
    assert loaded.report.architecture == "T5ForConditionalGeneration"
    assert greedy(loaded, "reverse: the value of the expression").strip()


def test_footprints_follow_bytes_per_weight():
    """bf16 takes 2 bytes per weight; nf4 and int8 shrink exactly the quantized linear layers."""
    folder = Path(resolve_location(LLAMA)[0])
    n_params = safetensors_parameter_count(folder)
    bf16 = load_model(LoadRequest(model=LLAMA, mode="bf16")).report
    buffers = 1024  # the rotary embedding's inv_freq buffers (fp32) count in the footprint too
    assert 2 * n_params <= bf16.footprint_bytes <= 2 * n_params + buffers

    config = json.loads((folder / "config.json").read_text())
    h, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    block_linear = layers * (h * h * 2 + h * kv * 2 + 3 * h * ff)  # q,o + k,v + gate,up,down
    rest = n_params - block_linear

    nf4 = load_model(LoadRequest(model=LLAMA, mode="nf4")).report
    # 4 bits a weight plus an absmax per 64 weights, counted though bitsandbytes keeps it beside the parameters: at
    # least 8 bits (double quant), at most 32 (bitsandbytes' CPU kernel keeps it in bf16, un-nested).
    assert (0.5 + 1 / 64) * block_linear + 2 * rest <= nf4.footprint_bytes
    assert nf4.footprint_bytes <= (0.5 + 4 / 64) * block_linear + 2 * rest + buffers
    int8 = load_model(LoadRequest(model=LLAMA, mode="int8")).report
    # int8 weights plus one fp32 scale per output row (counted, though kept beside the parameters); the rest in fp16.
    rows = layers * (2 * h + 2 * kv + 2 * ff + h)  # q,o + k,v + gate,up + down
    assert block_linear + 4 * rows + 2 * rest <= int8.footprint_bytes <= block_linear + 4 * rows + 2 * rest + buffers
    assert bf16.footprint_bytes > int8.footprint_bytes > nf4.footprint_bytes


def test_gptq_checkpoint_loads_with_the_default_kernel(gptq_llama_dir):
    loaded = load_model(LoadRequest(model=str(gptq_llama_dir), mode="gptq"))
    report = loaded.report
    # 4-bit, group size 128: PyTorch's int4 kernel (quant.int4pack) is the default for it.
    assert report.quantization["bits"] == 4 and report.quantization["backend"] == "gptq_int4pack"
    assert report.linear_layers == {"Int4PackedLinear": 28, "Linear": 1}
    assert report.parameters == safetensors_parameter_count(Path(resolve_location(LLAMA)[0]))
    assert greedy(loaded).strip()


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bnb_save_and_reload_round_trip(mode, tmp_path):
    first = load_model(LoadRequest(model=LLAMA, mode=mode))
    expected = greedy(first)
    first.model.save_pretrained(tmp_path)
    first.tokenizer.save_pretrained(tmp_path)
    again = load_model(LoadRequest(model=str(tmp_path), mode=mode))
    assert again.source.checkpoint_quant_method == "bitsandbytes"
    assert greedy(again) == expected
    assert again.report.footprint_bytes == first.report.footprint_bytes


def test_token_is_not_kept_with_the_loaded_model():
    loaded = load_model(LoadRequest(model=LLAMA, mode="bf16", token="hf_secretsecretsecret"))
    assert loaded.request.token is None
    assert "hf_secret" not in repr(loaded.request) and "hf_secret" not in json.dumps(loaded.report.to_dict())


def test_shipped_code_that_is_not_run_is_named_in_a_warning(tmp_path):
    """A known architecture with auto_map loads with transformers' own class; the report says the shipped code was
    not run, so nobody mistakes the result for the authors' model."""
    import shutil

    folder = tmp_path / "llama-with-code"
    shutil.copytree(resolve_location(LLAMA)[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(LoadRequest(model=str(folder), mode="fp32"))
    assert any("ships its own modelling code" in w and "LlamaForCausalLM" in w for w in loaded.report.warnings)
    plain = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    assert not any("modelling code" in w for w in plain.report.warnings)
