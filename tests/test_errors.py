"""Bad inputs are refused before loading, with a message that says why and what would work."""

from __future__ import annotations

import json

import pytest

from quant.errors import ModelSourceError, PlacementError, QuantError, UnsupportedModeError
from quant.loader import LoadRequest, load_model
from quant.modes import QuantOptions
from quant.placement import parse_max_memory
from tests.conftest import LLAMA


def test_missing_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="No such folder"):
        load_model(LoadRequest(model=str(tmp_path / "nope")))


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(LoadRequest(model=str(tmp_path)))


def test_non_language_model_is_refused(tmp_path):
    from transformers import BertConfig

    BertConfig(architectures=["BertForSequenceClassification"]).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="not a text-generation model.*BertForSequenceClassification"):
        load_model(LoadRequest(model=str(tmp_path)))


def test_unknown_demo_model():
    with pytest.raises(ModelSourceError, match="Demo models: demo:tiny-llama-chat"):
        load_model(LoadRequest(model="demo:gpt-17"))


def test_hub_id_offline_says_the_hub_cannot_be_reached():
    with pytest.raises(ModelSourceError, match="cannot be reached.*demo:tiny-llama-chat"):
        load_model(LoadRequest(model="someone/some-model-that-is-not-cached"))


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


def test_gptq_mode_on_an_unquantized_checkpoint():
    with pytest.raises(UnsupportedModeError, match="not.*GPTQ-quantized|is not"):
        load_model(LoadRequest(model=LLAMA, mode="gptq"))


def test_gptq_checkpoint_in_a_bnb_mode(gptq_llama_dir):
    with pytest.raises(UnsupportedModeError, match="already quantized with GPTQ.*mode gptq"):
        load_model(LoadRequest(model=str(gptq_llama_dir), mode="nf4"))


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


def test_checkpoint_requiring_remote_code_is_refused(tmp_path):
    config = {"model_type": "my-custom-lm", "architectures": ["MyCustomForCausalLM"],
              "auto_map": {"AutoConfig": "configuration_custom.MyConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelSourceError, match="own modelling code.*QUANT_TRUST_REMOTE_CODE"):
        load_model(LoadRequest(model=str(tmp_path)))


def test_every_refusal_is_a_quant_error_with_a_message(tmp_path):
    for request in (LoadRequest(model=""), LoadRequest(model=str(tmp_path / "x"))):
        with pytest.raises(QuantError) as info:
            load_model(request)
        assert str(info.value).strip()


def test_local_models_root_confines_folders(tmp_path, monkeypatch):
    import shutil

    from quant.source import resolve_location

    root = tmp_path / "models"
    inside = root / "tiny"
    shutil.copytree(resolve_location(LLAMA)[0], inside)
    outside = tmp_path / "secret"
    shutil.copytree(resolve_location(LLAMA)[0], outside)
    (root / "link").symlink_to(outside)
    monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(root))
    assert resolve_location(str(inside)) == (str(inside.resolve()), True)
    for ref in (str(outside), str(root / "link"), str(root / ".." / "secret"), "/etc", "../secret"):
        with pytest.raises(ModelSourceError, match="outside the folder this server loads local models from"):
            resolve_location(ref)
    assert resolve_location(LLAMA)[1]  # the shipped demo models stay available
