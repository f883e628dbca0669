"""Fixtures of the GPU tests (tests/gpu/: marked `gpu`, skipped without CUDA by tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch):
    # An earlier test's folder is already in these: clear them so this test's QUANT_KERNEL_CACHE is taken up.
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "GPTQMODEL_TORCH_EXTENSIONS_DIR",
                     "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1,4")
    return tmp_path / "kernels"
