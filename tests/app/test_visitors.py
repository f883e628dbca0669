"""Several visitors of one served app: what one loads with their own token stays theirs, every load checks access
again, a tab never gets answers from a model it did not choose, and exports are safe to open.

The app runs in this process (tests.conftest.app_url) with its Hugging Face client pointed at
tests/support/hub_server.FakeHub over real HTTP, which serves a gated copy of the demo Llama: readable by `carol`
(granted) and not by `bob`.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA, ROOT
from tests.support.hub_server import FakeHub
from tests.support.model_tab import load_args
from tests.support.visitors import CAROL, GATED, demo_files

BOB = "hf_bob_token_0123456789"
SETTINGS = ("", 8, False, 0.7, 0.9, 50, 1.0, 0, "")  # system prompt, then the generation settings


@pytest.fixture(scope="module")
def hub(app_url, tmp_path_factory):
    import transformers  # noqa: F401 - imported before patching, as hub_server.point_client_at requires

    from quant.registry import default_registry

    default_registry().unload_all()  # only this module's models: "no model loaded" must mean it
    with pytest.MonkeyPatch.context() as mp, FakeHub(tokens={CAROL: "carol", BOB: "bob"}) as server:
        mp.delenv("HF_TOKEN", raising=False)
        mp.delenv("QUANT_LOCAL_MODELS_ROOT", raising=False)
        mp.setenv("QUANT_OUTPUT_DIR", str(tmp_path_factory.mktemp("visitor-outputs")))
        server.patch_client(mp, tmp_path_factory.mktemp("hf_home"))
        server.add_repo(GATED, gated=True, granted={"carol"})
        server.put_files(GATED, demo_files())
        yield server
        default_registry().unload_all()
        assert server.server_errors == []


def visitor(app_url) -> Client:
    return Client(app_url, verbose=False)


def shown(client: Client) -> tuple[list, list, list]:
    """What a visitor's Model tab lists: the dropdown's choices, the loaded table, the history."""
    dropdown, loaded, history = client.predict(api_name="/refresh")
    return [c[1] for c in dropdown["choices"]], loaded["data"], history["data"]


def test_a_model_loaded_with_a_visitors_token_is_theirs_alone(app_url, hub):
    alice, mallory = visitor(app_url), visitor(app_url)
    status, _report, dropdown, *_ = alice.predict(*load_args(GATED, "bf16", token=CAROL), api_name="/load_model")
    key = dropdown["value"]
    assert "loaded" in status and GATED in key
    assert key in shown(alice)[0] and any(GATED in row[0] for row in shown(alice)[1])

    # Another visitor: not listed, not in their history, cannot be unloaded or chatted with.
    choices, loaded, history = shown(mallory)
    assert key not in choices and not any(GATED in str(row) for row in loaded + history)
    with pytest.raises(AppError, match="That model is not loaded"):
        mallory.predict(key, api_name="/unload_model")
    mallory.predict("Explain the with statement.", api_name="/chat_add_message")
    with pytest.raises(AppError, match="No model is loaded"):  # the only model in the server is alice's
        mallory.predict(*SETTINGS, api_name="/chat_respond")
    # Their own access check decides: without a token, or with one that has no access, refused.
    with pytest.raises(AppError, match="gated repository: it needs the token"):
        mallory.predict(*load_args(GATED, "bf16"), api_name="/load_model")
    with pytest.raises(AppError, match="gated repository: this token has no access"):
        mallory.predict(*load_args(GATED, "bf16", token=BOB), api_name="/load_model")
    with pytest.raises(AppError, match="gated repository"):  # nor can they download it through Quantize
        mallory.predict(GATED, "", "", "gptq", 4, 128, False, True, 0.05, 8, 64, "builtin", "", None,
                        api_name="/quantize")

    # With a token that has access, a visitor gets a copy of their own.
    _status, _report, own, *_ = mallory.predict(*load_args(GATED, "bf16", token=CAROL), api_name="/load_model")
    assert own["value"] != key and own["value"] in shown(mallory)[0] and key not in shown(mallory)[0]
    mallory.predict(own["value"], api_name="/unload_model")
    assert key in shown(alice)[0]  # alice's copy is untouched
    alice.predict(key, api_name="/unload_model")


def test_every_load_checks_access_again(app_url, hub):
    alice = visitor(app_url)
    alice.predict(*load_args(GATED, "bf16", token=CAROL), api_name="/load_model")
    hub.repos[("model", GATED)].granted.discard("carol")  # carol's access is withdrawn on the Hub
    try:
        with pytest.raises(AppError, match="gated repository: this token has no access"):
            alice.predict(*load_args(GATED, "bf16", token=CAROL), api_name="/load_model")
    finally:
        hub.repos[("model", GATED)].granted.add("carol")
        from quant.registry import default_registry

        default_registry().unload_all()


def test_a_folder_deleted_since_its_load_is_not_served_from_memory(tmp_path, monkeypatch, registry):
    from quant.errors import ModelSourceError
    from quant.loader import LoadRequest

    folder = tmp_path / "models" / "tiny"
    shutil.copytree(ROOT / "quant" / "demo_models" / "tiny-llama-chat", folder)
    monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(tmp_path / "models"))
    request = LoadRequest(model=str(folder), mode="bf16")
    registry.load(request)
    shutil.rmtree(folder)
    with pytest.raises(ModelSourceError, match="No such folder"):
        registry.load(request)


def test_every_path_a_visitor_may_not_read_gets_the_same_answer(app_url, hub, tmp_path):
    """Whether a path exists, is a file, a folder or a model, the refusal is word for word the same."""
    model = tmp_path / "model"
    shutil.copytree(ROOT / "quant" / "demo_models" / "tiny-llama-chat", model)
    client = visitor(app_url)
    answers = {}
    for path in ("/etc/shadow", "/root/.ssh", "/no/such/folder", str(model), str(model / "config.json")):
        with pytest.raises(AppError) as info:
            client.predict(*load_args(path, "bf16"), api_name="/load_model")
        answers[path] = str(info.value).replace(repr(path)[:102], "PATH")
    assert len(set(answers.values())) == 1, answers
    assert "is not a model this server can load" in next(iter(answers.values()))


def test_a_tab_whose_model_was_unloaded_is_told_so_not_answered_by_another(app_url, hub):
    alice, bob = visitor(app_url), visitor(app_url)
    _s, _r, mine, *_ = alice.predict(*load_args(LLAMA, "nf4"), api_name="/load_model")  # alice's tab chose nf4
    bob.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")  # another model stays loaded
    bob.predict(mine["value"], api_name="/unload_model")  # bob unloads the (shared, idle) nf4 model
    alice.predict("Explain the with statement.", api_name="/chat_add_message")
    with pytest.raises(AppError, match="The model this tab was using is no longer loaded"):
        alice.predict(*SETTINGS, api_name="/chat_respond")


def test_a_refused_message_does_not_stay_in_the_conversation(app_url, hub):
    client = visitor(app_url)
    client.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    with pytest.raises(AppError, match="too long: 300,000 characters"):
        client.predict("x" * 300_000, api_name="/chat_add_message")
    with pytest.raises(AppError, match="Type a message first"):  # nothing was added to answer
        client.predict(*SETTINGS, api_name="/chat_respond")
    client.predict("hello", api_name="/chat_add_message")
    reply = client.predict(*SETTINGS, api_name="/chat_respond")
    assert [m["role"] for m in reply] == ["user", "assistant"]


FORMULAS = ["=HYPERLINK(\"http://x\",\"click\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3", "plain text"]


def test_batch_csv_cells_never_start_a_formula(app_url, hub):
    client = visitor(app_url)
    client.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    table, _totals, files = client.predict("\n".join(FORMULAS), None, "", False, "", 2, 4, False, 0.7, 0.9, 50, 1.0,
                                           0, "", api_name="/run_batch")
    csv_file = next(Path(f) for f in files if f.endswith(".csv"))
    with csv_file.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["'" + p if p[0] in "=+-@" else p for p in FORMULAS]
    assert all(not r[k].startswith(("=", "+", "-", "@")) for r in rows for k in r)
    jsonl = next(Path(f) for f in files if f.endswith(".jsonl")).read_text(encoding="utf-8")
    assert FORMULAS[0].replace('"', '\\"') in jsonl  # the JSONL keeps every text exactly


def test_the_app_listens_on_this_machine_only_unless_told(monkeypatch):
    import app as app_module

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app_module.launch_options()["server_name"] == "127.0.0.1"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert app_module.launch_options()["server_name"] == "0.0.0.0"


def test_old_result_folders_expire(tmp_path, monkeypatch):
    import os
    import time

    from quant.prompts import SCRATCH_MAX_AGE_SECONDS, scratch_folder

    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile's documented setting for its folder
    old = scratch_folder("batch")
    day_old = time.time() - SCRATCH_MAX_AGE_SECONDS - 60
    os.utime(old, (day_old, day_old))
    recent = scratch_folder("batch")
    newest = scratch_folder("compare")
    assert not old.exists() and recent.exists() and newest.exists()


def test_visitors_old_outputs_expire_and_the_clis_stay(tmp_path, monkeypatch):
    import os
    import time

    from quant.quantize import expire_visitor_outputs, output_folder

    monkeypatch.setenv("QUANT_OUTPUT_DIR", str(tmp_path))
    old, recent, cli = output_folder("session:a") / "old", output_folder("session:b") / "recent", tmp_path / "cli"
    for folder in (old, recent, cli):
        folder.mkdir(parents=True)
    two_days = time.time() - 48 * 3600
    for folder in (old, cli):
        os.utime(folder, (two_days, two_days))
    assert expire_visitor_outputs(0) == [] and old.exists()  # 0 keeps everything
    assert expire_visitor_outputs(24) == [old]
    assert not old.exists() and recent.exists() and cli.exists()


def test_building_the_app_writes_nothing_beside_it():
    """Gradio writes a type-stub file beside any module that defines a component class: the app and its tabs (ui/)
    define none, so it also starts where its folder is read-only."""
    import app as app_module

    app_module.build_app()
    assert not (ROOT / "app.pyi").exists()
    assert list((ROOT / "ui").glob("*.pyi")) == []
