"""The compiled generation path against the eager one, token for token up to numerical noise: the GPU tests
(tests/gpu/) and their CPU twins (tests/unit/test_method_torchao.py). Imports without a GPU."""

from __future__ import annotations

import os

import torch

from quant.generation import GenerationSettings, generate_batch, start_generate, stream_chat
from quant.loader import LoadRequest
from quant.registry import ModelRegistry

PROMPTS = ["The with statement is used to", "A class definition defines", "def main():", "import os"]
NOISE = 0.05
"""Top-1 minus top-2 logit below which the two paths may pick differently: that choice is numerical noise."""
ROUNDINGS = 8
"""In 16-bit arithmetic the noise floor scales with the logits: this many roundings (eps of the logits' dtype) of
the top logit. bf16's eps is 8x fp16's, so a fixed 0.05 is below one bf16 rounding of a logit of 10."""


def load(request: LoadRequest, fast: bool):
    previous = os.environ.get("QUANT_FAST_GENERATION")
    os.environ["QUANT_FAST_GENERATION"] = "all" if fast else "off"
    try:
        return ModelRegistry(max_models=2).load(request)
    finally:
        os.environ.pop("QUANT_FAST_GENERATION") if previous is None else os.environ.update(
            QUANT_FAST_GENERATION=previous)


def greedy_ids(loaded, prompts: list[str], new_tokens: int = 24) -> tuple[torch.Tensor, list[list[int]], bool]:
    """Inputs and greedy new token ids per row through `start_generate` (the path chat and batch use)."""
    encoded = loaded.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(loaded.device)
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=loaded.tokenizer.pad_token_id)
    future, compiled = start_generate(loaded, kwargs, batch_size=len(prompts),
                                      total_tokens=encoded["input_ids"].shape[1] + new_tokens)
    out = future.result()[:, encoded["input_ids"].shape[1]:]
    return encoded, out.tolist(), compiled


def assert_same_up_to_noise(eager, encoded, row: int, expected: list[int], got: list[int]) -> None:
    """Equal greedy tokens, or a first difference where eager's top two logits are within NOISE of each other."""
    if expected == got:
        return
    split = next(i for i, (x, y) in enumerate(zip(expected, got)) if x != y)
    prompt = encoded["input_ids"][row]  # a first difference at token 0 leaves no tokens to add: keep the ids' dtype
    ids = torch.cat([prompt, torch.tensor(expected[:split], dtype=prompt.dtype, device=eager.device)])
    mask = torch.cat([encoded["attention_mask"][row], torch.ones(split, dtype=torch.long, device=eager.device)])
    with torch.inference_mode():
        logits = eager.model(input_ids=ids[None], attention_mask=mask[None]).logits[0, -1]
    assert_near_tie(logits, split, expected, got)


def assert_near_tie(logits: torch.Tensor, split: int, expected: list[int], got: list[int]) -> None:
    """Eager's next-token `logits` where two paths' greedy tokens first part (token `split`): its top two within
    noise of each other, so that either path's choice is one eager could make."""
    top = logits.float().topk(2).values
    tolerance = max(NOISE, ROUNDINGS * torch.finfo(logits.dtype).eps * top[0].abs().item())
    gap = (top[0] - top[1]).item()
    assert gap < tolerance, f"the paths diverged at a clear choice (token {split}, top-2 gap {gap:.4f} >= " \
                            f"{tolerance:.4f} in {logits.dtype}):\n{expected}\n{got}"


def assert_each_token_is_an_eager_choice(eager, prompt_ids: torch.Tensor, got: list[int]) -> None:
    """Every token of `got` is, after the tokens before it, eager's most likely one up to noise (one eager forward
    over the whole sequence). Stricter than `assert_same_up_to_noise`, which can judge the first difference only:
    a path that goes wrong after a near-tie is caught too."""
    ids = torch.cat([prompt_ids.reshape(-1), torch.tensor(got[:-1], dtype=prompt_ids.dtype, device=prompt_ids.device)])
    with torch.inference_mode():
        logits = eager.model(input_ids=ids[None]).logits[0, prompt_ids.numel() - 1:].float()
    top = logits.max(dim=-1).values
    below = top - logits[torch.arange(len(got)), torch.tensor(got, device=logits.device)]
    tolerance = torch.clamp(ROUNDINGS * torch.finfo(eager.model.dtype).eps * top.abs(), min=NOISE)
    worst = int((below - tolerance).argmax())
    assert (below < tolerance).all(), (f"{int((below >= tolerance).sum())} token(s) past noise below eager's choice, "
                                       f"the worst {worst} ({got[worst]}: {below[worst]:.4f} below "
                                       f"{int(logits[worst].argmax())}):\n{got}")


def assert_compiled_rows_match(eager, fast, prompts: list[str]) -> None:
    """`fast` runs `prompts` on its compiled path, `eager` on the eager one, and each row's greedy tokens agree up to
    noise (`assert_same_up_to_noise`)."""
    encoded, expected, eager_compiled = greedy_ids(eager, prompts)
    _, got, compiled = greedy_ids(fast, prompts)
    assert compiled and not eager_compiled
    for row, (want, have) in enumerate(zip(expected, got)):
        assert_same_up_to_noise(eager, encoded, row, want, have)


def check_against_eager(request: LoadRequest):
    """The compiled path of `request` against its eager path (batch 1, a padded batch, a chat); returns the compiled
    model (its compiled state closed) for checks of its report."""
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert not eager.path.compiled and eager.path.reason == "QUANT_FAST_GENERATION=off"
    assert fast.path.compiled and fast.path.captured, fast.path.describe()
    assert "one CUDA graph per step" in fast.report.generation_path
    # every model given here keeps its layers at model.layers: one compiled layer for all, unless the operator says not
    regional = os.environ.get("QUANT_COMPILE_REGIONS", "layers") == "layers"
    assert ("one compiled decoder layer for all layers" in fast.report.generation_path) == regional
    assert fast.report.compile_seconds > 0 and fast.report.static_cache_bytes > 0
    # Batch 1 (the chat path) and a batch of 3 padded up to the compiled 4 as generate_batch does.
    for prompts in ([PROMPTS[0]], [PROMPTS[1]], PROMPTS[:3] + [PROMPTS[2]]):
        assert_compiled_rows_match(eager, fast, prompts)
    settings = GenerationSettings(max_new_tokens=24)
    # generate_batch pads 3 prompts to the compiled 4 with a copy and drops its row: same as sending the 4 ourselves.
    assert generate_batch(fast, PROMPTS[:3], settings) == generate_batch(fast, PROMPTS[:3] + [PROMPTS[2]], settings)[:3]
    reply = list(stream_chat(fast, [{"role": "user", "content": PROMPTS[0]}], settings=settings))[-1]
    assert reply.stats.path == "compiled" and reply.text
    fast.path.close()
    return fast


# --- seq2seq (quant/seq2seq_decode.py) --------------------------------------------------------------------------------

SEQ2SEQ_PROMPTS = ["translate English to German: the house", "summarize: the with statement wraps a block", "x",
                   "def main(): return 1"]
"""Ragged prompts (2 to 14 tokens of the demo tokenizers): a batch pads them, on the right for seq2seq."""


def seq2seq_greedy_ids(loaded, prompts: list[str], new_tokens: int = 24) -> tuple[dict, list[list[int]], bool]:
    """Encoder inputs (padded right) and the greedy decoder tokens after the start token per row, through
    `start_generate`, and whether the compiled path ran them."""
    from quant.generation import cache_tokens

    encoded = loaded.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right").to(loaded.device)
    # Plain greedy: the checkpoint's n-gram blocking (bart-large-cnn's 3) would ban tokens by history, and the noise
    # rule below judges the raw logits.
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, num_beams=1, no_repeat_ngram_size=0, repetition_penalty=1.0,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    future, compiled = start_generate(loaded, kwargs, batch_size=len(prompts),
                                      total_tokens=cache_tokens(loaded, encoded["input_ids"].shape[1], new_tokens))
    return encoded, future.result()[:, 1:].tolist(), compiled


def assert_seq2seq_same_up_to_noise(eager, encoded, row: int, expected: list[int], got: list[int]) -> None:
    """`assert_same_up_to_noise` for an encoder-decoder model: equal tokens, or a first difference where eager's top
    two logits after the same decoder tokens are within noise of each other."""
    if expected == got:
        return
    split = next(i for i, (x, y) in enumerate(zip(expected, got)) if x != y)
    start = eager.model.generation_config.decoder_start_token_id
    decoder = torch.tensor([[start, *expected[:split]]], device=eager.device)
    with torch.inference_mode():
        logits = eager.model(input_ids=encoded["input_ids"][row:row + 1],
                             attention_mask=encoded["attention_mask"][row:row + 1],
                             decoder_input_ids=decoder).logits[0, -1]
    assert_near_tie(logits, split, expected, got)


def check_seq2seq_against_eager(request: LoadRequest) -> None:
    """The compiled seq2seq path (captured on CUDA) against eager: batch 1, a ragged batch of 4 and 3 padded to 4,
    greedy up to noise; a chat reply on the compiled path."""
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert not eager.path.compiled and eager.path.reason == "QUANT_FAST_GENERATION=off"
    on_cuda = torch.device(fast.device).type == "cuda"
    assert fast.path.compiled and fast.path.captured == on_cuda, fast.path.describe()
    assert ("one CUDA graph per step" in fast.report.generation_path) == on_cuda
    assert fast.report.compile_seconds > 0 and fast.report.static_cache_bytes > 0
    for prompts in ([SEQ2SEQ_PROMPTS[0]], SEQ2SEQ_PROMPTS, SEQ2SEQ_PROMPTS[:3] + [SEQ2SEQ_PROMPTS[2]]):
        encoded, expected, eager_compiled = seq2seq_greedy_ids(eager, prompts)
        _, got, compiled = seq2seq_greedy_ids(fast, prompts)
        assert compiled and not eager_compiled
        for row, (want, have) in enumerate(zip(expected, got)):
            assert_seq2seq_same_up_to_noise(eager, encoded, row, want, have)
    settings = GenerationSettings(max_new_tokens=24)
    assert generate_batch(fast, SEQ2SEQ_PROMPTS[:3], settings) == \
        generate_batch(fast, SEQ2SEQ_PROMPTS[:3] + [SEQ2SEQ_PROMPTS[2]], settings)[:3]
    reply = list(stream_chat(fast, [{"role": "user", "content": SEQ2SEQ_PROMPTS[0]}], settings=settings))[-1]
    assert reply.stats.path == "compiled" and reply.text
    fast.path.close()
