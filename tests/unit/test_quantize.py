"""GPTQ beats round-to-nearest; the quantize pipeline saves complete folders with a card; stop and disk-full."""

from __future__ import annotations

import errno
import json
import math
import threading
from pathlib import Path

import pytest

from quant.errors import QuantError
from quant.gptq import GPTQRecipe, QuantizationCancelled, save_atomically
from quant.loader import LoadRequest, load_model
from quant.quantize import CalibrationData, quantize
from tests.conftest import LLAMA, T5
from tests.support.rtn import HELD_OUT, rtn_perplexity




@pytest.mark.parametrize(("method", "bits"), [("gptq", 4), ("gptq", 3), ("awq", 4)])
def test_calibrated_methods_beat_round_to_nearest(method, bits, tmp_path, request):
    """GPTQ (4 and 3 bits) and AWQ (4 bits) on the trained demo model: lower held-out perplexity than rounding each
    group of 128 weights to the nearest of 2**bits levels. AWQ is the session's shared AWQ quantization (64 samples
    of 128 tokens: conftest.awq_llama says why that many)."""
    if method == "awq":
        result = request.getfixturevalue("awq_llama")
    else:
        recipe = GPTQRecipe(bits=bits, group_size=128, sym=False, num_samples=32, seq_len=256)
        result = quantize(LLAMA, method=method, recipe=recipe, out_dir=tmp_path / f"{method}-{bits}")
    rtn = rtn_perplexity(bits, 128)
    assert math.isfinite(result.quantized_perplexity)
    assert result.quantized_perplexity < rtn, (result.quantized_perplexity, rtn)
    assert result.original_perplexity < result.quantized_perplexity  # quantization costs something
    assert result.quantized_bytes < result.original_bytes


def test_quantized_folder_is_complete_with_card_and_report(quantized_llama):
    result = quantized_llama
    out = Path(result.out_dir)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "quantization_report.json"} <= names
    assert not out.with_name(out.name + ".partial").exists()
    card = (out / "README.md").read_text()
    assert "quantized with **gptq**" in card and "| bits | 4 |" in card and "| group_size | 128 |" in card
    assert f"{result.quantized_perplexity:.2f}" in card and "built-in text set 'python-reference'" in card
    assert "gptqmodel" in card and "AutoModelForCausalLM.from_pretrained" in card
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["method"] == "gptq" and report["kernel"] == "Int4PackedLinear"  # the default for 4-bit g128
    # next-token quality against the original (bf16 on the CPU), in the report and the card
    quality = report["quality"]
    assert quality == result.quality and quality["reference"] == "original (bf16)"
    assert (quality["window"], quality["stride"], quality["positions"]) == (512, 512, 4088)
    assert quality["kl_p99"] > quality["kl_mean"] > 0 and 50 < quality["top1_agreement"] < 100
    assert quality["dp_p1"] < 0 and quality["perplexity_ratio"] == pytest.approx(
        result.quantized_perplexity / result.original_perplexity)
    assert quality["verdict"].startswith(f"top-1 agreement {quality['top1_agreement']:.1f}%")
    assert quality["verdict"].endswith("the original")
    assert "Next-token quality against the original" in card and quality["verdict"] in card
    assert f"{quality['kl_mean']:.5f}" in card and "close: top-1 ≥ 95%" in card
    # the built-in calibration leaves out every line of the built-in evaluation text: the card may say held out
    assert report["warnings"] == [] and "held out of calibration" in card
    loaded = load_model(LoadRequest(model=str(out), mode="gptq"))
    assert loaded.report.quantization["bits"] == 4


def test_the_report_and_card_carry_gptqmodels_error_per_module_and_the_tab_plots_it(quantized_llama):
    """GPTQ's loss per module (gptqmodel's quant_log): one entry per quantized linear of every layer, finite and
    non-negative, in the report as in the result; the card names the mean and the worst module; the Quantize tab's
    plot has a row per entry."""
    from transformers import AutoConfig

    from quant.source import resolve_location
    from ui.quantize_tab import LAYER_ERROR_COLUMNS, layer_error_frame, layer_error_plot

    out = Path(quantized_llama.out_dir)
    errors = json.loads((out / "quantization_report.json").read_text())["layer_errors"]
    assert errors == quantized_llama.layer_errors
    layers = AutoConfig.from_pretrained(resolve_location(LLAMA)[0]).num_hidden_layers
    modules = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj"}
    assert sorted((e["layer"], e["module"]) for e in errors) == sorted((i, m) for i in range(layers) for m in modules)
    assert all(isinstance(e["loss"], float) and math.isfinite(e["loss"]) and e["loss"] >= 0 for e in errors)
    assert any(e["loss"] > 0 for e in errors)
    worst = max(errors, key=lambda e: e["loss"])
    mean = sum(e["loss"] for e in errors) / len(errors)
    card = (out / "README.md").read_text()
    assert (f"Quantization error per module (gptqmodel's loss, in `quantization_report.json`): mean loss {mean:.3g} "
            f"over {len(errors)} modules; the worst is layer {worst['layer']} {worst['module']} "
            f"({worst['loss']:.3g}).") in card
    frame = layer_error_frame(errors)
    assert list(frame.columns) == LAYER_ERROR_COLUMNS and len(frame) == len(errors)
    assert layer_error_frame([]).empty  # a method without calibration: an empty plot
    colours = layer_error_plot(errors).color_map  # a colour of its own per module, in the order they were quantized
    assert list(colours) == list(dict.fromkeys(e["module"] for e in errors)) and len(set(colours.values())) == 7


@pytest.mark.parametrize("run", ["quantized_llama_run", "awq_llama_run"])
def test_the_error_per_module_reaches_the_callback_layer_by_layer_while_quantization_runs(run, request):
    """While gptqmodel quantizes (GPTQ, AWQ), `on_layer_errors` gets the per-module error so far, growing by each
    layer's modules (from gptqmodel's running log, read in its layer callback), each report before that layer's
    progress line and all before the save; the last report is the result's list. The session's shared runs."""
    result, events = request.getfixturevalue(run)
    final = result.layer_errors
    reports = [(index, event[1]) for index, event in enumerate(events) if event[0] == "layer_errors"]
    messages = [(index, event[2]) for index, event in enumerate(events) if event[0] == "progress"]
    assert len(reports) >= 4 and reports[-1][1] == final and len(final) == 4 * 7  # 4 layers of 7 linear modules
    assert reports[0][1] == final[:7] and {e["layer"] for e in reports[0][1]} == {0}  # the first layer alone
    lengths = [len(errors) for _, errors in reports]
    assert lengths == sorted(set(lengths)), lengths  # growing, never repeated
    assert all(errors == final[:len(errors)] for _, errors in reports)  # each one a beginning of the result's
    saving = next(index for index, message in messages if message == "Saving")
    assert reports[-1][0] < saving  # all of them while quantization ran, none after
    for layer in range(4):  # layer N's modules are reported before the progress line "Layer N+1/4"
        reported = next(index for index, errors in reports if any(e["layer"] == layer for e in errors))
        line = next(index for index, message in messages if message.startswith(f"Layer {layer + 1}/4 "))
        assert reported < line, (layer, reported, line)


def test_without_gptqmodels_running_log_the_errors_come_once_after_quantization(monkeypatch, tmp_path):
    """The running log is read where gptqmodel calls the layer callback (its ModuleLooper, up the stack): when a
    gptqmodel calls it from elsewhere (here: another thread), there is no live report, quantization is unharmed and
    the whole list still comes once, before the save, as in the result."""
    from gptqmodel.looper.module_looper import ModuleLooper

    from quant.gptq import _running_quant_log, quantize_gptq
    from quant.source import resolve_location
    from tests.conftest import CALIBRATION_TEXT

    assert _running_quant_log() is None  # outside gptqmodel's loop

    def callback_from_another_thread(self, layer_idx, submodule_finalized):
        handler = self._resolve_layer_callback()
        thread = threading.Thread(target=lambda: handler(layer_idx=layer_idx, submodule_finalized=submodule_finalized))
        thread.start()
        thread.join()

    monkeypatch.setattr(ModuleLooper, "callbackup", callback_from_another_thread)
    events = []
    result = quantize_gptq(resolve_location(LLAMA)[0], GPTQRecipe(num_samples=4, seq_len=32),
                           [CALIBRATION_TEXT.read_text()], tmp_path / "q",
                           progress=lambda fraction, message: events.append(message),
                           on_layer_errors=lambda errors: events.append(errors))
    assert len(result.layer_errors) == 4 * 7 and (tmp_path / "q" / "model.safetensors").is_file()
    reports = [event for event in events if isinstance(event, list)]
    assert reports == [result.layer_errors]
    assert events.index(reports[0]) == events.index("Saving") - 1
    assert sum(isinstance(m, str) and m.startswith("Layer ") for m in events) == 4  # the progress still came


def test_evaluation_text_overlapping_the_calibration_is_warned_about(tmp_path):
    from quant.quantize import overlap_warning

    long_lines = [line for line in HELD_OUT.splitlines() if len(line.strip()) >= 40]
    unrelated = "A text about something else entirely, long enough to count.\n" * 3
    assert overlap_warning(HELD_OUT, [unrelated]) is None
    warning = overlap_warning(HELD_OUT, [unrelated, "\n".join(long_lines[:3])])
    assert warning.startswith(f"3 of the evaluation text's {len(set(l.strip() for l in long_lines))} lines")
    # through quantize: pasted calibration that contains held-out text is warned about in the report and card
    result = quantize(LLAMA, method="gptq", recipe=GPTQRecipe(num_samples=4, seq_len=32),
                      calibration=CalibrationData(text=HELD_OUT[:5000]), out_dir=tmp_path / "q", evaluate=False)
    assert len(result.warnings) == 1 and "also appear in the calibration text" in result.warnings[0]
    assert result.warnings[0] in (tmp_path / "q" / "README.md").read_text()
    assert "held out of calibration" not in result.eval_text
    assert json.loads((tmp_path / "q" / "quantization_report.json").read_text())["warnings"] == result.warnings


def test_the_builtin_calibration_text_shares_no_line_with_the_builtin_evaluation_text(quantized_llama):
    from quant.quantize import CalibrationData, overlap_warning

    assert overlap_warning(HELD_OUT, CalibrationData().texts()) is None
    assert quantized_llama.warnings == [] and "held out of calibration" in quantized_llama.eval_text


def test_calibration_from_an_uploaded_jsonl(tmp_path):
    source = tmp_path / "cal.jsonl"
    lines = [json.dumps({"text": p}) for p in HELD_OUT.split("\n\n") if len(p) > 100]
    source.write_text("\n".join(lines))
    result = quantize(LLAMA, method="gptq", recipe=GPTQRecipe(num_samples=8, seq_len=64),
                      calibration=CalibrationData(file=str(source)), out_dir=tmp_path / "q", evaluate=False)
    assert result.calibration == "uploaded file cal.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 5}\n')
    with pytest.raises(QuantError, match="Line 2 of bad.jsonl"):
        quantize(LLAMA, method="gptq", calibration=CalibrationData(file=str(bad)), out_dir=tmp_path / "x")


def test_stop_cancels_without_leaving_a_folder(tmp_path):
    stop = threading.Event()

    def progress(fraction, message):
        if message.startswith("Layer 1/"):
            stop.set()

    with pytest.raises(QuantizationCancelled):
        quantize(LLAMA, method="gptq", recipe=GPTQRecipe(num_samples=8, seq_len=64), out_dir=tmp_path / "q",
                 progress=progress, stop=stop)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_saving_leaves_nothing_presented_as_complete(tmp_path):
    def write(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(QuantError, match="the disk is full. Nothing was kept"):
        save_atomically(write, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("model", "method"), [(LLAMA, "nf4"), (T5, "int8")])
def test_bitsandbytes_quantize_saves_serialized_weights(model, method, tmp_path):
    result = quantize(model, method=method, out_dir=tmp_path / "bnb")
    folder = tmp_path / "bnb"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "bitsandbytes"
    assert result.quantized_bytes < result.original_bytes
    reloaded = load_model(LoadRequest(model=str(folder), mode=method))
    direct = load_model(LoadRequest(model=model, mode=method))
    prompt = "reverse: the value of x" if model == T5 else "The with statement"
    outputs = []
    for loaded in (reloaded, direct):
        inputs = loaded.tokenizer(prompt, return_tensors="pt")
        outputs.append(loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False).tolist())
    assert outputs[0] == outputs[1]
    assert "AutoModelForSeq2SeqLM" in (folder / "README.md").read_text() if model == T5 else True


def test_quantizing_a_quantized_checkpoint_is_refused(gptq_llama_dir):
    with pytest.raises(QuantError, match="already quantized"):
        quantize(str(gptq_llama_dir), method="gptq")


def test_gptq_of_a_seq2seq_model_is_refused_with_the_alternative():
    with pytest.raises(QuantError, match="causal LMs only.*int8 or nf4"):
        quantize(T5, method="gptq")
