"""The continuous batching engine (quant.batching) against generation one prompt at a time, token for token up to
numerical noise: the CPU tests (tests/unit/test_batching.py) and the GPU ones (tests/gpu/test_gpu_batching.py)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from quant.batching import encode_prompts, stream_continuous
from quant.generation import GenerationSettings, generate_batch
from tests.conftest import CALIBRATION_TEXT
from tests.support.fastpath import assert_same_up_to_noise, greedy_ids

_WORDS = CALIBRATION_TEXT.read_text().split()
RAGGED = [" ".join(_WORDS[1000 + 500 * i:1000 + 500 * i + n]) for i, n in enumerate([120, 3, 200, 10, 1, 40])]
"""Prompts of 170, 8, 435, 14, 4 and 63 tokens with the demo tokenizer (the demo Llama's context is 512)."""


def continuous_ids(loaded, prompts: list[str], new_tokens: int, concurrency: int) -> list[list[int]]:
    """Each prompt's `new_tokens` greedy tokens (stop tokens ignored) from one continuous-batching job."""
    encoded = encode_prompts(loaded, prompts, False, None)
    replies: dict[int, list[int]] = {}
    for finished in stream_continuous(loaded, list(enumerate(encoded)), GenerationSettings(max_new_tokens=new_tokens),
                                      concurrency=concurrency, stop=threading.Event(), ignore_eos=True):
        assert not any(r.error for r in finished), [r.error for r in finished]
        replies.update({r.index: list(r.token_ids) for r in finished})
    return [replies[i] for i in range(len(prompts))]


def assert_continuous_matches_one_by_one(loaded, prompts: list[str], *, concurrency: int,
                                         new_tokens: int = 16) -> int:
    """The continuous engine's greedy tokens for `prompts`, `concurrency` at a time, against `generate` on each prompt
    alone: equal, or first different where the one-by-one run's top two logits are within noise of each other (any
    change of arithmetic, a padded batch's too, may pick either there). Returns how many replies are equal whole."""
    got = continuous_ids(loaded, prompts, new_tokens, concurrency)
    equal = 0
    for prompt, have in zip(prompts, got):
        encoded, [want], _ = greedy_ids(loaded, [prompt], new_tokens)
        assert len(have) == new_tokens
        assert_same_up_to_noise(loaded, encoded, 0, want, have)
        equal += want == have
    return equal


@contextmanager
def recorded_forwards(model) -> Iterator[list[tuple[int, int]]]:
    """The (rows, positions) of every forward `model` runs inside the block: how a batch was prefilled (quant.ragged's
    groups, or one forward over the padded batch) and then decoded (one position a step)."""
    shapes: list[tuple[int, int]] = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        yield shapes
    finally:
        hook.remove()


def prefilled_both_ways(loaded, prompts: list[str], settings: GenerationSettings, monkeypatch):
    """One padded batch generated twice: prefilled whole (QUANT_BATCH_PREFILL=padded), then in groups (grouped).
    Returns ((replies, forward shapes) whole, (replies, forward shapes) grouped), shapes as `recorded_forwards`."""
    runs = []
    for prefill in ("padded", "grouped"):
        monkeypatch.setenv("QUANT_BATCH_PREFILL", prefill)
        with recorded_forwards(loaded.model) as shapes:
            runs.append((generate_batch(loaded, prompts, settings), shapes))
    return tuple(runs)
