"""`python -m quant load` prints the report; errors are one line, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import LLAMA, ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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
