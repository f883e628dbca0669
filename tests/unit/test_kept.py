"""The load report names the modules a load left unquantized or wider than its mode's dtype, and why (quant.kept):
T5's float32 `wo` projections (`_keep_in_fp32_modules`), the output head, the user's skip list, layers a method did
not convert. Built from T5's and Llama's real configs (tests/support/architectures.py) and the demo Llama, on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quant.loader import LoadRequest, load_weights
from quant.methods import QuantOptions
from tests.conftest import LLAMA
from tests.support.architectures import FAMILIES, build, family_config


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("kept")
    return {name: build(name, base / name) for name in ("t5", "llama")}


def _wo_shape() -> tuple[int, int]:
    """(count, parameters each) of T5's `wo` projections, from the family's config: one per encoder and decoder
    block, d_ff inputs and d_model outputs."""
    config = family_config(FAMILIES["t5"])
    return config.num_layers + config.num_decoder_layers, config.d_ff * config.d_model


def _plain_linear(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if type(module) is torch.nn.Linear]


@pytest.mark.parametrize(("mode", "reason", "dtype", "width"), [
    # int8 loads in fp16 on the CPU: transformers upcasts `wo` to float32, and bitsandbytes leaves it unquantized
    ("int8", "keep_fp32", "float32", 4),
    # nf4 loads in bf16 on the CPU: no upcast (fp16 loads only), but bitsandbytes still leaves `wo` unquantized
    ("nf4", "keep_fp32_unquantized", "bfloat16", 2)])
def test_t5_report_names_its_float32_wo_with_count_and_bytes(families, mode, reason, dtype, width):
    loaded = load_weights(LoadRequest(str(families["t5"]), mode=mode))
    report = loaded.report
    count, each = _wo_shape()
    [wo] = [g for g in report.kept if g["reason"] == reason]
    assert (wo["source"], wo["attribute"], wo["patterns"]) == ("T5ForConditionalGeneration", "_keep_in_fp32_modules",
                                                               ["wo"])
    assert (wo["modules"], wo["parameters"], wo["bytes"], wo["dtype"]) == (count, count * each, count * each * width,
                                                                           dtype)
    wo_modules = [n for n in _plain_linear(loaded.model) if n.endswith(".wo")]
    assert len(wo_modules) == count and all(loaded.model.get_submodule(n).weight.dtype == getattr(torch, dtype)
                                            for n in wo_modules)
    # Every linear layer left as it was is in one line: the wo projections and the output head, nothing else.
    assert sorted(g["reason"] for g in report.kept) == sorted([reason, "head_tied"])
    assert sum(g["modules"] for g in report.kept) == len(_plain_linear(loaded.model)) == count + 1
    text = report.to_text()
    if mode == "int8":
        assert (f"not int8         kept in float32 by T5ForConditionalGeneration (_keep_in_fp32_modules: wo): "
                f"{count} modules, 32.8K parameters, 128 KiB in float32 (e.g. encoder.block.{{0, 1}}.layer.1."
                "DenseReluDense.wo, decoder.block.{0, 1}.layer.2.DenseReluDense.wo)") in text
    else:
        assert ("left unquantized because T5ForConditionalGeneration lists them in _keep_in_fp32_modules (wo)"
                in text)
    korean = report.to_text("ko")
    assert f"{mode} 아님" in korean and "T5ForConditionalGeneration의 _keep_in_fp32_modules: wo" in korean
    assert f"모듈 {count}개" in korean
    json.dumps(report.to_dict())  # the CLI's --json and the Compare JSON carry the records as they are


def test_t5_in_fp16_says_what_stays_wider_and_bf16_has_nothing_to_say(families):
    count, each = _wo_shape()
    fp16 = load_weights(LoadRequest(str(families["t5"]), mode="fp16")).report
    [wo] = fp16.kept  # a plain dtype quantizes nothing: only what is wider than fp16 is listed
    assert (wo["reason"], wo["modules"], wo["bytes"], wo["dtype"], wo["mode_dtype"]) == (
        "keep_fp32", count, count * each * 4, "float32", "float16")
    assert "not fp16         kept in float32 by T5ForConditionalGeneration" in fp16.to_text()
    bf16 = load_weights(LoadRequest(str(families["t5"]), mode="bf16")).report
    assert bf16.kept == [] and "not bf16" not in bf16.to_text()


def test_llama_reports_only_its_output_head_and_what_the_user_skipped():
    nf4 = load_weights(LoadRequest(LLAMA, mode="nf4"))
    [head] = nf4.report.kept
    config = nf4.model.config
    assert (head["reason"], head["modules"], head["parameters"], head["examples"]) == (
        "head", 1, config.vocab_size * config.hidden_size, "lm_head")
    assert "not nf4          the output head, which nf4 leaves unquantized: 1 module, 262K parameters" in \
        nf4.report.to_text()

    int8 = load_weights(LoadRequest(LLAMA, mode="int8", options=QuantOptions(int8_skip_modules=("down_proj",))))
    skipped = next(g for g in int8.report.kept if g["reason"] == "skip_user")
    layers = config.num_hidden_layers
    assert (skipped["modules"], skipped["patterns"], skipped["examples"]) == (
        layers, ["down_proj"], f"model.layers.{{0-{layers - 1}}}.mlp.down_proj")
    assert skipped["parameters"] == layers * config.intermediate_size * config.hidden_size


def test_layers_hqq_could_not_convert_are_a_line_of_their_own(families):
    """HQQ group size 128 on Llama's shape shrunk to hidden 64: the layers taking 64 inputs stay in bf16."""
    loaded = load_weights(LoadRequest(str(families["llama"]), mode="hqq",
                                      options=QuantOptions(hqq_group_size=128)))
    left = [n for n in _plain_linear(loaded.model) if n != "lm_head"]
    assert left and all(loaded.model.get_submodule(n).in_features % 128 for n in left)
    groups = {g["reason"]: g for g in loaded.report.kept}
    assert set(groups) == {"not_converted", "head_tied"}
    assert groups["not_converted"]["modules"] == len(left)
    assert "linear layers hqq did not convert" in loaded.report.to_text()


def test_the_visitors_language_picks_the_reports():
    import gradio as gr
    from starlette.requests import Request

    from ui.common import language_of

    def request(header: str | None) -> gr.Request:
        headers = [(b"accept-language", header.encode())] if header is not None else []
        return gr.Request(request=Request({"type": "http", "headers": headers}))

    assert language_of(request("ko-KR,ko;q=0.9,en-US;q=0.8,en;q=0.7")) == "ko"
    assert language_of(request("en-US,en;q=0.9,ko;q=0.8")) == "en"
    assert language_of(request("fr-FR,ko;q=0.5,en;q=0.4")) == "ko"
    assert language_of(request("en;q=0.2, ko;q=0.8")) == "ko"
    assert language_of(request(None)) == language_of(None) == "en"
