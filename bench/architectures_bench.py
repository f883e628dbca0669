"""The compiled decode path on every architecture the app is given, against the eager one (issue 27): per architecture
and mode, batch-1 decode tok/s eager and compiled, their ratio against the goal (compiled >= 3x eager, or why not),
whether greedy tokens agree, the generation path (which says why a model stays eager) and the compile seconds.

Each architecture is a random-weight checkpoint of its real config (ARCHITECTURES: widths, heads, KV heads, head size,
vocabulary, intermediate size, experts, rope and attention options, transcribed from the config.json of the checkpoint
named in `source`; 1-3B models, the smallest of their family). Mistral and Mixtral have no open checkpoint under 7B:
their real widths run with fewer layers (12 and 2, about 3B). Tokens come from the demo tokenizer (its 2,048 ids are
a subset of every vocabulary here), saved beside the weights, so every code path that needs a tokenizer works.

Everything goes through the app's code: each mode loads through quant's ModelRegistry (quant.loader, the compiled
decode loop of quant.fastpath prepared at load time with QUANT_FAST_GENERATION=all, or not with =off), the decode
rate is the Compare tab's measurement (quant.compare.measure_decode: a warm-up, then --new-tokens forced new tokens)
and the greedy tokens come from quant.generation.start_generate (the path chat and batches use). Where the greedy
tokens of the two paths part, eager's logits after the compiled tokens say for each whether it was a near-tie of
eager's choice (numerical noise: tests/support/fastpath.py's rule, 0.05 or 8 roundings of the top logit) or a real
difference. Models with a sliding window shorter than the cache are compared past the window (see greedy_length).

Each architecture runs in a process of its own (a crash or a broken CUDA context takes only its rows; the JSON of the
finished ones is rewritten after each) and its checkpoint is deleted afterwards (--keep-checkpoints keeps them in
--work; at the real scale they are 2-8 GB each).

    # the GPU run (not run yet; estimated 20-30 minutes on an H200 with a cold kernel cache: 11 builds, 22 loads, 11
    # compilations; bench/device_session.sh outlives the 10-minute calls):
    bash bench/device_session.sh start "python bench/architectures_bench.py --out /tmp/sess/architectures"
    bash bench/device_session.sh wait 560       # again until steps.log says done; results in sess.tgz
    # nf4 too, or some architectures, or fewer layers:
    python bench/architectures_bench.py --modes bf16,nf4 --architectures qwen3,gemma3 --layers 8 --out /tmp/arch
    # a CPU check (minutes): small widths, 2 layers, the compiled step traced but not compiled by Inductor:
    python bench/architectures_bench.py --scale tiny --compile-backend eager --new-tokens 24 --out /tmp/arch-cpu

Random weights: speed and agreement only, no quality.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import WORK, bench_parser, result_stem, write_results  # noqa: E402

DEMO_TOKENIZER = ROOT / "quant" / "demo_models" / "tiny-llama-chat"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
BOS, EOS, EOT = 0, 1, 4
"""The demo tokenizer's <|begin_of_text|>, <|end_of_text|> (also the pad token) and <|eot_id|>."""
DEMO_VOCAB = 2048
GOAL = 3.0
"""Issue 27: compiled batch-1 decode at >= 3x the eager rate of the same architecture and mode."""
NOISE = 0.05
ROUNDINGS = 8
"""A compiled token within max(NOISE, ROUNDINGS * eps * |top logit|) of eager's top logit after the same tokens is a
near-tie: numerical noise, not a wrong path (tests/support/fastpath.py, the GPU tests' rule)."""
SEED = 0


def _longrope(entries: int, short: bool) -> list[float]:
    """Phi-3.5-mini's longrope factors at `entries` values (head size / 2): its published 48 values rise from 1.0 to
    2.2 (short) and 1.08 to 2.62 (long); this interpolates tests/support/architectures.py's 8-point profile of them.
    They only scale rope frequencies: what is measured here is the longrope code path, which they do not change."""
    profile = ([1.0, 1.02, 1.03, 1.05, 1.09, 1.2, 1.51, 2.2] if short else
               [1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62])
    out = []
    for i in range(entries):
        x = i * (len(profile) - 1) / max(entries - 1, 1)
        low = min(int(x), len(profile) - 2)
        out.append(round(profile[low] + (profile[low + 1] - profile[low]) * (x - low), 4))
    return out


@dataclass(frozen=True)
class Architecture:
    name: str
    source: str
    """The Hub checkpoint whose config.json `config` transcribes (sizes included)."""
    config: dict
    tiny: dict
    """--scale tiny: the sizes replaced for a CPU check (hidden 256, 2 layers, 4 heads; the other options stay)."""
    layers: int | None = None
    """Layers at --scale real where the real model is past 3B (None: all of them)."""
    covers: str = ""
    """Which of the issue's names this row stands for."""
    notes: str = ""

    @property
    def layers_key(self) -> str:
        return "n_layer" if "n_layer" in self.config else "num_hidden_layers"


_TINY = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture("llama", "meta-llama/Llama-3.2-1B-Instruct", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": 128256, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True},
        {**_TINY, "num_key_value_heads": 1, "head_dim": 64},
        covers="reference: the architecture every earlier measurement used"),
    Architecture("qwen2.5", "Qwen/Qwen2.5-1.5B-Instruct", {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "hidden_act": "silu", "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True},
        {**_TINY, "num_key_value_heads": 2},
        covers="Qwen2 and Qwen2.5 (one class, Qwen2ForCausalLM; Qwen2-1.5B has the same sizes)",
        notes="q/k/v projections with bias; 6 query heads per KV head"),
    Architecture("qwen3", "Qwen/Qwen3-1.7B", {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2048, "intermediate_size": 6144,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "attention_bias": False, "hidden_act": "silu", "max_position_embeddings": 40960,
        "max_window_layers": 28, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": True},
        # head size 128 over a hidden size of 256: q_proj is wider than the hidden size (Qwen3-0.6B's case)
        {**_TINY, "num_key_value_heads": 2, "head_dim": 128},
        covers="Qwen3", notes="q/k RMS norms"),
    Architecture("gemma2", "google/gemma-2-2b-it", {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216,
        "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "vocab_size": 256000, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "cache_implementation": "hybrid", "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": True},
        # the window shrinks to 32 so that it slides within a CPU check's prompt and reply
        {**_TINY, "num_key_value_heads": 2, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 32},
        covers="Gemma 2", notes="soft-capped attention and logits, sliding and global layers alternating"),
    Architecture("gemma3", "google/gemma-3-1b-it", {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
        "intermediate_size": 6912, "num_hidden_layers": 26, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 256, "vocab_size": 262144, "attention_bias": False, "attn_logit_softcapping": None,
        "final_logit_softcapping": None, "cache_implementation": "hybrid", "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": 512,
        "sliding_window_pattern": 6, "tie_word_embeddings": True},
        {**_TINY, "num_key_value_heads": 1, "head_dim": 64, "query_pre_attn_scalar": 64, "sliding_window": 32},
        covers="Gemma 3 (text; gemma-3-4b and up are multimodal classes)",
        notes="five sliding-window layers (512) to one global; two rope bases"),
    Architecture("mistral", "mistralai/Mistral-7B-Instruct-v0.3", {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32768, "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
        {**_TINY, "num_key_value_heads": 1},
        layers=12, covers="Mistral", notes="7B widths in 12 of 32 layers (2.9B)"),
    Architecture("phi3", "microsoft/Phi-3.5-mini-instruct", {
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
        "attention_bias": False, "hidden_act": "silu", "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": _longrope(48, short=False), "short_factor": _longrope(48, short=True),
                         "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False},
        {**_TINY, "num_key_value_heads": 4,
         "rope_scaling": {"long_factor": _longrope(32, short=False), "short_factor": _longrope(32, short=True),
                          "type": "longrope"}},
        covers="Phi-3 (3.8B: the smallest Phi-3)",
        notes="fused qkv_proj and gate_up_proj, longrope, no grouped-query attention"),
    Architecture("mixtral", "mistralai/Mixtral-8x7B-Instruct-v0.1", {
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu",
        "max_position_embeddings": 32768, "output_router_logits": False, "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None, "tie_word_embeddings": False},
        {**_TINY, "num_key_value_heads": 1},
        layers=2, covers="Mixtral (MoE)",
        notes="8 experts, 2 per token, stacked 3-D expert weights; 2 of 32 layers (3.2B)"),
    Architecture("gpt2", "openai-community/gpt2-xl", {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25,
        "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-05, "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1},
        {"n_embd": 256, "n_layer": 2, "n_head": 4},
        covers="GPT-2", notes="Conv1D layers, learned positions, 25 heads of 64"),
    Architecture("opt", "facebook/opt-1.3b", {
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 2048, "ffn_dim": 8192,
        "num_hidden_layers": 24, "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
        "word_embed_proj_dim": 2048, "activation_function": "relu", "do_layer_norm_before": True,
        "enable_bias": True, "_remove_final_layer_norm": False, "dropout": 0.1, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "layerdrop": 0.0},
        {"hidden_size": 256, "ffn_dim": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
         "word_embed_proj_dim": 256},
        covers="OPT", notes="biases everywhere, learned positions with an offset of 2"),
    Architecture("gpt_neox", "EleutherAI/pythia-1.4b", {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 50304,
        "hidden_act": "gelu", "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "rotary_emb_base": 10000,
        "rotary_pct": 0.25, "use_parallel_residual": True, "tie_word_embeddings": False},
        {**_TINY},
        covers="GPT-NeoX style (Pythia)", notes="fused query_key_value, partial rotary (25%), parallel residual"),
]}


def architecture_config(arch: Architecture, scale: str, layers: int | None):
    """The transformers config of `arch` at `scale` ("real" or "tiny"), with `layers` layers if given (else the
    architecture's bench default), the demo tokenizer's special ids, bf16."""
    from transformers import AutoConfig

    values = dict(arch.config)
    if scale == "tiny":
        values.update(arch.tiny, vocab_size=DEMO_VOCAB)
    count = layers or (arch.layers if scale == "real" else None) or values[arch.layers_key]
    values[arch.layers_key] = count
    values.update(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    types = getattr(config, "layer_types", None)
    if types is not None and len(types) != count:  # a config that kept its real number of layer types
        raise ValueError(f"{arch.name}: {len(types)} layer types for {count} layers")
    if types and "full_attention" not in types and any(t == "sliding_attention" for t in types):
        # Cut to fewer layers than one period of the sliding/global pattern: keep a global layer, the last
        config.layer_types = [*types[:-1], "full_attention"]
    config.dtype = "bfloat16"
    return config


def build_checkpoint(arch: Architecture, folder: Path, scale: str, layers: int | None, device: str) -> dict:
    """Write a random-weight checkpoint of `arch` (the model class's own initialisation, seeded; bf16) and the demo
    tokenizer to `folder`; return what was built (parameters, layers, seconds). Reuses a folder built alike."""
    import torch
    import transformers
    from transformers import GenerationConfig

    config = architecture_config(arch, scale, layers)
    marker = folder / "BUILD.json"
    wanted = {"architecture": arch.name, "source": arch.source, "scale": scale,
              "layers": config.num_hidden_layers, "seed": SEED}
    if marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted:
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    torch.manual_seed(SEED)
    with torch.device(device):
        model = getattr(transformers, arch.config["architectures"][0])(config)
    model.to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, EOT], pad_token_id=EOS)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(DEMO_TOKENIZER / name, folder / name)
    # The pad token named, as tests/support/architectures.py does: a family's own tokenizer class (Qwen2Tokenizer for
    # model type qwen2) would otherwise add its default pad token as a new id.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(pad_token="<|end_of_text|>", unk_token="<|end_of_text|>")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    built = {**wanted, "parameters": sum(p.numel() for p in model.parameters()),
             "build_seconds": time.perf_counter() - started}
    marker.write_text(json.dumps(built, indent=1))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return built


# --- measuring (in the architecture's own process) -------------------------------------------------------------------


def _load(request, compiled: bool):
    """Load through a registry of its own (the load request's key does not say which path: one registry would hand
    back the model loaded for the other path)."""
    from quant.registry import ModelRegistry

    os.environ["QUANT_FAST_GENERATION"] = "all" if compiled else "off"
    try:
        registry = ModelRegistry(max_models=1)
        loaded = registry.load(request)
        return registry, loaded
    finally:
        os.environ.pop("QUANT_FAST_GENERATION", None)


def greedy_ids(loaded, prompt: str, new_tokens: int) -> tuple[list[int], list[int], bool]:
    """(prompt ids, greedy new ids, whether the compiled path ran them), through quant.generation.start_generate."""
    from quant.generation import start_generate

    encoded = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=loaded.tokenizer.pad_token_id)
    future, compiled = start_generate(loaded, kwargs, batch_size=1,
                                      total_tokens=encoded["input_ids"].shape[1] + new_tokens)
    out = future.result()[0].tolist()
    prompt_ids = encoded["input_ids"][0].tolist()
    return prompt_ids, out[len(prompt_ids):], compiled


def agreement(eager, prompt_ids: list[int], expected: list[int], got: list[int]) -> dict:
    """Whether the compiled tokens are eager's. Where they part: one eager forward over the prompt and the compiled
    tokens says, for every compiled token, how far below eager's choice after the same tokens it lies; within the
    noise tolerance it is a near-tie (numerical noise), past it the compiled path chose what eager would not (as in
    tests/support/fastpath.py's assert_each_token_is_an_eager_choice)."""
    import torch

    if expected == got:
        return {"equal": True, "tokens": len(expected), "verdict": f"equal ({len(expected)} tokens)"}
    split = next((i for i, (x, y) in enumerate(zip(expected, got)) if x != y), min(len(expected), len(got)))
    ids = torch.tensor([prompt_ids + got[:-1]], device=eager.device)
    with torch.inference_mode():
        logits = eager.model(input_ids=ids).logits[0, len(prompt_ids) - 1:].float()
    top = logits.max(dim=-1).values
    below = top - logits[torch.arange(len(got)), torch.tensor(got, device=logits.device)]
    tolerance = torch.clamp(ROUNDINGS * torch.finfo(eager.model.dtype).eps * top.abs(), min=NOISE)
    wrong = [i for i in range(len(got)) if below[i] >= tolerance[i]]
    result = {"equal": False, "tokens": len(expected), "first_difference": split,
              "gap_at_first_difference": below[split].item() if split < len(got) else None,
              "tolerance_at_first_difference": tolerance[split].item() if split < len(got) else None,
              "not_eager_choices": wrong, "worst_gap": below.max().item()}
    result["verdict"] = (f"same {split} tokens, then near-ties only (noise; all {len(got)} within tolerance)"
                         if not wrong else
                         f"DIFFERENT: {len(wrong)} of {len(got)} tokens are not eager's choice (first at token "
                         f"{wrong[0]}, {below[wrong[0]]:.3g} below it, tolerance {tolerance[wrong[0]]:.3g})")
    return result


def sliding_window(folder: Path, cache_tokens: int) -> int | None:
    """The model's sliding window where some layer has one shorter than the batch-1 static cache (else None)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or window >= cache_tokens or (types is not None and "sliding_attention" not in types):
        return None
    return window


def greedy_length(window: int | None, prompt_tokens: int, new_tokens: int) -> int:
    """New tokens for the greedy comparison: --new-tokens, or past the sliding window by 16 where the model has one
    that the cache can hold (a compiled path that goes wrong once the window is full shows only there)."""
    return max(new_tokens, window - prompt_tokens + 16) if window else new_tokens


def measure_architecture(arch: Architecture, args) -> dict:
    """Build, then per mode: load eager, measure; load compiled, measure; compare the greedy tokens."""
    import torch

    from quant.compare import measure_decode
    from quant.errors import QuantError
    from quant.loader import LoadRequest
    from quant.methods import QuantOptions, parse_mode
    from bench.gpu_bench import prompts_from_text
    from bench.methods_bench import parse_modes

    on_gpu = torch.cuda.is_available() and args.device_map != "cpu"
    folder = args.work / (f"arch-{arch.name}-{args.scale}" + (f"-{args.layers}l" if args.layers else ""))
    built = build_checkpoint(arch, folder, args.scale, args.layers, "cuda" if on_gpu else "cpu")
    print(f"[{arch.name}] {built['parameters'] / 1e9:.3f}B parameters, {built['layers']} layers -> {folder}",
          flush=True)
    prompt = prompts_from_text(1, args.prompt_words)[0]
    window = sliding_window(folder, max(int(n) for n in args.cache_tokens.split(",")))
    result = {"architecture": arch.name, "source": arch.source, "covers": arch.covers, "notes": arch.notes,
              "class": arch.config["architectures"][0], "parameters": built["parameters"], "layers": built["layers"],
              "scale": args.scale, "sliding_window": window, "modes": []}
    for mode in parse_modes(args.modes):
        row = {"mode": mode.label}
        result["modes"].append(row)
        request = LoadRequest(model=str(folder), mode=parse_mode(mode.method), options=QuantOptions(**mode.options),
                              device_map=args.device_map)
        eager_registry = compiled_registry = None
        try:
            for path in ("eager", "compiled"):
                registry, loaded = _load(request, compiled=path == "compiled")
                if path == "eager":
                    eager_registry, eager = registry, loaded
                else:
                    compiled_registry = registry
                report = loaded.report
                measure_decode(loaded, prompt, 4)  # warm-up: kernels, caches, allocator
                _, rate, ran_compiled = measure_decode(loaded, prompt, args.new_tokens)
                prompt_ids, ids, greedy_compiled = greedy_ids(loaded, prompt, greedy_length(
                    window, len(loaded.tokenizer(prompt)["input_ids"]), args.new_tokens))
                row[path] = {"tokens_per_s": rate, "ran_compiled": ran_compiled and greedy_compiled,
                             "generation_path": report.generation_path, "load_seconds": report.load_seconds,
                             "compile_seconds": report.compile_seconds, "footprint_bytes": report.footprint_bytes,
                             "warnings": report.warnings}
                row[f"{path}_ids"] = ids
                print(f"[{arch.name}] {mode.label} {path}: {rate:.1f} tok/s, load {report.load_seconds:.1f} s, "
                      f"compile {report.compile_seconds or 0:.1f} s, {report.generation_path}", flush=True)
            row["greedy"] = agreement(eager, prompt_ids, row["eager_ids"], row["compiled_ids"])
        except QuantError as exc:
            row["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one mode's failure is its row's
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            for registry in (compiled_registry, eager_registry):
                if registry is not None:
                    registry.unload_all()
        eager_rate = row.get("eager", {}).get("tokens_per_s")
        compiled_row = row.get("compiled", {})
        row["ratio"] = compiled_row["tokens_per_s"] / eager_rate if eager_rate and compiled_row else None
        row["goal"] = goal_verdict(row, on_gpu)
        print(f"[{arch.name}] {mode.label}: {row.get('error') or row['goal']}; "
              f"greedy {row.get('greedy', {}).get('verdict', 'not compared')}", flush=True)
    if not args.keep_checkpoints:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def goal_verdict(row: dict, on_gpu: bool) -> str:
    if row.get("error"):
        return "failed"
    compiled = row["compiled"]
    if not compiled["ran_compiled"]:
        return f"not compiled: {compiled['generation_path']}"
    if not on_gpu:
        return "n/a (the goal is a GPU's)"
    return f"{'met' if row['ratio'] >= GOAL else 'NOT met'} ({row['ratio']:.2f}x)"


# --- the run ------------------------------------------------------------------------------------------------------


def run_child(arch: str, args, argv: list[str]) -> dict:
    """Measure one architecture in a process of its own; its output is printed as it comes. A process that dies
    (a crash in a compiled kernel, a timeout) gives a row saying so, with the end of its output."""
    piece = args.out / f"{args.stem}.{arch}.json"
    piece.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--architectures", arch, "--child", str(piece)]
    tail: collections.deque[str] = collections.deque(maxlen=25)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
            if time.perf_counter() - started > args.architecture_timeout:
                process.kill()
                tail.append(f"killed after {args.architecture_timeout} s (--architecture-timeout)")
                break
    finally:
        code = process.wait()
    if piece.is_file():
        result = json.loads(piece.read_text())
        piece.unlink()
    else:
        a = ARCHITECTURES[arch]
        result = {"architecture": arch, "source": a.source, "covers": a.covers, "notes": a.notes,
                  "class": a.config["architectures"][0], "scale": args.scale, "modes": [],
                  "error": f"its process ended with {code} before writing a result", "output_tail": list(tail)}
    result["seconds"] = time.perf_counter() - started
    return result


def _number(value, spec: str, empty: str = "") -> str:
    return empty if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    lines = [f"# The compiled decode path per architecture on {summary['device']}", "",
             f"torch {summary['versions'].get('torch')}, transformers {summary['versions'].get('transformers')}; "
             f"{summary['scale']} scale, compile backend {summary['compile_backend']}, static cache "
             f"{summary['cache_tokens']} tokens; batch 1, greedy, {summary['new_tokens']} new tokens after a "
             f"{summary['prompt_words']}-word prompt; random weights, demo tokenizer. Goal (issue 27): compiled "
             f">= {GOAL:g}x eager, or the reason it stays eager. Greedy: the compiled tokens against eager's; where "
             "they part, each compiled token within noise of eager's choice after the same tokens is a near-tie, past "
             "it a difference (models with a shorter sliding window than the cache: compared past the window).", "",
             "| architecture | shapes of | parameters | layers | mode | eager tok/s | compiled tok/s | "
             "compiled / eager | goal | greedy | load s (eager / compiled) | compile s | compiled path |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in summary["architectures"]:
        head = (f"| {result['architecture']} | {result['source']} | "
                f"{_number(result.get('parameters'), ',')} | {result.get('layers', '')} |")
        if result.get("error"):
            lines.append(f"{head} | failed: {result['error']} ||||||||")
            continue
        for row in result["modes"]:
            if row.get("error"):
                lines.append(f"{head} {row['mode']} | failed: {row['error']} |||||||")
                continue
            eager, compiled = row["eager"], row["compiled"]
            greedy = row["greedy"]["verdict"] if compiled["ran_compiled"] else "n/a (both eager)"
            lines.append(
                f"{head} {row['mode']} | {eager['tokens_per_s']:.1f} | {compiled['tokens_per_s']:.1f} | "
                f"{_number(row['ratio'], '.2f')}x | {row['goal']} | {greedy} | "
                f"{eager['load_seconds']:.1f} / {compiled['load_seconds']:.1f} | "
                f"{_number(compiled['compile_seconds'], '.1f')} | {compiled['generation_path']} |")
    failed = [r for r in summary["architectures"] if r.get("error")]
    for result in failed:
        lines += ["", f"{result['architecture']}: {result['error']}. Its last output:", "", "```",
                  *result.get("output_tail", []), "```"]
    lines += ["", "Shapes: the checkpoints' config.json values (bench/architectures_bench.py, ARCHITECTURES), "
              "layers as the table says. Command: `" + summary["command"] + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=None, tag="", work=WORK, modes="bf16", device_map=None, new_tokens=128,
                          helps={"modes": "load modes, comma-separated, as bench/methods_bench.py takes them (options "
                                          "in brackets); modes that need a quantized checkpoint (GPTQ, AWQ) are "
                                          "not taken"})
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES),
                        help="comma-separated, of " + ", ".join(ARCHITECTURES))
    parser.add_argument("--scale", choices=("real", "tiny"), default="real",
                        help="real: the checkpoints' widths (a GPU); tiny: hidden 256, 2 layers, the demo vocabulary, "
                             "the other options as the real ones (a CPU check)")
    parser.add_argument("--layers", type=int, default=None,
                        help="layers of every architecture (default: all of the real model's, 12 for Mistral and 2 "
                             "for Mixtral at the real scale; 2 at the tiny scale)")
    parser.add_argument("--compile-backend", default="inductor", help="QUANT_COMPILE_BACKEND (eager: trace only)")
    parser.add_argument("--cache-tokens", default="512,2048",
                        help="QUANT_STATIC_CACHE_TOKENS (the app's default: batch 1 decodes on the longest)")
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep the built checkpoints in --work")
    parser.add_argument("--architecture-timeout", type=float, default=1200,
                        help="seconds one architecture (build, both paths, every mode) may take")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # one architecture, in-process
    args = parser.parse_args()
    names = [n.strip() for n in args.architectures.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture(s) {', '.join(unknown)}; known: {', '.join(ARCHITECTURES)}")
    from bench.methods_bench import parse_modes
    from quant.methods import METHODS

    needs_checkpoint = [m.label for m in parse_modes(args.modes) if METHODS[m.method].needs_quantized_checkpoint]
    if needs_checkpoint:
        parser.error(f"{', '.join(needs_checkpoint)} load(s) only quantized checkpoints: not measured here")
    if args.child is None and args.out is None:
        parser.error("--out is required")
    import torch

    args.device_map = args.device_map or ("cuda:0" if torch.cuda.is_available() else "cpu")
    os.environ["QUANT_COMPILE_BACKEND"] = args.compile_backend
    os.environ["QUANT_STATIC_CACHE_TOKENS"] = args.cache_tokens
    os.environ.setdefault("QUANT_COMPILED_BATCH_SIZES", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child is not None:  # one architecture, in this process
        result = measure_architecture(ARCHITECTURES[names[0]], args)
        args.child.write_text(json.dumps(result, indent=1))
        return

    from importlib.metadata import PackageNotFoundError, version

    on_gpu = torch.cuda.is_available() and args.device_map != "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    args.stem = result_stem("architectures-bench", args.scale, "cuda" if on_gpu else "cpu", tag=args.tag)
    versions = {}
    for name in ("torch", "transformers", "bitsandbytes"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    summary = {"device": (f"{torch.cuda.get_device_name(0)}" if on_gpu else "CPU"), "versions": versions,
               "scale": args.scale, "layers": args.layers, "modes": args.modes, "new_tokens": args.new_tokens,
               "prompt_words": args.prompt_words, "compile_backend": args.compile_backend,
               "cache_tokens": args.cache_tokens, "goal": GOAL,
               "command": "python bench/architectures_bench.py " + " ".join(sys.argv[1:]), "architectures": []}
    child_argv = _without_option(sys.argv[1:], "--architectures")
    started = time.perf_counter()
    for name in names:
        summary["architectures"].append(run_child(name, args, child_argv))
        (args.out / f"{args.stem}.partial.json").write_text(json.dumps(summary, indent=1))  # survives a timeout
    summary["seconds"] = time.perf_counter() - started
    write_results(args.out, args.stem, summary, markdown)
    (args.out / f"{args.stem}.partial.json").unlink(missing_ok=True)


def _without_option(argv: list[str], option: str) -> list[str]:
    """`argv` without `option` and its value (`--x v` or `--x=v`)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


if __name__ == "__main__":
    main()
