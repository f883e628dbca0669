"""Many sessions at once: every request answered or cleanly refused, replies in the right session, bounded memory."""

from __future__ import annotations

import gc

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import serve_in_process
from app_client import run_sessions
from quant.report import process_rss
from tests.conftest import LLAMA
from tests.support.model_tab import load_args


def test_twenty_sessions_chatting_at_once(app_url):
    Client(app_url, verbose=False).predict(*load_args(LLAMA, "nf4"), api_name="/load_model")
    gc.collect()
    rss_before = process_rss()
    result = run_sessions(app_url, sessions=20, turns=2, max_new_tokens=12)
    rss_after = process_rss()
    print("load test:", result.summary(), f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")
    assert result.requests == 40
    assert result.failed == [] and result.wrong_session == 0
    assert result.answered + result.refused_busy == 40 and result.answered >= 20
    assert rss_after - rss_before < 400 * 2**20
    # still serving afterwards
    client = Client(app_url, verbose=False)
    client.predict("hello again", api_name="/chat_add_message")
    assert client.predict("", 8, False, 0.7, 0.9, 50, 1.0, 0, None, api_name="/chat_respond")[-1]["role"] == "assistant"


@pytest.fixture(scope="module")
def small_queue_app(monkeypatch_module):
    """A second server with a queue of 2 and one generation at a time: the overflow must be refused, not hang."""
    monkeypatch_module.setenv("QUANT_QUEUE_SIZE", "2")
    monkeypatch_module.setenv("QUANT_CONCURRENCY", "1")
    with serve_in_process() as url:
        yield url


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_a_full_queue_refuses_cleanly_and_recovers(small_queue_app):
    Client(small_queue_app, verbose=False).predict(*load_args(LLAMA, "nf4"), api_name="/load_model")
    result = run_sessions(small_queue_app, sessions=8, turns=1, max_new_tokens=48)
    print("small queue:", result.summary())
    assert result.failed == [] and result.wrong_session == 0
    assert result.refused_busy >= 1 and result.answered >= 1
    assert result.answered + result.refused_busy == 8
    client = Client(small_queue_app, verbose=False)
    client.predict("after the rush", api_name="/chat_add_message")
    try:
        reply = client.predict("", 8, False, 0.7, 0.9, 50, 1.0, 0, None, api_name="/chat_respond")
    except AppError as exc:  # pragma: no cover - would mean the queue never drained
        pytest.fail(f"the app did not recover: {exc}")
    assert reply[-1]["role"] == "assistant"
