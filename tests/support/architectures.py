"""Small random-weight checkpoints of the model families users load, built from each family's REAL config.

Not a test module: tests/unit/test_architectures.py (and anyone reproducing a family's failure by hand) calls
`build_all(folder)` or `build(family, folder)`.

Each family's entry below is a transcription of the architecture options of a real checkpoint's config.json on the
Hub (named in `source`): tied or untied embeddings, biases, rope type and scaling, sliding windows, MoE routing,
logit soft-capping, the dtype it was saved in. Only sizes are shrunk (`shrunk`: hidden 64-192, 2 layers, few heads,
intermediate 128-256), and the vocabulary and special ids are those of the tokenizer every checkpoint here shares:
the demo model's byte-level BPE with a Llama-3 chat template (quant/demo_models/tiny-llama-chat). A failure that
shows here and not with the demo Llama comes from the family, not from the model being tiny.

The weights are the model class's own random initialisation (std 0.02 and the like: small values, so greedy
generation is well-defined), under a fixed seed, saved in the dtype the real checkpoint was saved in.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "quant" / "demo_models" / "tiny-llama-chat"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SEED = 1234

# The shared tokenizer's ids (tokenizer.json: 2048 tokens, <|begin_of_text|> 0, <|end_of_text|> 1, <|eot_id|> 4).
VOCAB, BOS, EOS, EOT = 2048, 0, 1, 4
PAD = EOS  # the tokenizer has no pad token; quant.loader pads with EOS, as most chat checkpoints do

# Phi-3.5-mini's longrope factors have head_dim / 2 = 48 entries; these are its first and last values, spread over
# the 8 entries a head of 16 needs (the config is refused unless the length matches).
_PHI_SHORT = [1.0, 1.02, 1.03, 1.05, 1.09, 1.2, 1.51, 2.2]
_PHI_LONG = [1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62]


@dataclass(frozen=True)
class Family:
    name: str
    source: str
    """The Hub checkpoint whose config.json `real` transcribes."""
    real: dict
    """Architecture options of the real config (sizes are overwritten by `shrunk`)."""
    shrunk: dict
    kind: str = "causal"
    generation: dict = field(default_factory=dict)
    """The real checkpoint's generation_config.json entries that change what `generate` does (beams, lengths)."""

    @property
    def architecture(self) -> str:
        return self.real["architectures"][0]


_CAUSAL_IDS = {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "vocab_size": VOCAB}

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", "meta-llama/Llama-3.2-1B-Instruct", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "pretraining_tp": 1,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}),
    Family("qwen2", "Qwen/Qwen2.5-0.5B-Instruct", {
        # Qwen2's q/k/v projections always carry a bias (modeling_qwen2.Qwen2Attention), o_proj none.
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "max_position_embeddings": 32768, "max_window_layers": 21, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "use_sliding_window": False, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}),
    Family("qwen3", "Qwen/Qwen3-0.6B", {
        # head_dim (128) is not hidden / heads (64): q_proj is wider than the hidden size; q/k RMS norms.
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False, "hidden_act": "silu",
        "max_position_embeddings": 40960, "max_window_layers": 28, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 32}),
    Family("gemma2", "google/gemma-2-2b-it", {
        # Soft-capped attention and final logits, alternating sliding/global layers, tied, saved in float32.
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0, "cache_implementation": "hybrid", "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32"},
        # query_pre_attn_scalar is the head dim in the real config (256 = 256); the window shrinks with the sizes
        # (4096 -> 32) so that it really slides within a 64-token calibration sample.
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 32}),
    Family("gemma3", "google/gemma-3-1b-it", {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False,
        "attn_logit_softcapping": None, "final_logit_softcapping": None, "cache_implementation": "hybrid",
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000, "rope_scaling": None, "rope_theta": 1000000, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16"},
        # 26 layers with a global one every 6th; two layers keep one of each (sliding, then global).
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 32,
         "layer_types": ["sliding_attention", "full_attention"]}),
    Family("phi3", "microsoft/Phi-3.5-mini-instruct", {
        # Fused projections (qkv_proj, gate_up_proj), longrope scaling, untied.
        "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "attention_bias": False, "hidden_act": "silu",
        "max_position_embeddings": 131072, "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": _PHI_LONG, "short_factor": _PHI_SHORT, "type": "longrope"},
        "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4}),
    Family("mistral", "mistralai/Mistral-7B-Instruct-v0.3", {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}),
    Family("mixtral", "mistralai/Mixtral-8x7B-Instruct-v0.1", {
        # 8 experts, 2 per token: the expert weights are fused 3-D tensors in transformers 5.
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_act": "silu",
        "max_position_embeddings": 32768, "num_experts_per_tok": 2, "num_local_experts": 8,
        "output_router_logits": False, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}),
    Family("smollm", "HuggingFaceTB/SmolLM2-135M-Instruct", {
        # A Llama config: 9 heads of 64 over 3 KV heads (here 3 over 1), tied, plain rope. Every size stays a
        # multiple of 64, as the real 576/1536 are (bitsandbytes' 4-bit CPU kernel needs that of each layer's input),
        # hence a hidden size of 192.
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
        "hidden_act": "silu", "initializer_range": 0.041666666666666664, "max_position_embeddings": 8192,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 100000,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
        {"hidden_size": 192, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 3,
         "num_key_value_heads": 1, "head_dim": 64}),
    Family("gpt2", "openai-community/gpt2", {
        # Conv1D layers (weights stored transposed), learned positions, tied, gelu_new, saved in float32.
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "layer_norm_epsilon": 1e-05, "n_ctx": 1024,
        "n_positions": 1024, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "torch_dtype": "float32"},
        {"n_embd": 64, "n_layer": 2, "n_head": 4}),
    Family("opt", "facebook/opt-125m", {
        # Biases everywhere, learned positions (offset 2), relu, tied, saved in float16.
        "architectures": ["OPTForCausalLM"], "model_type": "opt", "_remove_final_layer_norm": False,
        "activation_dropout": 0.0, "activation_function": "relu", "attention_dropout": 0.0,
        "do_layer_norm_before": True, "dropout": 0.1, "enable_bias": True, "layerdrop": 0.0,
        "max_position_embeddings": 2048, "prefix": "</s>", "torch_dtype": "float16"},
        {"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "word_embed_proj_dim": 64}),
    Family("gpt_neox", "EleutherAI/pythia-160m", {
        # Fused query_key_value with bias, partial rotary (25%), parallel residual, untied (embed_out), float16.
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "classifier_dropout": 0.1,
        "hidden_act": "gelu", "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "rotary_emb_base": 10000,
        "rotary_pct": 0.25, "tie_word_embeddings": False, "use_parallel_residual": True, "torch_dtype": "float16"},
        {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}),
    Family("t5", "google/flan-t5-small", {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0, "is_encoder_decoder": True,
        "is_gated_act": True, "layer_norm_epsilon": 1e-06, "n_positions": 512, "output_past": True,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
        "torch_dtype": "float32"},
        {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2},
        kind="seq2seq"),
    Family("bart", "facebook/bart-large-cnn", {
        "architectures": ["BartForConditionalGeneration"], "model_type": "bart", "activation_dropout": 0.0,
        "activation_function": "gelu", "add_bias_logits": False, "add_final_layer_norm": False,
        "attention_dropout": 0.0, "dropout": 0.1, "init_std": 0.02, "is_encoder_decoder": True,
        "max_position_embeddings": 1024, "normalize_before": False, "normalize_embedding": True,
        "scale_embedding": False, "tie_word_embeddings": True, "torch_dtype": "float32"},
        {"d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "encoder_layers": 2, "decoder_layers": 2,
         "encoder_attention_heads": 4, "decoder_attention_heads": 4, "num_hidden_layers": 2},
        kind="seq2seq",
        # bart-large-cnn's generation_config.json: beam search with length limits (a summariser).
        generation={"num_beams": 4, "length_penalty": 2.0, "max_length": 142, "min_length": 56,
                    "no_repeat_ngram_size": 3, "early_stopping": True, "forced_bos_token_id": BOS,
                    "forced_eos_token_id": EOS}),
]}

CAUSAL = tuple(name for name, f in FAMILIES.items() if f.kind == "causal")
SEQ2SEQ = tuple(name for name, f in FAMILIES.items() if f.kind == "seq2seq")


def family_config(family: Family, **overrides):
    """The family's real config with its sizes shrunk (and `overrides`), and the shared tokenizer's vocabulary and
    ids."""
    from transformers import AutoConfig

    values = {**family.real, **family.shrunk, **overrides}
    if family.kind == "causal":
        values.update(_CAUSAL_IDS)
    elif family.name == "t5":  # T5 starts the decoder with its pad token; here the tokenizer's BOS stands for it
        values.update(vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=PAD, decoder_start_token_id=BOS)
    else:  # BART starts the decoder with EOS
        values.update(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                      decoder_start_token_id=EOS, forced_eos_token_id=EOS)
    dtype = values.pop("torch_dtype")
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(model_type, **values)
    config.dtype = dtype
    return config


def build(name: str, folder: Path, **overrides) -> Path:
    """Write family `name`'s checkpoint (config, random weights in the real dtype, tokenizer) to `folder`;
    `overrides` change config values (other sizes, to reproduce a shape-dependent failure)."""
    import torch
    import transformers
    from transformers import GenerationConfig

    family = FAMILIES[name]
    folder = Path(folder)
    config = family_config(family, **overrides)
    model_class = getattr(transformers, family.architecture)
    torch.manual_seed(SEED)
    with torch.device("cpu"):
        model = model_class(config)
    model.to(getattr(torch, config.dtype)).eval()
    generation = {"bos_token_id": BOS, "eos_token_id": [EOS, EOT] if family.kind == "causal" else EOS,
                  "pad_token_id": PAD, **family.generation}
    if family.kind == "seq2seq":
        generation["decoder_start_token_id"] = config.decoder_start_token_id
    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(folder)
    for file in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_DIR / file, folder / file)
    # The pad token named, as the config's pad id says: a family's own tokenizer class (transformers picks
    # Qwen2Tokenizer for model type qwen2) would otherwise add its default "<|endoftext|>" as token 2048, one past the
    # embeddings, and batches padded with it fail. Real Qwen tokenizers hold that token in their vocabulary.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config.update(pad_token="<|end_of_text|>", unk_token="<|end_of_text|>")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "BUILD.json").write_text(json.dumps({"family": name, "source": family.source, "seed": SEED,
                                                   "overrides": overrides,
                                                   "note": "random weights, real config with shrunk sizes "
                                                           "(tests/support/architectures.py)"}, indent=1))
    return folder


def build_all(base: Path, names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build every family (or `names`) under `base`, one folder each: {family: folder}. Folders already built there
    are reused, so a test session (or a person reproducing a failure) builds each family once."""
    base = Path(base)
    built = {}
    for name in names or tuple(FAMILIES):
        folder = base / name
        if not (folder / "BUILD.json").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            build(name, folder)
        built[name] = folder
    return built


if __name__ == "__main__":  # python tests/support/architectures.py OUT_DIR [family ...]
    import sys
    import time

    started = time.perf_counter()
    for family, path in build_all(Path(sys.argv[1]), tuple(sys.argv[2:]) or None).items():
        print(f"{family:<10} {path}")
    print(f"{time.perf_counter() - started:.1f} s")
