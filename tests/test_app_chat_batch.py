"""Chat and Batch tabs over HTTP with gradio_client: streaming, stop, batch results and downloads."""

from __future__ import annotations

import csv
import json
import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA
from tests.test_app_model_tab import load_args

# max new tokens, sample, temperature, top-p, top-k, repetition penalty, no-repeat n-gram, seed
GREEDY = (48, False, 0.7, 0.9, 50, 1.0, 0, None)


@pytest.fixture
def session(app_url):
    """A fresh browser-like session with the demo Llama loaded as its model."""
    client = Client(app_url, verbose=False)
    client.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    return client


def test_one_chat_turn_streams(session):
    box, shown = session.predict("Explain the with statement.", api_name="/chat_add_message")
    assert box == "" and shown[-1]["role"] == "user"
    job = session.submit("You are a helpful assistant who explains the Python language.", *GREEDY,
                         api_name="/chat_respond")
    final = job.result()
    updates = job.outputs()
    assert len(updates) > 3  # partial replies arrived before the whole one
    reply = final[-1]
    assert reply["role"] == "assistant"
    text = reply["content"][0]["text"] if isinstance(reply["content"], list) else reply["content"]
    assert "tok/s" in text and "bf16" in text and "first token" in text


def test_stop_ends_the_reply_on_the_server(session):
    from quant.registry import default_registry

    session.predict("Explain classes at length.", api_name="/chat_add_message")
    job = session.submit("", 2000, False, 0.7, 0.9, 50, 1.0, 0, None, api_name="/chat_respond")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    session.predict(api_name="/stop")
    final = job.result(timeout=60)
    text = final[-1]["content"][0]["text"] if isinstance(final[-1]["content"], list) else final[-1]["content"]
    assert "stopped" in text
    key = default_registry().loaded()[-1].key
    assert default_registry().in_use(key) == 0  # the lease was returned: the server stopped working


def test_chat_without_a_message_is_refused(session):
    with pytest.raises(AppError, match="Type a message first"):
        session.predict("   ", api_name="/chat_add_message")


def test_absurd_settings_get_a_message(session):
    session.predict("hello", api_name="/chat_add_message")
    with pytest.raises(AppError, match="less than minimum value 1"):  # the slider's own validation
        session.predict("", 0, False, 0.7, 0.9, 50, 1.0, 0, None, api_name="/chat_respond")
    with pytest.raises(AppError, match="greater than maximum value 2"):
        session.predict("", 10, True, 50.0, 0.9, 50, 1.0, 0, None, api_name="/chat_respond")
    final = session.predict("", *GREEDY, api_name="/chat_respond")  # and the app still answers
    assert final[-1]["role"] == "assistant"


def test_batch_from_pasted_text_with_downloads(session):
    table, totals, files = session.predict(
        "The with statement\n\nA class definition\nAssignment statements", None, "", False, "", 2, *GREEDY,
        api_name="/run_batch")
    rows = table["data"]
    assert [r[0] for r in rows] == [1, 3, 4]
    assert all(r[2] for r in rows) and "3/3 prompts" in totals and "prompts/s" in totals
    by_suffix = {f.rsplit(".", 1)[1]: f for f in files}
    with open(by_suffix["csv"], newline="") as f:
        assert [r["prompt"] for r in csv.DictReader(f)] == ["The with statement", "A class definition",
                                                            "Assignment statements"]
    with open(by_suffix["jsonl"]) as f:
        assert [json.loads(line)["line"] for line in f] == [1, 3, 4]


def test_batch_from_an_uploaded_jsonl_file(session, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "The import statement"}\n{"prompt": "A function definition"}\n')
    table, totals, _files = session.predict("", handle_file(str(path)), "", True, "Be brief.", 4, *GREEDY,
                                            api_name="/run_batch")
    assert len(table["data"]) == 2 and "2/2 prompts" in totals


def test_malformed_upload_is_reported_by_line(session, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(AppError, match="Line 2 of bad.jsonl is not valid JSON"):
        session.predict("", handle_file(str(path)), "", False, "", 4, *GREEDY, api_name="/run_batch")


def test_compare_tab_over_http(app_url):
    client = Client(app_url, verbose=False)
    table, plot, answers, files = client.predict(
        LLAMA, ["bf16", "nf4"], "/no/such/gptq", "", [], "The with statement\nA class", 2, 8, api_name="/compare")
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == {"bf16", "nf4", "gptq:/no/such/gptq"}
    assert "No such folder" in rows["gptq:/no/such/gptq"][1]
    assert rows["bf16"][2] > rows["nf4"][2]
    assert "<mark>" in answers or "Greedy answers" in answers
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["csv", "json"]


def test_push_only_from_the_output_folder(app_url, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_OUTPUT_DIR", str(tmp_path / "outputs"))
    client = Client(app_url, verbose=False)
    for folder in ("/etc", str(tmp_path / "outputs" / ".." / "elsewhere"), ""):
        with pytest.raises(AppError, match="Only folders under the output directory"):
            client.predict(folder, "alice/x", True, False, "hf_secret_typed_token", api_name="/push")
