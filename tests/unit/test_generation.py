"""Streaming, stopping, and batches that equal one-by-one generation under greedy decoding."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from quant.batching import run_batch
from quant.generation import (
    GenerationError,
    GenerationSettings,
    build_chat_prompt,
    generate_batch,
    stop_token_ids,
    stream_chat,
)
from quant.loader import LoadRequest, load_model
from tests.conftest import LLAMA, T5

CAUSAL_PROMPTS = ["The with statement", "A class definition defines a", "x", "Assignment statements are used to",
                  "The import statement", "Names refer to objects.  Names are introduced by name binding"]
T5_PROMPTS = ["reverse: the value of x", "reverse: a b c d e f g h i j", "reverse: hello", "reverse: one two three"]


@pytest.fixture(scope="module")
def llama():
    return load_model(LoadRequest(model=LLAMA, mode="fp32"))


@pytest.fixture(scope="module")
def t5():
    return load_model(LoadRequest(model=T5, mode="fp32"))


def test_stop_tokens_include_the_templates_end_of_turn(llama):
    vocab = llama.tokenizer.get_vocab()
    assert {vocab["<|eot_id|>"], vocab["<|end_of_text|>"]} <= set(stop_token_ids(llama))


def test_chat_streams_partial_text_token_by_token(llama):
    chunks = list(stream_chat(llama, [{"role": "user", "content": "Explain the with statement in Python."}],
                              system_prompt="You are a helpful assistant who explains the Python language.",
                              settings=GenerationSettings(max_new_tokens=40)))
    texts = [c.text for c in chunks]
    assert len(texts) > 5
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # each chunk extends the one before
    final = chunks[-1]
    assert final.done and 1 <= final.stats.new_tokens <= 40
    assert final.stats.time_to_first_token is not None and final.stats.tokens_per_second > 0
    assert final.stats.mode == "fp32" and final.stats.path == "eager" and not final.notices


def test_chat_uses_the_chat_template(llama):
    from quant.generation import build_chat_prompt

    prompt = build_chat_prompt(llama, [{"role": "user", "content": "hi"}], "Be brief.", 10)
    text = llama.tokenizer.decode(prompt.input_ids[0])
    assert prompt.used_template
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" in text


def test_stop_ends_generation_on_the_server(llama):
    stop = threading.Event()
    seen = []
    started = time.perf_counter()
    for chunk in stream_chat(llama, [{"role": "user", "content": "Explain classes."}],
                             settings=GenerationSettings(max_new_tokens=2000, no_repeat_ngram_size=0), stop=stop):
        seen.append(chunk)
        if len(seen) == 3:
            stop.set()
    assert seen[-1].done and seen[-1].stats.stopped
    assert seen[-1].stats.new_tokens < 100
    assert any("lowered to" in n for n in seen[-1].notices)  # 2000 new tokens do not fit a 512 context
    assert not [t for t in threading.enumerate() if t.name == "quant-chat-generate"]
    assert time.perf_counter() - started < 30


def test_closing_the_stream_stops_the_generation_thread(llama):
    stream = stream_chat(llama, [{"role": "user", "content": "Explain classes."}],
                         settings=GenerationSettings(max_new_tokens=2000))
    next(stream)
    stream.close()  # what Gradio does when the browser goes away
    assert not [t for t in threading.enumerate() if t.name == "quant-chat-generate"]


def test_seq2seq_chat_without_template_streams(t5):
    chunks = list(stream_chat(t5, [{"role": "user", "content": "reverse: the value of x"}],
                              settings=GenerationSettings(max_new_tokens=12)))
    assert chunks[-1].done and chunks[-1].text.strip()
    assert "seq2seq" in chunks[-1].notices[0]


def test_too_long_message_is_refused_with_a_message(llama):
    long = "word " * 600
    with pytest.raises(GenerationError, match="too long for this model.*no room for a reply.*context of 512"):
        list(stream_chat(llama, [{"role": "user", "content": long}], settings=GenerationSettings(max_new_tokens=10)))


def test_a_huge_message_is_refused_before_it_is_tokenized(llama, monkeypatch):
    calls = []
    original = type(llama.tokenizer).apply_chat_template
    monkeypatch.setattr(type(llama.tokenizer), "apply_chat_template",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with pytest.raises(GenerationError, match="too long: 5,000,000 characters; the limit is 200,000"):
        list(stream_chat(llama, [{"role": "user", "content": "x" * 5_000_000}]))
    assert calls == []  # refused on its length alone
    list(stream_chat(llama, [{"role": "user", "content": "short"}], settings=GenerationSettings(max_new_tokens=2)))
    assert calls  # a normal message is encoded with the template


@pytest.mark.parametrize(("message", "system", "expect"), [
    ("x" * 100_000, None, "The message is too long for this model: 100,000 characters.*context of 512"),
    ("hello", "y" * 5_000_000, "The system prompt is too long: 5,000,000 characters"),
    ("hello", "y" * 100_000, "The system prompt is too long for this model: 100,000 characters"),
])
def test_messages_and_system_prompts_past_the_context_are_refused_before_they_are_tokenized(
        llama, monkeypatch, message, system, expect):
    calls = []
    original = type(llama.tokenizer).apply_chat_template
    monkeypatch.setattr(type(llama.tokenizer), "apply_chat_template",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    with pytest.raises(GenerationError, match=expect):
        list(stream_chat(llama, [{"role": "user", "content": message}], system_prompt=system))
    assert calls == []


def test_special_token_strings_in_user_text_stay_text(llama):
    """A user who types the template's end-of-turn marker must not end their own turn with it: their text is encoded
    as text, while the template's own markers stay special tokens."""
    tokenizer = llama.tokenizer
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    plain = build_chat_prompt(llama, [{"role": "user", "content": "Hello there"}], None, 8)
    typed = build_chat_prompt(llama, [{"role": "user", "content": "Hello <|eot_id|> there"}], None, 8)
    template_eots = plain.input_ids[0].tolist().count(eot)
    assert template_eots >= 1  # the template's own turn ends
    assert typed.input_ids[0].tolist().count(eot) == template_eots  # the typed one is not a token
    assert "<|eot_id|>" in tokenizer.decode(typed.input_ids[0], skip_special_tokens=True)
    # Ordinary text encodes exactly as the template alone encodes it.
    want = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)["input_ids"]
    assert torch.equal(plain.input_ids, want)


def test_old_turns_are_dropped_with_a_notice(llama):
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " + "text " * 60},
                    {"role": "assistant", "content": "answer " * 30}]
    history.append({"role": "user", "content": "last question"})
    chunks = list(stream_chat(llama, history, settings=GenerationSettings(max_new_tokens=64)))
    assert any("oldest exchange" in n for n in chunks[-1].notices)


@pytest.mark.parametrize(
    "settings",
    [GenerationSettings(max_new_tokens=-1), GenerationSettings(max_new_tokens=10**6),
     GenerationSettings(do_sample=True, temperature=float("nan")), GenerationSettings(top_p=0),
     GenerationSettings(repetition_penalty=-2.0), GenerationSettings(top_k=-5)],
)
def test_absurd_settings_are_refused(llama, settings):
    with pytest.raises(GenerationError):
        list(stream_chat(llama, [{"role": "user", "content": "hi"}], settings=settings))


def test_sampling_with_a_seed_is_reproducible(llama):
    settings = GenerationSettings(max_new_tokens=20, do_sample=True, temperature=1.0, seed=7)
    history = [{"role": "user", "content": "Explain functions."}]
    first = list(stream_chat(llama, history, settings=settings))[-1].text
    second = list(stream_chat(llama, history, settings=settings))[-1].text
    assert first == second


@pytest.mark.parametrize("batch_size", [2, 6])
def test_greedy_batch_equals_one_by_one_causal(llama, batch_size):
    settings = GenerationSettings(max_new_tokens=16)
    one_by_one = [generate_batch(llama, [p], settings)[0] for p in CAUSAL_PROMPTS]
    rows = list(run_batch(llama, list(enumerate(CAUSAL_PROMPTS, 1)), settings, batch_size=batch_size))[-1].rows
    assert [(r.output, r.new_tokens) for r in rows] == one_by_one


def test_greedy_batch_equals_one_by_one_with_chat_template(llama):
    settings = GenerationSettings(max_new_tokens=12)
    one = [generate_batch(llama, [p], settings, use_chat_template=True)[0] for p in CAUSAL_PROMPTS[:4]]
    assert generate_batch(llama, CAUSAL_PROMPTS[:4], settings, use_chat_template=True) == one


def test_greedy_batch_equals_one_by_one_seq2seq(t5):
    settings = GenerationSettings(max_new_tokens=12)
    one_by_one = [generate_batch(t5, [p], settings)[0] for p in T5_PROMPTS]
    assert generate_batch(t5, T5_PROMPTS, settings) == one_by_one


@pytest.mark.parametrize("engine", ["continuous", "padded"])
def test_batch_reports_progress_and_a_bad_row_by_its_line(llama, engine):
    prompts = [(1, "The with statement"), (3, "word " * 600), (4, "A class definition")]
    progress, filled = [], []  # each table as it was yielded: rows are updated in place
    for p in run_batch(llama, prompts, GenerationSettings(max_new_tokens=8), batch_size=2, engine=engine):
        progress.append(p)
        filled.append([bool(r.output or r.error) for r in p.rows])
    if engine == "padded":  # chunks of 2 from the shortest: the two good prompts, then the bad one alone
        assert [p.done for p in progress] == [2, 3]
    else:  # the bad prompt is refused before anything runs; the others follow as they finish
        assert filled[0] == [False, True, False] and progress[-1].done == 3
        assert all(a.done < b.done for a, b in zip(progress, progress[1:]))
    rows = progress[-1].rows
    assert rows[1].line == 3 and "context" in rows[1].error
    assert rows[0].output and rows[2].output and not rows[0].error
    assert "prompts/s" in progress[-1].totals()


def test_pad_token_is_set_for_a_tokenizer_without_one(llama):
    assert llama.tokenizer.pad_token == llama.tokenizer.eos_token  # the demo Llama ships no pad token


def test_ui_updates_are_coalesced_without_losing_the_first_or_last_chunk(llama):
    from quant.generation import at_most_every

    history = [{"role": "user", "content": "What is a generator?"}]
    every = list(stream_chat(llama, history, settings=GenerationSettings(max_new_tokens=60)))
    coalesced = list(at_most_every(stream_chat(llama, history, settings=GenerationSettings(max_new_tokens=60)),
                                   seconds=10.0))
    assert len(every) > 10
    assert [c.text for c in coalesced] == [every[0].text, every[-1].text]  # first at once, then only the final
    assert coalesced[-1].done and coalesced[-1].stats.new_tokens == every[-1].stats.new_tokens


def test_closing_the_coalesced_stream_stops_generation(llama):
    from quant.generation import at_most_every

    stream = at_most_every(stream_chat(llama, [{"role": "user", "content": "Tell me everything."}],
                                       settings=GenerationSettings(max_new_tokens=400)), seconds=0.0)
    first = next(stream)
    workers = [t for t in threading.enumerate() if t.name == "quant-generate"]
    stream.close()  # what Gradio does when the browser goes away
    for worker in workers:
        worker.join(timeout=5)
    assert workers and not any(w.is_alive() for w in workers)  # stopped long before 400 tokens
    assert first.stats.new_tokens < 400
