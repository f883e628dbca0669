"""Stopping a running batch over HTTP: the Batch tab's Stop button, and a client that cancels its job.

Either way the server must stop generating (not just stop sending): the batch ends early, its model lease is
returned, and the app serves the next request. Stop is per browser session (keyed by its session hash), so another
session's batch runs on.
"""

from __future__ import annotations

import time

import pytest
from gradio_client import Client
from gradio_client.client import Job
from gradio_client.utils import Status

from tests.conftest import LLAMA
from tests.support.model_tab import load_args
from tests.support.streams import updates_with_values

PROMPT_COUNT = 1000  # the batch limit: at one prompt a batch, running them all would take many minutes
PROMPTS = "\n".join(f"Explain Python statement number {i} in detail." for i in range(PROMPT_COUNT))
# max new tokens, sample, temperature, top-p, top-k, repetition penalty, no-repeat n-gram, seed ("": none)
LONG = (200, False, 0.7, 0.9, 50, 1.0, 0, "")
SHORT = (4, False, 0.7, 0.9, 50, 1.0, 0, "")
WAIT_S = 120


def _session(app_url: str) -> Client:
    """A browser-like session whose model is the demo Llama."""
    client = Client(app_url, verbose=False, download_files=False)
    client.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    return client


@pytest.fixture
def session(app_url) -> Client:
    return _session(app_url)


@pytest.fixture
def llama_key(session) -> str:
    from quant.registry import default_registry

    return next(m.key for m in default_registry().loaded() if m.label == f"{LLAMA} [bf16]")


def press_batch_stop(session: Client) -> None:
    """The Batch tab's Stop button, by its API name, in the same session as the running batch."""
    session.predict(api_name="/batch_stop")


def wait_for_first_rows(job: Job) -> None:
    """Until the batch has yielded a table (its first prompt is done): it is running on the server."""
    deadline = time.monotonic() + WAIT_S
    while not updates_with_values(job):
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.02)


def serves_a_new_batch(session: Client) -> None:
    _table, totals, files = session.predict("The with statement\nA class definition", None, "", False, "", 2,
                                            *SHORT, api_name="/run_batch")
    assert totals.startswith("2/2 prompts") and "stopped" not in totals and len(files) == 2


def test_the_batch_stop_button_ends_the_batch_on_the_server(app_url, session, llama_key):
    from quant.registry import default_registry

    job = session.submit(PROMPTS, None, "", False, "", 1, *LONG, api_name="/run_batch")
    wait_for_first_rows(job)
    other = _session(app_url)  # another visitor's batch, started before the Stop: it must not be stopped
    other_job = other.submit("The with statement\nA class definition", None, "", False, "", 2, *SHORT,
                             api_name="/run_batch")
    press_batch_stop(session)

    table, totals, files = job.result(timeout=WAIT_S)
    done = int(totals.split("/", 1)[0])
    assert totals.endswith("· stopped") and f"/{PROMPT_COUNT} prompts" in totals and 1 <= done < PROMPT_COUNT
    rows = table["data"]
    assert all(row[2] for row in rows[:done - 1])  # the finished prompts kept their answers (the last is cut short)
    assert not any(row[2] or row[3] for row in rows[done:])  # and nothing after the stop was generated
    assert len(files) == 2  # the partial results still come as CSV and JSONL

    _table, other_totals, _files = other_job.result(timeout=WAIT_S)
    assert other_totals.startswith("2/2 prompts") and "stopped" not in other_totals
    assert default_registry().in_use(llama_key) == 0  # both batches returned their lease
    serves_a_new_batch(session)


def test_a_cancelled_batch_job_stops_generating_on_the_server(session, llama_key):
    """A client that cancels (a closed tab does the same): the server ends the batch at the current prompt."""
    from quant.registry import default_registry

    registry = default_registry()
    job = session.submit(PROMPTS, None, "", False, "", 1, *LONG, api_name="/run_batch")
    wait_for_first_rows(job)
    assert registry.in_use(llama_key) == 1
    assert job.cancel()
    # The batch holds its model lease until it ends; the whole batch would take many minutes, so the lease coming
    # back within WAIT_S means the server stopped generating, not just sending.
    deadline = time.monotonic() + WAIT_S
    while registry.in_use(llama_key):
        assert time.monotonic() < deadline, "the server is still running the cancelled batch"
        time.sleep(0.05)
    assert job.status().code is Status.CANCELLED
    serves_a_new_batch(session)
