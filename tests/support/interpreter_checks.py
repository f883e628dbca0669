"""Kernel checks that run in Triton's CPU interpreter in a process of their own: Triton's library functions (tl.max,
tl.sum...) run in the interpreter only in a process that set TRITON_INTERPRET=1 before importing Triton, which a test
process (which imported it long before) cannot. A checks module calls `report(CHECKS)` under `__main__`; its test
file gets each check's "ok" or traceback from `results("tests.support.<module>")`."""

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


def results(module: str, timeout: float = 300) -> dict[str, str]:
    """Run a checks module (`python -m module`) under the interpreter and return what it reported."""
    run = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
