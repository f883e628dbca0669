"""What the real-browser tests (tests/app/test_browser*.py) share: Debian's chromium, its flags, Playwright timeouts
and grid rows. Their `browser` fixture is in tests/app/conftest.py. Imports no Playwright: the modules that use it
skip themselves where it is missing."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SLOW = 120_000  # ms: loads, generation, compare and GPTQ on a 2-core CPU
QUICK = 30_000  # ms: UI reactions


def data_rows(grid):
    """The body rows of a gr.Dataframe (its role=grid element); the first row is the header."""
    return grid.get_by_role("row").filter(has=grid.page.get_by_role("gridcell"))
