"""The Model tab driven over HTTP with gradio_client, as a remote user would."""

from __future__ import annotations

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA
from tests.support.model_tab import load_args


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def test_load_report_and_unload_over_http(client):
    # gr.State outputs stay on the server: the client sees status, report, dropdown, loaded table, history.
    status, report, dropdown, loaded, history = client.predict(*load_args(LLAMA, "nf4"), api_name="/load_model")
    key = dropdown["value"]  # the dropdown comes back as an update: new choices and the selected key
    assert "loaded" in status and LLAMA in status
    assert "Linear4bit x28" in report and "mode             nf4" in report
    assert "not nf4          the output head, which nf4 leaves unquantized: 1 module" in report  # no other line
    assert report.count("not nf4") == 1
    assert any(row[0] == f"{LLAMA} [nf4]" for row in loaded["data"])
    assert history["data"][-1][1] == "nf4"

    status, _dd, loaded = client.predict(key, api_name="/unload_model")
    assert "Unloaded" in status
    assert all(row[0] != f"{LLAMA} [nf4]" for row in loaded["data"])


def test_measure_modes_fills_the_comparison_table(client):
    status, _dd, _loaded, history = client.predict(["bf16", "nf4"], *load_args(LLAMA, "bf16"),
                                                   api_name="/measure_modes")
    assert "Measured 2 of 2" in status
    rows = {row[1]: row for row in history["data"] if row[0] == LLAMA}  # the latest load of each mode
    footprint = history["headers"].index("footprint (MiB)")
    assert float(rows["bf16"][footprint]) > float(rows["nf4"][footprint])


def test_token_typed_in_the_ui_is_not_sent_back(client):
    outputs = client.predict(*load_args(LLAMA, "fp32", token="hf_dontleakme123"), api_name="/load_model")
    assert "hf_dontleakme123" not in repr(outputs)


def test_the_load_endpoint_takes_the_forms_fields_in_order_or_by_name(client):
    """/load_model's parameters are LoadForm's fields in LoadForm.INPUTS order (what load_args relies on), and a
    client may name only the fields it sets: every other starts at the Model tab's value."""
    from quant.forms import LoadForm

    parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/load_model"]["parameters"]
    assert [p["parameter_name"] for p in parameters] == list(LoadForm.INPUTS)
    assert all(p["parameter_has_default"] for p in parameters)
    status, report, *_ = client.predict(model=LLAMA, mode="int8", int8_threshold=4.0, api_name="/load_model")
    assert f"{LLAMA} [int8]" in status and "llm_int8_threshold=4.0" in report


def test_the_memory_plan_over_http(client):
    """"Fits on your GPUs?" for the form's model and placement, before loading: GPUs named in max_memory need not
    exist here."""
    table = client.predict(model=LLAMA, mode="nf4", max_memory="0=1MiB, 1=1MiB", api_name="/plan_memory")
    assert "within max_memory: GPU 0 1.0 MiB, GPU 1 1.0 MiB" in table
    assert "| mode | fits? | GPU 0 | GPU 1 | left over | total | why |" in table
    assert "| **nf4** | ❌ does not fit |" in table  # no cpu entry: the rest has nowhere to go
    # then the placements the form's mode has on those GPUs, with their costs
    assert "Placements for nf4 on these GPUs:" in table
    assert "- Split over GPUs (device_map): GPU 0 " in table and "(does not fit). One copy of the hidden state" in table
    assert ("- Tensor parallel: runs 16/32-bit weights only; transformers does not shard nf4's quantized weights"
            in table)


def test_a_tensor_parallel_load_chats_and_a_refused_one_says_why(app_url, monkeypatch):
    """device_map=tensor_parallel from the Model tab (2 CPU ranks on this machine): the report says where the slices
    went, the Chat tab answers from the sharded model, and a mode it cannot shard is refused in the status line
    while the app keeps serving. Unloading ends the worker process."""
    import multiprocessing

    monkeypatch.setenv("QUANT_TENSOR_PARALLEL_CPU_RANKS", "2")  # the app is served in this process
    session = Client(app_url, verbose=False)
    with pytest.raises(AppError, match="Tensor parallelism cannot load .* 16/32-bit weights only"):
        session.predict(*load_args(LLAMA, "nf4", device_map="tensor_parallel"), api_name="/load_model")
    status, report, dropdown, _loaded, _history = session.predict(
        *load_args(LLAMA, "fp32", device_map="tensor_parallel"), api_name="/load_model")
    assert "loaded" in status and "tensor parallel: 2 ranks (gloo) on cpu" in report
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("quant-tp-rank")]
    assert len(workers) == 1
    session.predict("Explain the with statement.", api_name="/chat_add_message")
    final = session.predict("", 24, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    text = final[-1]["content"][0]["text"] if isinstance(final[-1]["content"], list) else final[-1]["content"]
    assert "tok/s" in text and len(text) > 40
    status, *_ = session.predict(dropdown["value"], api_name="/unload_model")
    assert "Unloaded" in status and not any(p.is_alive() for p in workers)
