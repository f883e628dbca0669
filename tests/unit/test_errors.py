"""Refusals of the library API that the app does not reach as typed input (placement, modes, kernels).

Inputs a user types or uploads are in the catalogue, tests/app/test_bad_input.py, driven through the app over HTTP.
"""

from __future__ import annotations

import pytest

from quant.errors import PlacementError, UnsupportedModeError
from quant.loader import LoadRequest, load_model
from quant.methods import QuantOptions
from quant.placement import parse_max_memory
from tests.conftest import LLAMA


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0=lots", "not a memory size"),
        ("gpu0=2GiB", "Unknown device"),
        ("cpu", "Cannot read"),
        ('{"cpu": ', "not valid JSON"),
        ("5=1GiB", "names GPU 5"),
        ("cpu=-3GiB", "not a memory size"),
    ],
)
def test_invalid_max_memory(spec, message):
    with pytest.raises(PlacementError, match=message):
        parse_max_memory(spec)


def test_valid_max_memory_forms():
    assert parse_max_memory("cpu=30GiB") == {"cpu": "30GiB"}
    assert parse_max_memory('{"cpu": "2 GB"}') == {"cpu": "2GB"}
    assert parse_max_memory("  ") is None


def test_gpu_only_gptq_kernel_on_cpu(gptq_llama_dir):
    request = LoadRequest(model=str(gptq_llama_dir), mode="gptq", options=QuantOptions(gptq_backend="gptq_marlin"))
    with pytest.raises(UnsupportedModeError, match="needs a CUDA GPU.*gptq_torch"):
        load_model(request)


def test_gpu_device_map_without_gpu():
    with pytest.raises(PlacementError, match="GPU"):
        load_model(LoadRequest(model=LLAMA, device_map="cuda:0"))


def test_unknown_mode():
    with pytest.raises(UnsupportedModeError, match="Unknown mode 'int3'"):
        LoadRequest(model=LLAMA, mode="int3")


def test_local_models_root_still_serves_its_folders_and_the_demos(tmp_path, monkeypatch):
    """The other half of the confinement (refusals are in tests/app/test_bad_input.py): what is inside still loads."""
    import shutil

    from quant.source import resolve_location

    root = tmp_path / "models"
    inside = root / "tiny"
    shutil.copytree(resolve_location(LLAMA)[0], inside)
    monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(root))
    assert resolve_location(str(inside)) == (str(inside.resolve()), True)
    assert resolve_location(LLAMA)[1]  # the shipped demo models stay available
    assert load_model(LoadRequest(model=str(inside))).report.architecture == "LlamaForCausalLM"
