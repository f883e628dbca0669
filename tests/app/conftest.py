"""Fixtures of the app tests (served over HTTP, and in a real browser). The served app itself, `app_url`, is in
tests/conftest.py: the one check of tests/unit/test_architectures.py that a bad checkpoint does not take the server
down uses it too."""

from __future__ import annotations

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium through Playwright, one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
