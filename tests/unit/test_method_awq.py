"""AWQ (mode awq, Quantize method awq) on the CPU: the Quantize tab's pipeline writes a checkpoint with its card, it
loads with each CPU kernel (footprint, layer classes), chats and batches, runs in a Compare beside HQQ, goes to the
Hub and comes back with the same greedy tokens; stop and the refusals. (AWQ beating round-to-nearest:
tests/test_quantize.py.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from quant.errors import QuantError, UnsupportedModeError
from quant.generation import GenerationSettings, stream_chat
from quant.gptq import GPTQRecipe, QuantizationCancelled
from quant.loader import LoadRequest, load_model
from quant.methods import QuantOptions, check_mode
from quant.quantize import quantize
from quant.source import resolve_location
from tests.conftest import LLAMA, T5
from tests.support.checkpoints import PROMPTS, assert_batch_matches_one_by_one, block_and_rest, safetensors_parameter_count
from tests.support.hub_server import WRITER


def greedy(loaded, new_tokens: int = 12) -> list[int]:
    inputs = loaded.tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.inference_mode():
        return loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)[0].tolist()


def load(folder, backend: str | None = None):
    return load_model(LoadRequest(model=str(folder), mode="awq", options=QuantOptions(awq_backend=backend)))


def test_the_quantize_pipeline_writes_an_awq_checkpoint_with_its_card(awq_llama):
    out = Path(awq_llama.out_dir)
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (saved["quant_method"], saved["bits"], saved["group_size"], saved["zero_point"], saved["version"]) == (
        "awq", 4, 128, True, "gemm")
    assert awq_llama.method == "awq" and awq_llama.kernel == "Int4PackedLinear"  # the default kernel for 4-bit g128
    assert awq_llama.recipe == {"bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
                                "num_samples": 64, "seq_len": 128}
    assert awq_llama.quantized_bytes < awq_llama.original_bytes
    assert 0 < awq_llama.quality["kl_mean"] < 0.05 and awq_llama.quality["top1_agreement"] > 85
    card = (out / "README.md").read_text()
    assert "quantized with **awq**" in card and "- awq" in card and "- 4-bit" in card
    assert "| zero_point | True |" in card and "| version | gemm |" in card and "| num_samples | 64 |" in card
    assert "gptqmodel" in card and f"{awq_llama.quantized_perplexity:.2f}" in card
    assert awq_llama.versions.get("gptqmodel")
    # AWQ's loss per module: the output error of its scale search, shared by the modules scaled together (q/k/v,
    # gate/up); None where gptqmodel applied no scale ("not applicable": o_proj, when v_proj's output and o_proj's
    # input differ in shape, as with grouped-query attention, or when gptqmodel skips it)
    errors = json.loads((out / "quantization_report.json").read_text())["layer_errors"]
    assert errors == awq_llama.layer_errors and {e["layer"] for e in errors} == {0, 1, 2, 3}
    assert len(errors) == 4 * 7 and all(e["loss"] is None or e["loss"] >= 0 for e in errors)
    scaled = [e for e in errors if e["loss"] is not None]
    assert {e["module"] for e in scaled} >= {"self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj"}
    assert f"over {len(scaled)} modules; the worst is layer" in card


@pytest.mark.parametrize(("backend", "layer", "per_weight"), [
    (None, "Int4PackedLinear", 0.5 + 4 / 128),  # bf16 scale and zero per group (tinygemm's layout)
    ("awq_torch", "AwqTorchLinear", 0.5 + 2 / 128 + 0.5 / 128),  # the checkpoint's: 16-bit scale, 4-bit zero code
])
def test_each_cpu_kernel_loads_with_its_footprint_and_chats(awq_llama, backend, layer, per_weight):
    loaded = load(awq_llama.out_dir, backend)
    report = loaded.report
    assert report.linear_layers == {layer: 28, "Linear": 1}
    assert report.quantization["backend"] == (backend or "awq_int4pack") and not report.warnings
    folder = Path(resolve_location(LLAMA)[0])
    assert report.parameters == safetensors_parameter_count(folder)
    block, rest = block_and_rest(folder)
    assert report.footprint_bytes == block * per_weight + 2 * rest + 128  # + the rotary fp32 buffer
    settings = GenerationSettings(max_new_tokens=10)
    reply = list(stream_chat(loaded, [{"role": "user", "content": "What is a class?"}], settings=settings))[-1]
    assert reply.text.strip()
    assert_batch_matches_one_by_one(loaded, PROMPTS, settings)


def test_the_int4_kernel_computes_what_the_torch_kernel_computes(awq_llama):
    reference, repacked = load(awq_llama.out_dir, "awq_torch"), load(awq_llama.out_dir)
    ids = reference.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.inference_mode():
        expected, got = reference.model(ids).logits.float(), repacked.model(ids).logits.float()
    assert (got - expected).norm() / expected.norm() < 0.03
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_compare_runs_hqq_and_awq_beside_bf16(awq_llama):
    from quant.compare import compare, parse_mode_specs
    from quant.registry import ModelRegistry

    specs = parse_mode_specs(LLAMA, f"bf16,hqq,awq:{awq_llama.out_dir}")
    registry = ModelRegistry(max_models=1)
    rows = list(compare(LLAMA, specs, registry=registry, prompts=PROMPTS[:2], batch_size=2, new_tokens=4,
                        answer_tokens=6))
    assert registry.loaded() == []
    by = {row.label.split(":")[0]: row for row in rows}
    assert [row.error for row in rows] == [None, None, None]
    for mode in ("hqq", "awq"):
        row = by[mode]
        # the blocks' linear layers shrink 3.6x; embeddings and the head (40% of this small model) stay 16-bit
        assert row.footprint_bytes < 0.6 * by["bf16"].footprint_bytes and row.decode_tokens_per_s > 0
        assert row.batch_tokens_per_s > 0 and all(row.answers) and row.reference == "bf16"
        assert 0 < row.kl_mean < 0.05 and row.top1_agreement > 85 and 1 < row.perplexity_ratio < 1.05
        assert row.verdict.startswith(f"top-1 agreement {row.top1_agreement:.1f}%")
    assert "Int4PackedLinear" in by["hqq"].linear_layers and "Int4PackedLinear" in by["awq"].linear_layers
    assert by["awq"].perplexity == pytest.approx(awq_llama.quantized_perplexity, rel=1e-3)


def test_push_download_and_load_gives_the_same_tokens(hub, awq_llama, tmp_path):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, AwqConfig

    from quant.hub import push_folder

    folder = Path(awq_llama.out_dir)
    before = greedy(load(folder))
    result = push_folder(folder, "alice/tiny-awq", token=WRITER, private=True)
    assert result.url.endswith("alice/tiny-awq")
    downloaded = snapshot_download("alice/tiny-awq", token=WRITER, cache_dir=tmp_path / "dl")
    assert greedy(load(downloaded)) == before
    # straight through transformers, as the card tells users, with gptqmodel's torch kernel: the same tokens as
    # this tool's load with that kernel
    reference = load(downloaded, "awq_torch")
    model = AutoModelForCausalLM.from_pretrained("alice/tiny-awq", token=WRITER, device_map="cpu",
                                                 dtype=torch.bfloat16,
                                                 quantization_config=AwqConfig(bits=4, backend="torch_awq"))
    inputs = reference.tokenizer(PROMPTS[0], return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist() == greedy(reference)
    card = (Path(downloaded) / "README.md").read_text()
    assert 'model_id = "alice/tiny-awq"' in card and "quantized with **awq**" in card
    assert hub.token_leaks(WRITER) == []


def test_stop_cancels_without_leaving_a_folder(tmp_path):
    stop = threading.Event()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("Layer 1/"):
            stop.set()

    with pytest.raises(QuantizationCancelled):
        quantize(LLAMA, method="awq", recipe=GPTQRecipe(num_samples=4, seq_len=32), out_dir=tmp_path / "q",
                 progress=progress, stop=stop)
    assert list(tmp_path.iterdir()) == []
    assert any(m.startswith("Quantizing 4 layers with AWQ on 4 samples") for m in seen)


@pytest.mark.parametrize(("recipe", "model", "message"), [
    (GPTQRecipe(bits=3), LLAMA, "AWQ here writes 4-bit checkpoints"),
    (GPTQRecipe(group_size=256), LLAMA, "AWQ group size 256 is not one of 32, 64, 128"),
    (GPTQRecipe(), T5, "AWQ quantization here supports causal LMs only"),
])
def test_quantizing_what_awq_cannot_write_is_refused_before_any_work(recipe, model, message, tmp_path):
    with pytest.raises(QuantError, match=message):
        quantize(model, method="awq", recipe=recipe, out_dir=tmp_path / "q")
    assert list(tmp_path.iterdir()) == []


SAVED = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@pytest.mark.parametrize(("saved", "options", "message"), [
    (SAVED, QuantOptions(awq_backend="awq_marlin"), "The AWQ kernel awq_marlin needs a CUDA GPU"),
    ({**SAVED, "version": "gemv"}, QuantOptions(), "in the gemv layout; this tool loads AWQ's GEMM layout"),
    ({**SAVED, "bits": 8}, QuantOptions(awq_backend="awq_int4pack"), "int4 kernel runs 4-bit AWQ"),
    (None, QuantOptions(), "Mode awq loads a checkpoint that is already AWQ-quantized"),
])
def test_what_cannot_load_here_is_refused_before_loading(saved, options, message):
    with pytest.raises(UnsupportedModeError, match=message):
        check_mode("awq", options, checkpoint_quantization=saved, on_cuda=False)


def test_an_awq_checkpoint_in_another_mode_is_refused_with_the_mode_that_loads_it():
    with pytest.raises(UnsupportedModeError, match=r"already quantized with AWQ \(4-bit\).*Load it in mode awq"):
        check_mode("nf4", QuantOptions(), checkpoint_quantization=SAVED, on_cuda=False)
    assert check_mode("awq", QuantOptions(), checkpoint_quantization={**SAVED, "bits": 8}, on_cuda=False) == []


def test_a_model_held_in_fp16_follows_its_int4_layers_into_bf16_keeping_its_float32_buffers(awq_llama):
    """On a GPU transformers loads every AWQ model in fp16, while the int4 kernel computes in bf16 (each layer cast
    its input and output): once every layer is repacked, the model's fp16 weights follow into bf16 (here an fp16
    load on the CPU, as the GPU's); its float32 rotary table stays float32, as a bf16 load keeps it, and the
    next-token choices are the torch kernel's. Without `hold_in` (an operator's compute dtype) the model stays fp16."""
    from quant.methods.gptq import repack_for_int4_kernel

    def fp16_torch_kernel():
        return load_model(LoadRequest(model=str(awq_llama.out_dir), mode="awq",
                                      options=QuantOptions(awq_backend="awq_torch", compute_dtype="fp16")))

    reference, held = fp16_torch_kernel(), fp16_torch_kernel()
    assert held.model.dtype == torch.float16
    assert held.model.model.rotary_emb.inv_freq.dtype == torch.float32
    tied = held.model.lm_head.weight is held.model.model.embed_tokens.weight
    assert repack_for_int4_kernel(held.model, lambda *_: None, "AWQ", "awq_torch", hold_in=torch.bfloat16) == []
    layers = [m for m in held.model.modules() if type(m).__name__ == "Int4PackedLinear"]
    assert len(layers) == 28 and held.model.dtype == torch.bfloat16 and held.model.config.dtype == torch.bfloat16
    assert {p.dtype for p in held.model.parameters()} == {torch.bfloat16}
    assert held.model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert (held.model.lm_head.weight is held.model.model.embed_tokens.weight) == tied  # a tied head stays tied
    ids = reference.tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    with torch.inference_mode():
        expected, got = reference.model(ids).logits.float(), held.model(ids).logits.float()
    assert (got - expected).norm() / expected.norm() < 0.03
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    kept = fp16_torch_kernel()
    repack_for_int4_kernel(kept.model, lambda *_: None, "AWQ", "awq_torch")
    assert kept.model.dtype == torch.float16
