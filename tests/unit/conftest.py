"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest

from tests.support.hub_server import READER, WRITER, FakeHub


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import transformers  # noqa: F401 - imported before patching, as the hub helper requires

    with FakeHub(tokens={WRITER: "alice", READER: "alice"}, read_only=[READER]) as server:
        server.patch_client(monkeypatch, tmp_path / "hf_home")
        yield server
        assert server.server_errors == []
