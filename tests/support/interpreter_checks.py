"""Kernel checks that run in Triton's CPU interpreter in a process of their own: Triton's library functions (tl.max,
tl.sum...) run in the interpreter only in a process that set TRITON_INTERPRET=1 before importing Triton, which a test
process (which imported it long before) cannot. A checks module calls `report(CHECKS)` under `__main__`; its test
file binds `results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests(module, names)`: one
test per check ("ok" or its traceback) and one that every check the file names was run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def report(checks: dict[str, Callable[[], None]]) -> None:
    """Run every check and print one JSON object: its name with "ok" or its traceback."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            results[name] = traceback.format_exc()
    print(json.dumps(results))


def run_checks(module: str, timeout: float = 300) -> dict[str, str]:
    """Run a checks module (`python -m module`) under the interpreter and return what it reported."""
    run = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])



def interpreter_tests(module: str, checks: list[str]) -> tuple:
    """A module-scoped fixture `results` (the checks module run once) and the two tests over it, for a test file to
    bind under their own names at module level, where pytest collects them."""
    import pytest

    @pytest.fixture(scope="module")
    def results() -> dict[str, str]:
        return run_checks(module)

    @pytest.mark.parametrize("check", checks)
    def test_in_the_interpreter(results, check):
        assert results[check] == "ok", results[check]

    def test_every_check_is_run_here(results):
        assert sorted(results) == sorted(checks)

    return results, test_in_the_interpreter, test_every_check_is_run_here
