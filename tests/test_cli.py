"""`python -m quant load` prints the report; errors (a malformed setting too, in the app as well) are one line, exit
status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import LLAMA, ROOT


def run_cli(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    return subprocess.run([sys.executable, "-m", "quant", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_load_json_report():
    result = run_cli("load", LLAMA, "--mode", "nf4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "nf4" and report["linear_layers"]["Linear4bit"] == 28
    assert report["quantization"]["bnb_4bit_quant_type"] == "nf4"


def test_load_text_report_and_progress():
    result = run_cli("load", LLAMA, "--mode", "int8", "--int8-threshold", "4.0")
    assert result.returncode == 0, result.stderr
    assert "Linear8bitLt x28" in result.stdout and "llm_int8_threshold=4.0" in result.stdout
    assert "[100%] Loaded" in result.stderr


def test_error_is_one_line_without_traceback(tmp_path):
    result = run_cli("load", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: No such folder")
    assert "Traceback" not in result.stderr


def test_malformed_setting_stops_the_cli_and_the_app_with_its_name():
    """An operator setting that is not a number: one line naming it, exit status 2, no traceback; the app does not
    start serving."""
    result = run_cli("load", LLAMA, QUANT_STATIC_CACHE_TOKENS="512,two")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: QUANT_STATIC_CACHE_TOKENS='512,two' is not a comma-separated list of whole numbers. "
        "For example QUANT_STATIC_CACHE_TOKENS=512,2048.")
    assert "Traceback" not in result.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUANT_MAX_LOADED_MODELS": "three", "GRADIO_SERVER_PORT": "7997"}
    app = subprocess.run([sys.executable, "app.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert app.returncode == 2, app.stderr[-2000:]
    assert app.stderr.strip().splitlines()[-1] == (
        "error: QUANT_MAX_LOADED_MODELS='three' is not a whole number. Unset it for the default, 3.")
    assert "Traceback" not in app.stderr and "Running on" not in app.stdout
