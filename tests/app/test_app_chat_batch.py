"""Chat and Batch tabs over HTTP with gradio_client: streaming, stop, batch results and downloads."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA
from tests.support.model_tab import load_args
from tests.support.streams import updates_with_values

# max new tokens, sample, temperature, top-p, top-k, repetition penalty, no-repeat n-gram, seed ("": the untouched
# Seed box, no seed)
GREEDY = (48, False, 0.7, 0.9, 50, 1.0, 0, "")
SAMPLED = (48, True, 1.5, 1.0, 0, 1.0, 0)  # wide sampling: two unseeded replies all but surely differ


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
    job = session.submit("", 2000, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and time.time() < deadline:
        time.sleep(0.05)
    session.predict(api_name="/stop")
    final = job.result(timeout=60)
    text = final[-1]["content"][0]["text"] if isinstance(final[-1]["content"], list) else final[-1]["content"]
    assert "stopped" in text
    key = default_registry().loaded()[-1].key
    assert default_registry().in_use(key) == 0  # the lease was returned: the server stopped working


def reply_text(messages) -> str:
    """The last reply without its footer (which has timings)."""
    content = messages[-1]["content"]
    text = content[0]["text"] if isinstance(content, list) else content
    return text.rsplit("\n\n---\n", 1)[0]


def test_a_seed_repeats_a_sampled_reply_and_no_seed_does_not(session, app_url):
    def sampled_reply(seed) -> str:
        client = Client(app_url, verbose=False)  # a fresh conversation, answered by the session's loaded model
        client.predict("Explain the with statement.", api_name="/chat_add_message")
        return reply_text(client.predict("", *SAMPLED, seed, api_name="/chat_respond"))

    seeded = sampled_reply(" 1234 ")
    assert seeded and sampled_reply("1234") == seeded
    unseeded = [sampled_reply(""), sampled_reply("")]
    assert unseeded[0] != unseeded[1]


def test_absurd_settings_get_a_message(session):
    session.predict("hello", api_name="/chat_add_message")
    with pytest.raises(AppError, match="less than minimum value 1"):  # the slider's own validation
        session.predict("", 0, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    with pytest.raises(AppError, match="greater than maximum value 2"):
        session.predict("", 10, True, 50.0, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    for seed in ("1.5", "abc", "-1", str(2**32)):
        with pytest.raises(AppError, match="Seed must be a whole number from 0 to 4294967295, or empty"):
            session.predict("", *SAMPLED, seed, api_name="/chat_respond")
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


def test_compare_every_mode_button_ticks_what_runs_here(app_url):
    from quant.methods import modes_that_run_here

    ticked = Client(app_url, verbose=False).predict(api_name="/compare_every_mode")
    assert ticked == modes_that_run_here(on_cuda=False) and "fp8" not in ticked and "torchao_int4" in ticked


def test_compare_tab_over_http(app_url):
    client = Client(app_url, verbose=False)
    table, *plots, kl_plot, quality, answers, files = client.predict(
        LLAMA, ["bf16", "nf4"], "/no/such/gptq", "", [], "The with statement\nA class", 2, 8, api_name="/compare")
    rows = {row[0]: row for row in table["data"]}
    # next-token quality against bf16: the new columns, the verdict line with its thresholds and windows, KL plot
    col = {name: table["headers"].index(name) for name in ("ppl ratio", "KL mean", "KL p99", "top-1 (%)", "Δp mean",
                                                             "Δp p1", "verdict")}
    bf16, nf4 = rows["bf16"], rows["nf4"]
    assert bf16[col["KL mean"]] == 0 and bf16[col["top-1 (%)"]] == 100 and bf16[col["ppl ratio"]] == 1
    assert nf4[col["KL p99"]] >= nf4[col["KL mean"]] > 0 and 50 < nf4[col["top-1 (%)"]] < 100
    assert nf4[col["Δp p1"]] < 0 and 0.9 < nf4[col["ppl ratio"]] < 1.2 and nf4[col["Δp mean"]] is not None
    assert bf16[col["verdict"]] == "top-1 agreement 100.0%, KL 0.0000: close to bf16"
    assert nf4[col["verdict"]].startswith("top-1 agreement ") and nf4[col["verdict"]].endswith("bf16")
    assert rows["gptq:/no/such/gptq"][col["verdict"]] == ""
    assert "windows of 512 tokens, stride 512" in quality and "close: top-1 ≥ 95% and mean KL ≤ 0.02" in quality
    assert nf4[col["verdict"]] in quality
    points = kl_plot["value"]["data"]
    assert {p[0] for p in points} == {"bf16", "nf4"} and len(points) == 16  # 8 windows a mode
    assert [p[1] for p in points if p[0] == "nf4"] == list(range(0, 4096, 512))
    assert all(p[2] == 0 for p in points if p[0] == "bf16") and all(p[2] > 0 for p in points if p[0] == "nf4")
    # one plot per metric (memory, decode, batch, perplexity): a bar per mode that ran, relative to bf16
    # (each an update that also carries the colour of every mode so far, which makes the plot redraw its legend)
    assert len(plots) == 4
    assert all([row[0] for row in plot["value"]["data"]] == ["bf16", "nf4"] for plot in plots), plots
    assert all(plot["color_map"].keys() == {"bf16", "nf4"} and len(set(plot["color_map"].values())) == 2
               for plot in plots), plots
    memory = dict(plots[0]["value"]["data"])
    assert memory["bf16"] == 1.0 and 0 < memory["nf4"] < 1
    assert set(rows) == {"bf16", "nf4", "gptq:/no/such/gptq"}
    assert "is not a model this server can load" in rows["gptq:/no/such/gptq"][1]  # local folders are off
    assert rows["bf16"][2] > rows["nf4"][2]
    path = table["headers"].index("generation path")
    assert all(rows[m][path].startswith("eager (CPU") for m in ("bf16", "nf4"))  # which path, and why not compiled
    assert "<mark>" in answers or "Greedy answers" in answers
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["csv", "json"]


def test_a_cancelled_compare_stops_after_its_current_mode_and_the_next_one_waits_for_it(app_url):
    """A client that cancels (a closed tab does the same): the cancel is answered at once (gradio_client gives it 5 s)
    and the server measures no further mode, though each takes seconds. Gradio frees the tab for the next comparison
    at once; that one starts loading only after the cancelled one has ended its mode (never two compared models held
    at once)."""
    from quant.registry import default_registry

    registry = default_registry()
    before = {m.key for m in registry.loaded()}
    cancelled, modes = Client(app_url, verbose=False), ["bf16", "nf4", "fp4", "fp32"]
    job = cancelled.submit(LLAMA, modes, "", "", [], "The with statement\nA class", 2, 512, api_name="/compare")
    deadline = time.monotonic() + 120
    while not updates_with_values(job):  # the first mode's row: the comparison runs on the server
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.05)
    assert job.cancel()
    following = Client(app_url, verbose=False).submit(LLAMA, ["fp32"], "", "", [], "A class", 1, 4,
                                                      api_name="/compare")
    most_held = 0
    while not following.done():
        most_held = max(most_held, len({m.key for m in registry.loaded()} - before))
        assert time.monotonic() < deadline
        time.sleep(0.01)
    table, *_ = following.result()
    assert [row[0] for row in table["data"]] == ["fp32"] and not table["data"][0][1]  # measured, no error
    assert most_held == 1
    assert not any(thread.name == "quant-background" for thread in threading.enumerate())
    loads = [report.mode for report in registry.history(f"session:{cancelled.session_hash}")]
    assert 1 <= len(loads) < len(modes), loads  # bf16 (the reference, kept for its row), at most the next mode
