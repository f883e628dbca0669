"""Model families users load, each built from its real config with shrunk sizes (tests/support/architectures.py): GPTQ
quantize, load, chat and batch for every causal family (or its clear refusal), and every family in fp32, bf16, int8
and nf4 through quant.loader and quant.generation, on the CPU.

Greedy results are compared with transformers' own `generate` on the same loaded model (one sequence, no beams):
what quant.generation returns must be what the model computes, whatever the family's generation defaults say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from quant.batching import run_batch
from quant.errors import QuantError, UnsupportedModeError
from quant.generation import (
    GenerationSettings,
    build_chat_prompt,
    generate_batch,
    stop_token_ids,
    stream_chat,
)
from quant.gptq import GPTQRecipe, save_atomically
from quant.int4pack import Int4PackedLinear
from quant.loader import LoadRequest, load_model
from quant.methods import QuantOptions
from quant.quantize import quantize
from tests.support.architectures import CAUSAL, FAMILIES, build, build_all

RECIPE = GPTQRecipe(bits=4, group_size=32, num_samples=8, seq_len=64)
NEW_TOKENS = 8
PROMPTS = ["The with statement is used to", "def fibonacci(n):"]
REFUSED_GPTQ = {"mixtral": "GPTQ of MixtralForCausalLM is refused"}
"""Causal families whose GPTQ is refused before any work, and what the refusal says."""
pytestmark = pytest.mark.usefixtures("eager_dequantization")


@pytest.fixture(scope="session")
def families(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def gptq_outputs(tmp_path_factory, families):
    """quantize(family) through the Quantize tab's pipeline (GPTQ 4-bit g32, 8 x 64 tokens, no perplexity), once
    per family: {family: QuantizeResult or the QuantError raised}."""
    root = tmp_path_factory.mktemp("gptq")
    done: dict = {}

    def get(family: str):
        if family not in done:
            try:
                done[family] = quantize(str(families[family]), method="gptq", recipe=RECIPE,
                                        out_dir=root / family, evaluate=False)
            except QuantError as exc:
                done[family] = exc
        return done[family]

    get.root = root
    return get


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The model's linear layers (nn.Linear and GPT-2's Conv1D) but the output head."""
    head = model.get_output_embeddings()
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head}


def direct_greedy(loaded, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
    """transformers' generate on the same model: greedy, one sequence, the same stop tokens, and no n-gram blocking
    (the settings' 0, which quant passes over a checkpoint's own default: bart-large-cnn ships 3)."""
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    max_new_tokens=new_tokens, do_sample=False, num_beams=1, no_repeat_ngram_size=0,
                                    temperature=None, top_p=None, top_k=None,
                                    eos_token_id=stop_token_ids(loaded), pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, 1 if loaded.source.kind == "seq2seq" else input_ids.shape[1]:].tolist()  # seq2seq: decoder start


def assert_chat_turn_is_greedy(loaded) -> None:
    """One chat turn through stream_chat equals transformers' greedy generate on the chat-template prompt."""
    history = [{"role": "user", "content": "What does the with statement do?"}]
    chunks = list(stream_chat(loaded, history, settings=GenerationSettings(max_new_tokens=NEW_TOKENS)))
    last = chunks[-1]
    assert last.done and 1 <= last.stats.new_tokens <= NEW_TOKENS
    prompt = build_chat_prompt(loaded, history, None, NEW_TOKENS)
    tokens = direct_greedy(loaded, prompt.input_ids, NEW_TOKENS)
    assert last.stats.new_tokens == len(tokens)
    assert last.text == loaded.tokenizer.decode(tokens, skip_special_tokens=True)


def assert_batch_runs(loaded) -> None:
    rows = list(run_batch(loaded, list(enumerate(PROMPTS, 1)), GenerationSettings(max_new_tokens=NEW_TOKENS)))[-1].rows
    assert [r.error for r in rows] == ["", ""]
    assert all(1 <= r.new_tokens <= NEW_TOKENS for r in rows)


# --- GPTQ: quantize, load, chat, batch ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [f for f in CAUSAL if f not in REFUSED_GPTQ])
def test_gptq_quantizes_loads_chats_and_batches(family, families, gptq_outputs):
    result = gptq_outputs(family)
    assert not isinstance(result, Exception), result
    out = Path(result.out_dir)
    assert (out / "README.md").is_file() and result.kernel == "Int4PackedLinear"

    original = load_model(LoadRequest(str(families[family]), mode="fp32"))
    loaded = load_model(LoadRequest(str(out), mode="gptq"))  # the default kernel: gptq_int4pack
    report = loaded.report
    assert report.quantization["backend"] == "gptq_int4pack" and report.dtype == "bfloat16"
    assert not report.warnings, report.warnings

    # Every linear layer of the blocks is quantized, and computes what the original layer computes, to 4-bit
    # precision (a layer with the wrong weights, like Phi-3's gate and up halves swapped, is off by ~100%).
    expected = linear_layers(original.model)
    quantized = {n: m for n, m in loaded.model.named_modules() if isinstance(m, Int4PackedLinear)}
    assert sorted(quantized) == sorted(expected)
    generator = torch.Generator().manual_seed(0)
    for name, layer in quantized.items():
        x = torch.randn(4, layer.in_features, generator=generator)
        with torch.inference_mode():
            want = expected[name](x)
            got = layer(x.to(torch.bfloat16)).float()
        assert got.dtype == torch.float32 and (got - want).norm() / want.norm() < 0.2, name

    # Everything else (embeddings, norms, the output head) is the original, in bf16.
    originals = dict(original.model.named_parameters())
    for name, param in loaded.model.named_parameters():
        assert name in originals, name
        assert torch.allclose(param.float(), originals[name].to(torch.bfloat16).float(), rtol=1e-2, atol=1e-3), name

    assert_chat_turn_is_greedy(loaded)
    assert_batch_runs(loaded)


@pytest.mark.parametrize("family", sorted(REFUSED_GPTQ))
def test_gptq_of_a_family_it_cannot_save_loadably_is_refused_before_any_work(family, families, tmp_path,
                                                                            gptq_outputs):
    error = gptq_outputs(family)
    assert isinstance(error, QuantError) and REFUSED_GPTQ[family] in str(error)
    assert "experts" in str(error) and "bitsandbytes" in str(error)
    assert not (gptq_outputs.root / family).exists()
    with pytest.raises(QuantError, match=REFUSED_GPTQ[family]):
        quantize(str(families[family]), method="gptq", recipe=RECIPE, out_dir=tmp_path / "out", evaluate=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial folder


_GPTQMODEL_MIXTRAL = """
import sys
from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
from transformers import AutoTokenizer
from quant.gptq import calibration_samples
from tests.conftest import CALIBRATION_TEXT

source, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(source)
samples = calibration_samples([CALIBRATION_TEXT.read_text()], tokenizer, 8, 64)
model = GPTQModel.load(source, QuantizeConfig(bits=4, group_size=32), device="cpu")
model.quantize(samples, batch_size=1, backend=BACKEND.GPTQ_TORCH)
model.save(out)
tokenizer.save_pretrained(out)
"""


def test_a_gptq_mixtral_made_by_gptqmodel_is_refused_at_load_naming_the_missing_experts(families, tmp_path):
    """What the refusal above prevents: gptqmodel's own Mixtral checkpoint loads in transformers 5 with every expert
    missing. The load must say so (QuantError), not hand out a model with random experts.

    gptqmodel is run in a process of its own: loading a Mixtral, it swaps transformers' MixtralSparseMoeBlock for
    defuser's per-expert version for the rest of the process (gptqmodel/models/loader.py,
    `defuser.replace_fused_blocks`), after which that process loads the checkpoint fine while a fresh one (the CLI's
    next command, a restarted app) does not."""
    import subprocess
    import sys

    from transformers.models.mixtral import modeling_mixtral

    out = tmp_path / "q"
    done = subprocess.run([sys.executable, "-c", _GPTQMODEL_MIXTRAL, str(families["mixtral"]), str(out)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # This process never ran gptqmodel on a Mixtral (quantize refused it first): its Mixtral is transformers' own.
    assert modeling_mixtral.MixtralSparseMoeBlock.__module__ == modeling_mixtral.__name__
    for kernel in ("gptq_int4pack", "gptq_torch"):
        with pytest.raises(QuantError, match=r"MISSING.*mlp\.experts.*one layer per expert"):
            load_model(LoadRequest(str(out), mode="gptq", options=QuantOptions(gptq_backend=kernel)))


def _split_gate_up(folder: Path, out: Path) -> None:
    """`folder`'s GPTQ checkpoint with each gate_up_proj split into gate_proj and up_proj, as gptqmodel saves Phi-3."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    tensors = load_file(out / "model.safetensors")
    for key in [k for k in tensors if ".gate_up_proj." in k]:
        tensor = tensors.pop(key)
        suffix = key.rpartition(".")[2]
        halves = (tensor, tensor.clone()) if suffix == "g_idx" else tensor.chunk(2, dim=0 if suffix == "bias" else 1)
        for name, half in zip(("gate_proj", "up_proj"), halves):
            tensors[key.replace("gate_up_proj", name)] = half.contiguous()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("kernel", ["gptq_int4pack", "gptq_torch"])
def test_a_phi3_checkpoint_with_split_gate_up_is_refused_not_run(kernel, gptq_outputs, tmp_path):
    """gptqmodel's Phi-3 layout (gate_proj/up_proj where transformers has gate_up_proj) used to fail the int4 repack
    with an IndexError, and with gptq_torch to load and then abort the process at the first chat message."""
    split = tmp_path / "phi3-split"
    _split_gate_up(Path(gptq_outputs("phi3").out_dir), split)
    with pytest.raises(QuantError) as error:
        load_model(LoadRequest(str(split), mode="gptq", options=QuantOptions(gptq_backend=kernel)))
    text = str(error.value)
    assert "MISSING" in text and "mlp.gate_up_proj" in text and "gate_proj and up_proj separately" in text


def test_the_server_survives_a_user_loading_that_phi3_checkpoint_and_chatting(app_url, gptq_outputs, tmp_path,
                                                                             monkeypatch):
    """The whole server used to go down (an abort in a compiled CPU kernel at the first message) when a visitor chatted
    with this checkpoint on gptq_torch: now the load is refused with its reason and the server keeps answering."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tests.conftest import LLAMA
    from tests.support.model_tab import load_args

    split = tmp_path / "models" / "phi3-split"
    split.parent.mkdir()
    _split_gate_up(Path(gptq_outputs("phi3").out_dir), split)
    monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(split.parent))
    visitor = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="MISSING"):
        visitor.predict(*load_args(str(split), "gptq", gptq_backend="gptq_torch"), api_name="/load_model")
    visitor.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    visitor.predict("Explain the with statement.", api_name="/chat_add_message")
    reply = visitor.predict("", 8, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    assert reply[-1]["role"] == "assistant" and reply[-1]["content"]


def test_quantize_checks_its_output_by_loading_it_and_removes_a_folder_that_does_not_load(gptq_outputs, tmp_path):
    """quantize() loads what it saved before writing a card (result.kernel comes from that load, perplexity or not);
    a folder that does not load, like gptqmodel's split Phi-3, is removed with the loader's reason."""
    from quant.quantize import _check_saved

    assert gptq_outputs("phi3").kernel == "Int4PackedLinear"  # quantized with evaluate=False: the check still ran
    split = tmp_path / "phi3-split"
    _split_gate_up(Path(gptq_outputs("phi3").out_dir), split)
    with pytest.raises(QuantError, match=r"does not load correctly, so .*phi3-split was removed.*MISSING"):
        _check_saved(LoadRequest(str(split), mode="gptq"), split, None)
    assert not split.exists()


def test_the_cli_refuses_with_one_line_and_status_2(families, gptq_outputs, tmp_path, capsys):
    """`python -m quant quantize` of a Mixtral exited 0 and wrote a card; loading gptqmodel's Phi-3 layout printed an
    IndexError traceback."""
    from quant.cli import main

    assert main(["quantize", str(families["mixtral"]), "--bits", "4", "--group-size", "32", "--samples", "8",
                 "--seq-len", "64", "--out", str(tmp_path / "mixtral")]) == 2
    err = capsys.readouterr().err
    assert "error: GPTQ of MixtralForCausalLM is refused" in err and "Traceback" not in err
    assert not (tmp_path / "mixtral").exists()
    _split_gate_up(Path(gptq_outputs("phi3").out_dir), tmp_path / "phi3-split")
    assert main(["load", str(tmp_path / "phi3-split"), "--mode", "gptq"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "MISSING" in err and "Traceback" not in err


def test_a_save_that_fails_inside_gptqmodel_is_not_called_a_full_disk(tmp_path):
    """GPT-NeoX's save failed with a FileNotFoundError of gptqmodel's own offload folder; the message told the user
    to free some space."""
    def write(folder):
        folder.mkdir()
        raise FileNotFoundError("Offloaded tensor 'lm_head.weight' not found in offload directory '/tmp/gptqmodel_x'.")

    with pytest.raises(QuantError) as error:
        save_atomically(write, tmp_path / "model")
    assert "inside gptqmodel, not on the disk" in str(error.value) and "Free some space" not in str(error.value)
    assert list(tmp_path.iterdir()) == []


# --- every family, every CPU mode -----------------------------------------------------------------------------------


MODE_LAYERS = {"fp32": None, "bf16": None, "int8": "Linear8bitLt", "nf4": "Linear4bit"}


@pytest.mark.parametrize("mode", list(MODE_LAYERS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_and_generates_greedily_in_every_cpu_mode(family, mode, families):
    loaded = load_model(LoadRequest(str(families[family]), mode=mode))
    report = loaded.report
    assert report.kind == FAMILIES[family].kind and report.architecture == FAMILIES[family].architecture
    assert not any("random values" in w or "not used by" in w for w in report.warnings), report.warnings

    layer = MODE_LAYERS[mode]
    if layer:  # every linear layer is quantized, but the head and those the model keeps in fp32 (T5's wo)
        keep = set(getattr(loaded.model, "_keep_in_fp32_modules", None) or ())
        names = [n for n in linear_layers(loaded.model) if n.rpartition(".")[2] not in keep]
        assert report.linear_layers.get(layer) == len(names) > 0
        assert all(type(loaded.model.get_submodule(n)).__name__ == layer for n in names)
        # The load report accounts for every linear layer left as it was: one line per reason (quant.kept).
        plain = [n for n, m in loaded.model.named_modules() if type(m) in (torch.nn.Linear, Conv1D)]
        linear_reasons = {"keep_fp32", "keep_fp32_unquantized", "head", "head_tied", "skip_method"}
        assert sum(g["modules"] for g in report.kept if g["reason"] in linear_reasons) == len(plain) > 0
        assert {g["reason"] for g in report.kept} <= linear_reasons | {"not_linear"}, report.kept
        wo = [g for g in report.kept if g["patterns"] == ["wo"]]
        assert len(wo) == (family == "t5") and all(g["modules"] == 4 for g in wo)
    unquantized = [w for w in report.warnings if "unquantized" in w]
    if family == "mixtral" and layer:
        # transformers keeps Mixtral's experts as 3-D tensors, which bitsandbytes does not quantize: said so.
        assert len(unquantized) == 1 and "MixtralExperts (model.layers.{0, 1}.mlp.experts)" in unquantized[0]
        assert "bitsandbytes quantizes nn.Linear layers only" in unquantized[0]
    else:
        assert not unquantized, unquantized
    if family == "bart":  # bart-large-cnn's generation config asks for 4 beams
        assert any("num_beams=4" in w for w in report.warnings)

    encoded = loaded.tokenizer(PROMPTS[0], return_tensors="pt")
    [(text, count)] = generate_batch(loaded, [PROMPTS[0]], GenerationSettings(max_new_tokens=NEW_TOKENS))
    tokens = direct_greedy(loaded, encoded["input_ids"], NEW_TOKENS)
    assert text == loaded.tokenizer.decode(tokens[:count], skip_special_tokens=True)
    assert 1 <= count <= NEW_TOKENS
    assert_chat_turn_is_greedy(loaded)


def test_nf4_of_a_layer_the_cpu_kernel_cannot_take_is_refused_or_runs(tmp_path):
    """bitsandbytes' 4-bit CPU kernel (AVX512-BF16 CPUs) reshapes each layer's scales per 64 inputs: a layer of 96
    inputs failed at the first forward. Here it is refused with the layers named; elsewhere it runs."""
    folder = build("smollm", tmp_path / "smollm-96", hidden_size=96, num_attention_heads=3, num_key_value_heads=1,
                   head_dim=32)
    try:
        loaded = load_model(LoadRequest(str(folder), mode="nf4"))
    except UnsupportedModeError as exc:
        assert "not a multiple of its block size 64" in str(exc) and "self_attn.(k_proj, o_proj, q_proj" in str(exc)
        assert "int8" in str(exc)
        return
    assert_chat_turn_is_greedy(loaded)


def test_builds_are_the_real_configs_with_shrunk_sizes(families):
    """The architecture options that made families fail survive the shrinking."""
    def config(family):
        return json.loads((families[family] / "config.json").read_text())

    assert config("llama")["rope_parameters"]["rope_type"] == "llama3" and config("llama")["tie_word_embeddings"]
    assert config("qwen2")["tie_word_embeddings"] and config("qwen2")["dtype"] == "bfloat16"
    assert config("gemma2")["final_logit_softcapping"] == 30.0 and config("gemma2")["sliding_window"] == 32
    assert config("gemma3")["layer_types"] == ["sliding_attention", "full_attention"]
    assert config("phi3")["rope_parameters"]["rope_type"] == "longrope" and not config("phi3")["tie_word_embeddings"]
    assert config("mixtral")["num_local_experts"] == 8 and config("mixtral")["num_experts_per_tok"] == 2
    assert config("opt")["dtype"] == "float16" and config("opt")["enable_bias"]
    assert config("gpt_neox")["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert config("t5")["feed_forward_proj"] == "gated-gelu"
    assert all(config(f)["vocab_size"] == 2048 for f in FAMILIES)
    from safetensors import safe_open

    with safe_open(families["gpt_neox"] / "model.safetensors", "pt") as f:
        assert "embed_out.weight" in f.keys()  # Pythia's own name for the head, as on the Hub


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_compared_in_every_cpu_mode(family, families):
    """The Compare tab's work on each family: every CPU mode loads, answers, batches and is measured against the
    16-bit reference (causal models: perplexity and next-token quality on a short text), one mode at a time."""
    from quant.compare import compare, parse_mode_specs
    from quant.registry import ModelRegistry

    model = str(families[family])
    registry = ModelRegistry(max_models=1)
    results = list(compare(model, parse_mode_specs(model, list(MODE_LAYERS)), registry=registry, prompts=PROMPTS[:1],
                           eval_text=PROMPTS[0] * 40, batch_size=2, new_tokens=4, answer_tokens=4, device_map="cpu"))
    assert [r.label for r in results] == list(MODE_LAYERS) and not [r.error for r in results if r.error]
    by_mode = {r.label: r for r in results}
    assert by_mode["fp32"].footprint_bytes > by_mode["bf16"].footprint_bytes > by_mode["nf4"].footprint_bytes
    assert all(len(r.answers) == 1 and r.decode_tokens_per_s > 0 and r.batch_tokens_per_s > 0 for r in results)
    if FAMILIES[family].kind == "causal":  # (random seq2seq weights may answer with special tokens only: "")
        assert all(r.answers[0].strip() and r.perplexity and r.kl_mean is not None and r.verdict for r in results)
        assert by_mode["bf16"].kl_mean == 0 or by_mode["bf16"].reference == "bf16"
    assert registry.loaded() == []  # each mode was released before the next loaded


RAGGED_PROMPTS = ["x", "def add(a, b):\n    return a + b\n" * 3, "The with statement", "import os\nimport sys\n" * 4]


@pytest.mark.parametrize("family", CAUSAL)
def test_every_causal_family_prefills_a_ragged_batch_in_groups_with_the_whole_batchs_replies(family, families,
                                                                                             monkeypatch):
    """quant.ragged on each family's real layout (learned positions in GPT-2 and OPT, rotary elsewhere, MoE): a ragged
    padded batch prefilled in groups gives the replies of the batch prefilled whole; a family whose cache is not one
    of full-attention layers (Gemma 2/3's sliding layers, Phi-3-mini's window of 2,047) says why and is prefilled
    whole."""
    from quant import ragged
    from tests.support.batching import prefilled_both_ways

    monkeypatch.setenv("QUANT_FAST_GENERATION", "off")
    monkeypatch.setattr(ragged, "GROUP_TOKENS", 40)  # several groups from these four prompts
    loaded = load_model(LoadRequest(str(families[family]), mode="fp32"))
    settings = GenerationSettings(max_new_tokens=NEW_TOKENS)
    (whole, whole_starts), (grouped, starts) = prefilled_both_ways(loaded, RAGGED_PROMPTS, settings, monkeypatch)
    padded_width = whole_starts[0][1]
    assert grouped == whole
    refusal = ragged.refusal(loaded)
    if family in ("gemma2", "gemma3", "phi3"):
        assert "sliding-window or hybrid" in refusal and starts[0] == (4, padded_width)
    else:
        assert refusal is None and starts[0][0] < 4  # the first group, not the whole batch
