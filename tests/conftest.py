"""Shared fixtures. Tests never reach the Hub: they use the demo models that ship in quant/demo_models.

The tests are laid out by axis:
- tests/unit/: the package and the CLI without a served app (quant.* functions, methods, architectures, the Dockerfile,
  pushes to the local Hub look-alike and that look-alike's own tests);
- tests/app/: the app served over HTTP (gradio_client, the openai client, load) and in a real browser (Playwright and
  Debian's chromium); tests/app/conftest.py has the `browser` fixture;
- tests/gpu/: tests that need a CUDA GPU (marked `gpu`, skipped below where there is none); tests/gpu/conftest.py has
  `kernel_cache`;
- tests/support/: plain modules that tests of any axis import (`from tests.support.<module> import ...`), never a test
  module from another: the Hub look-alike, the model families, the Model tab's fields, browser, GPU-memory and
  compiled-path helpers.
This file puts the repository root on sys.path, so everything imports as `tests.<...>` and `quant`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


LLAMA = "demo:tiny-llama-chat"
T5 = "demo:tiny-t5"
CALIBRATION_TEXT = ROOT / "quant" / "textsets" / "python-reference.txt"


def pytest_collection_finish(session):
    """As the app does at start-up (quant.loader.freeze_startup_objects): what the imports made is left out of the
    garbage collections that every model load and unload runs, which otherwise walk each worker's whole heap."""
    from quant.loader import freeze_startup_objects

    freeze_startup_objects()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gptq_llama_dir(tmp_path_factory) -> Path:
    """The demo Llama quantized to 4-bit GPTQ (group size 128) on the CPU through quant.gptq."""
    from quant.gptq import GPTQRecipe, quantize_gptq
    from quant.source import resolve_location

    out = tmp_path_factory.mktemp("gptq") / "tiny-llama-gptq-4bit-g128"
    recipe = GPTQRecipe(bits=4, group_size=128, num_samples=32, seq_len=128)
    return quantize_gptq(resolve_location(LLAMA)[0], recipe, [CALIBRATION_TEXT.read_text()], out).out_dir


def quantize_recording(method: str, recipe, out: Path):
    """The demo Llama through the whole Quantize tab's work (quant.quantize: quantization, perplexities, card,
    report), and what it reported while it ran, in order: ("progress", fraction, message) and ("layer_errors",
    errors)."""
    from quant.quantize import quantize

    events = []  # list.append: the callbacks come from gptqmodel's threads too
    result = quantize(LLAMA, method=method, recipe=recipe, out_dir=out,
                      progress=lambda fraction, message: events.append(("progress", fraction, message)),
                      on_layer_errors=lambda errors: events.append(("layer_errors", errors)))
    return result, events


@pytest.fixture(scope="session")
def quantized_llama_run(tmp_path_factory):
    """GPTQ 4-bit g128 through quantize_recording: read-only for the tests that share it."""
    from quant.gptq import GPTQRecipe

    out = tmp_path_factory.mktemp("quantized") / "tiny-llama-chat-GPTQ-4bit-g128"
    return quantize_recording("gptq", GPTQRecipe(num_samples=16, seq_len=128), out)


@pytest.fixture(scope="session")
def quantized_llama(quantized_llama_run):
    """quantized_llama_run's result."""
    return quantized_llama_run[0]


@pytest.fixture(scope="session")
def awq_llama_run(tmp_path_factory):
    """AWQ 4-bit g128 with 64 samples of 128 tokens through quantize_recording: read-only for the tests that share
    it.

    The sample count is what lets AWQ beat round-to-nearest on this small model (tests/unit/test_quantize.py): held-out
    perplexity 65.24 with 32 samples, 65.35 with 48, 65.05 with 64, 64.82 with 96, against 65.28 for round-to-nearest
    4-bit g128 and 64.74 for bf16 (gptqmodel 7.6, deterministic). Its 128-wide layers have no outlier channels for
    AWQ's scales to protect, so its gain over rounding is small and moves with the calibration set."""
    from quant.gptq import GPTQRecipe

    out = tmp_path_factory.mktemp("awq") / "tiny-llama-chat-AWQ-4bit-g128"
    return quantize_recording("awq", GPTQRecipe(num_samples=64, seq_len=128), out)


@pytest.fixture(scope="session")
def awq_llama(awq_llama_run):
    """awq_llama_run's result."""
    return awq_llama_run[0]


@pytest.fixture(scope="session")
def gpu_gptq_llama_dir(tmp_path_factory) -> Path:
    """The demo Llama quantized to 4-bit GPTQ on the GPU (device-machine tests: GPU quantization is part of them)."""
    from quant.gptq import GPTQRecipe, quantize_gptq
    from quant.source import resolve_location

    out = tmp_path_factory.mktemp("gptq-gpu") / "tiny-gptq"
    return quantize_gptq(resolve_location(LLAMA)[0], GPTQRecipe(num_samples=32, seq_len=128),
                         [CALIBRATION_TEXT.read_text()], out, device="cuda:0").out_dir


@pytest.fixture
def registry():
    from quant.registry import ModelRegistry

    reg = ModelRegistry(max_models=3)
    yield reg
    reg.unload_all()


@pytest.fixture(scope="session")
def app_url():
    """The real app, served over HTTP for the whole test session."""
    from app import serve_in_process  # imports gradio: not at module level, the GPU machine runs without it

    with serve_in_process() as url:
        yield url
