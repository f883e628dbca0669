"""Fixtures of the unit tests."""

from __future__ import annotations

import pytest
import torch

from tests.support.hub_server import READER, WRITER, FakeHub


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import transformers  # noqa: F401 - imported before patching, as the hub helper requires

    with FakeHub(tokens={WRITER: "alice", READER: "alice"}, read_only=[READER]) as server:
        server.patch_client(monkeypatch, tmp_path / "hf_home")
        yield server
        assert server.server_errors == []


@pytest.fixture(scope="module")
def eager_dequantization():
    """gptqmodel's TorchLinear (the gptq_torch kernel) wraps its dequantization in torch.compile, seconds per model on
    the CPU (a push test loading three such models took 75 s on a loaded CI machine): run it eagerly, the same
    arithmetic. Through torch's own `config.patch`, which restores the setting itself (a test runner's attribute swap
    on torch's config module is undone differently by each pytest release: pytest 9.2 deletes the entry)."""
    with torch._dynamo.config.patch(disable=True):
        yield
