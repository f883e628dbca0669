"""The OpenAI-compatible API, driven by the real `openai` client against the app served on a free port."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from gradio_client import Client

from quant.generation import GenerationSettings, stream_chat, stream_completion
from quant.registry import default_registry
from tests.conftest import LLAMA
from tests.support.model_tab import load_args

KEY = "sk-test-operator-key-0123456789"
MODEL = f"{LLAMA} [bf16]"
QUESTION = [{"role": "user", "content": "Explain the with statement."}]


@pytest.fixture(scope="module")
def served(app_url):
    """The app with the demo Llama loaded (bf16) and the API turned on with an operator key."""
    Client(app_url, verbose=False).predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANT_API_KEY", KEY)
        yield app_url


@pytest.fixture
def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served + "v1", api_key=KEY, max_retries=0, timeout=120)


def direct(messages, max_new_tokens: int) -> str:
    """What `quant` itself answers, greedily, on the same loaded model."""
    registry = default_registry()
    key = next(m.key for m in registry.loaded() if m.label == MODEL)
    with registry.use(key) as loaded:
        return list(stream_chat(loaded, messages, settings=GenerationSettings(max_new_tokens=max_new_tokens)))[-1].text


def test_models_lists_the_shared_loaded_models(client):
    assert MODEL in [m.id for m in client.models.list()]


def test_a_chat_answer_is_quants_own_greedy_answer_streamed_or_not(client):
    want = direct(QUESTION, 24)
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    assert reply.choices[0].message.content == want and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens == 24 and reply.usage.prompt_tokens > 0
    assert reply.choices[0].finish_reason == "length"  # 24 tokens, then the limit

    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24


def test_a_completion_continues_the_text_without_a_template(client):
    registry = default_registry()
    key = next(m.key for m in registry.loaded() if m.label == MODEL)
    with registry.use(key) as loaded:
        want = list(stream_completion(loaded, "def main():", settings=GenerationSettings(max_new_tokens=12)))[-1].text
    reply = client.completions.create(model=MODEL, prompt="def main():", temperature=0, max_tokens=12)
    assert reply.choices[0].text == want and reply.usage.completion_tokens == 12


def test_stop_sequences_cut_the_answer_before_them(client):
    whole = direct(QUESTION, 48)
    stop = next(word for word in whole.split() if len(word) > 3 and whole.index(word) > 5)  # a word mid-answer
    want = whole[:whole.index(stop)]
    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48, stop=[stop])
    assert reply.choices[0].message.content == want and reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=48, stop=stop,
                                            stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == want and stop not in streamed


@pytest.mark.parametrize(("change", "status", "message"), [
    (dict(temperature=5), 400, "'temperature' must be between 0.0 and 2.0"),
    (dict(max_tokens=0), 400, "'max_tokens' must be between 1"),
    (dict(n=2), 400, "Only n=1 is supported"),
    (dict(stop=["a", "b", "c", "d", "e"]), 400, "'stop' must be a string or a list of at most 4"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "only text content parts"),
    (dict(model="no/such-model [bf16]"), 404, "is not loaded on this server"),
])
def test_bad_requests_get_openais_error_shape(client, change, status, message):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**{"model": MODEL, "messages": QUESTION, "max_tokens": 4, **change})
    assert info.value.status_code == status and message in info.value.message
    body = info.value.body  # the client unwraps OpenAI's {"error": {"message", "type", "param", "code"}}
    assert message in body["message"] and body["type"] in ("invalid_request_error", "not_found_error")
    assert "param" in body and "code" in body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_prompt_too_long_for_the_context_is_a_400_streamed_or_not(client, stream):
    """The streamed response starts once the generation accepts the request (so its headers travel during the
    prefill): a request the generation refuses still gets its HTTP status, not a 200 with an error inside."""
    long = " ".join(["word"] * 2000)  # the demo Llama's context is 512 tokens
    with pytest.raises(openai.BadRequestError, match="too long") as info:
        reply = client.completions.create(model=MODEL, prompt=long, max_tokens=4, stream=stream)
        if stream:
            list(reply)
    assert info.value.status_code == 400


def test_a_wrong_key_is_refused_and_no_key_means_the_api_is_off(served, monkeypatch):
    wrong = openai.OpenAI(base_url=served + "v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Invalid API key"):
        wrong.models.list()
    monkeypatch.delenv("QUANT_API_KEY")
    with pytest.raises(openai.PermissionDeniedError, match="off on this server.*QUANT_API_KEY"):
        openai.OpenAI(base_url=served + "v1", api_key=KEY, max_retries=0).models.list()


def test_a_client_that_disconnects_stops_its_generation(client):
    registry = default_registry()
    key = next(m.key for m in registry.loaded() if m.label == MODEL)
    started = time.perf_counter()
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=400)
    full_seconds = time.perf_counter() - started
    assert whole.usage.completion_tokens > 100, whole.usage  # long enough to tell a stop from an ending
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=400,
                                            stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert registry.in_use(key) == 1
    stream.close()  # the client goes away after its first words
    closed = time.perf_counter()
    while registry.in_use(key) and time.perf_counter() - closed < full_seconds:
        time.sleep(0.02)
    released = time.perf_counter() - closed
    assert registry.in_use(key) == 0 and released < full_seconds / 2, (released, full_seconds)


def test_twenty_concurrent_streams_are_answered_or_cleanly_refused_and_the_ui_keeps_serving(client, served):
    results: list[str] = []

    def ask() -> None:
        try:
            stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=16,
                                                    stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            results.append("answered" if text else "empty")
        except openai.RateLimitError:
            results.append("refused")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            results.append(f"failed: {exc!r}")

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    ui = Client(served, verbose=False)
    dropdown, _loaded, _history = ui.predict(api_name="/refresh")  # the UI answers meanwhile
    assert any(MODEL == c[0] for c in dropdown["choices"])
    for thread in threads:
        thread.join(timeout=300)
    assert len(results) == 20 and set(results) <= {"answered", "refused"}, results
    assert results.count("answered") >= 4
