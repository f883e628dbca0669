"""The gated model of the visitor tests (tests/app/test_visitors.py, tests/app/test_browser_visitors.py): a copy of
the demo Llama that tests/support/hub_server.FakeHub serves as gated, readable with CAROL's token only."""

from __future__ import annotations

from tests.conftest import ROOT

CAROL = "hf_carol_token_0123456789"
GATED = "meta/gated-llama"


def demo_files() -> dict[str, bytes]:
    folder = ROOT / "quant" / "demo_models" / "tiny-llama-chat"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
