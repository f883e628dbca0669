"""The Quantize tab over HTTP while it runs: gptqmodel's error per module reaches the plot layer by layer (the
/quantize endpoint streams: the updates before the last carry the plot alone), and Stop, or a client that cancels,
ends the quantization on the server with nothing saved.
"""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA
from tests.support.streams import updates_with_values

# method, bits, group size, act-order, symmetric, damp, samples, sample length, calibration source, text, file.
# 32 samples of 256 tokens take ~1.4 s a layer on 2 CPU cores: the stop lands while the 4 layers are quantized.
RECIPE = ("gptq", 4, 128, False, True, 0.05, 32, 256, "builtin", "", None)
MODULES = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"}
WAIT_S = 120


@pytest.fixture(scope="module")
def outputs(app_url, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("quantize-outputs")
        mp.setenv("QUANT_OUTPUT_DIR", str(folder))
        yield folder


def first_plot_update(job) -> tuple:
    """Until the run has streamed its first update: the first layer's errors."""
    deadline = time.monotonic() + WAIT_S
    while not updates_with_values(job):
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.02)
    return updates_with_values(job)[0]


def plot_rows(update: dict) -> list[list]:
    return update["value"]["data"]


def saved(outputs) -> list:
    return [p for p in outputs.rglob("*GPTQ*")]


def test_the_plot_grows_layer_by_layer_and_stop_ends_the_quantization(app_url, outputs):
    client = Client(app_url, verbose=False, download_files=False)
    job = client.submit(LLAMA, "", "", *RECIPE, api_name="/quantize")
    first = first_plot_update(job)
    client.predict(api_name="/quantize_stop")  # the tab's Stop button, in the same session
    assert first[:5] == ({"__type__": "update"},) * 5  # status, table, folder, files, repo id: left as they were
    rows = plot_rows(first[5])
    assert len(rows) == 7 and {row[0] for row in rows} == {0} and {row[2] for row in rows} == MODULES
    assert all(row[1] >= 0 for row in rows) and set(first[5]["color_map"]) == MODULES  # a colour per module

    with pytest.raises(AppError, match="Quantization stopped; nothing was saved"):
        job.result(timeout=WAIT_S)
    counts = [len(plot_rows(update[5])) for update in updates_with_values(job)]
    assert counts == sorted(set(counts)) and counts[-1] < 4 * 7, counts  # grew, and stopped before the last layer
    assert saved(outputs) == []


def test_a_cancelled_quantize_job_stops_on_the_server(app_url, outputs):
    """A client that cancels (a closed tab does the same): the server stops quantizing at the next layer instead of
    quantizing, saving and measuring a model nobody will see."""
    client = Client(app_url, verbose=False, download_files=False)
    job = client.submit(LLAMA, "", "", *RECIPE, api_name="/quantize")
    first_plot_update(job)
    assert job.cancel()
    deadline = time.monotonic() + WAIT_S
    while any(thread.name == "quant-background" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the server is still quantizing for the cancelled job"
        time.sleep(0.05)
    assert saved(outputs) == []  # it stopped during quantization: a run to its end saves a folder
