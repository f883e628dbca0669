"""The compiled generation path of encoder-decoder models (quant.seq2seq_decode) on the CPU: the demo T5 (bf16, fp16
with its `wo` layers kept in fp32, nf4) and a BART built from facebook/bart-large-cnn's config (fp32) generate exactly
what the eager path does, for ragged batches (padded right) and chat; LLM.int8 and unchecked families stay eager with
the reason shown.

As in test_fastpath.py, the decode step is compiled with dynamo's "eager" backend: it traces the model and runs the
static caches through torch.compile like the GPU path, without minutes of C++ compilation. The GPU's Inductor + CUDA
graphs are checked by tests/gpu/test_gpu_fastpath.py.
"""

from __future__ import annotations

import pytest
import torch

from quant.generation import GenerationSettings, generate_batch, stream_chat
from quant.loader import LoadRequest
from quant.registry import ModelRegistry
from tests.conftest import T5

PROMPTS = ["translate English to German: the house", "summarize: the with statement wraps a block", "x",
           "def main(): return 1"]
"""Ragged: 2 to 14 tokens, so the batch pads the short ones (on the right: seq2seq)."""
GREEDY = GenerationSettings(max_new_tokens=20)


@pytest.fixture(scope="module")
def compiled_env(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("QUANT_FAST_GENERATION", "all")
    patch.setenv("QUANT_COMPILE_BACKEND", "eager")
    patch.setenv("QUANT_COMPILED_BATCH_SIZES", "1,4")
    patch.setenv("QUANT_STATIC_CACHE_TOKENS", "24,64")
    patch.setenv("QUANT_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
    registry = ModelRegistry(max_models=2)
    yield patch, registry
    registry.unload_all()
    patch.undo()


def load_pair(compiled_env, model: str, mode: str):
    """(eager, compiled) loads of one model and mode."""
    patch, registry = compiled_env
    registry.unload_all()
    with patch.context() as eager_env:
        eager_env.setenv("QUANT_FAST_GENERATION", "off")
        eager = registry.load(LoadRequest(model=model, mode=mode))
    return eager, registry.load(LoadRequest(model=model, mode=mode, revision="main"))


def assert_compiled_matches_eager(eager, fast) -> None:
    from torch._dynamo.utils import counters

    assert fast.path.compiled, fast.path.describe()
    assert fast.report.generation_path.startswith("static cache + torch.compile (batch 1, 4; caches of 24, 64 tokens")
    assert fast.report.static_cache_bytes > 0 and fast.report.compile_seconds > 0
    graphs = counters["stats"]["unique_graphs"]
    for key in fast.path._loops:  # the call below must take the 24-token loop: its prefill overwrites this mark
        fast.path._loops[key].mask.fill_(-1)
    want = generate_batch(eager, PROMPTS, GREEDY)
    assert len({text for text, _ in want}) > 1, "the rows agree: a mix-up of rows would not show"
    assert generate_batch(fast, PROMPTS, GREEDY) == want
    assert (fast.path._loops[4, 24].mask >= 0).all() and (fast.path._loops[4, 64].mask == -1).all()
    # 3 prompts run padded to the compiled batch of 4; a reply longer than 24 slots takes the 64-token cache
    longer = GenerationSettings(max_new_tokens=40)
    assert generate_batch(fast, PROMPTS[:3], longer) == generate_batch(eager, PROMPTS[:3], longer)
    assert (fast.path._loops[4, 64].mask >= 0).all()
    history = [{"role": "user", "content": PROMPTS[0]}]
    want_chat = list(stream_chat(eager, history, settings=GREEDY))[-1]
    got_chat = list(stream_chat(fast, history, settings=GREEDY))[-1]
    assert (want_chat.stats.path, got_chat.stats.path) == ("eager", "compiled")
    assert got_chat.text == want_chat.text and got_chat.stats.new_tokens == want_chat.stats.new_tokens
    assert counters["stats"]["unique_graphs"] == graphs, "the decode step compiled again after the load"


@pytest.mark.parametrize("mode", ["bf16", "fp16", "nf4"])
def test_t5_compiled_gives_the_eager_tokens(compiled_env, mode):
    eager, fast = load_pair(compiled_env, T5, mode)
    if mode == "fp16":  # transformers keeps T5's feed-forward outputs (`wo`) in fp32: the step traces over both
        dtypes = {p.dtype for p in fast.model.parameters()}
        assert dtypes == {torch.float16, torch.float32}, dtypes
    assert_compiled_matches_eager(eager, fast)


def test_bart_compiled_gives_the_eager_tokens(compiled_env, tmp_path):
    from tests.support.architectures import build

    eager, fast = load_pair(compiled_env, str(build("bart", tmp_path / "bart", init_std=0.2)), "fp32")
    assert_compiled_matches_eager(eager, fast)


def test_llm_int8_and_unchecked_families_stay_eager_with_the_reason(compiled_env, tmp_path):
    from transformers import MarianConfig, MarianMTModel

    from quant.seq2seq_decode import seq2seq_refusal

    _, registry = compiled_env
    registry.unload_all()
    loaded = registry.load(LoadRequest(model=T5, mode="int8"))
    assert not loaded.path.compiled and "LLM.int8" in loaded.report.generation_path
    marian = MarianMTModel(MarianConfig(vocab_size=64, pad_token_id=0, decoder_start_token_id=0, d_model=16,
                                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32))
    assert "marian models use the eager path" in seq2seq_refusal(marian)
