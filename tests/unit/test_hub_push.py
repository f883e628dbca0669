"""Pushes go over real HTTP to a Hub look-alike (tests/support/hub_server.py); the repo comes back and loads."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from quant.hub import PushError, build_model_card, push_folder
from quant.loader import LoadRequest, load_model
from quant.methods import QuantOptions
from tests.support.hub_server import READER, WRITER

pytestmark = pytest.mark.usefixtures("eager_dequantization")  # three gptq_torch models below


@pytest.fixture
def quantized(quantized_llama):
    return quantized_llama


def folder_digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def greedy(loaded) -> list[int]:
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt")
    with torch.no_grad():
        return loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()


def test_push_download_and_load_gives_the_same_text(hub, quantized, tmp_path, caplog):
    from huggingface_hub import snapshot_download
    from transformers import AutoModelForCausalLM, GPTQConfig

    caplog.set_level(logging.DEBUG)
    folder = Path(quantized.out_dir)
    torch_kernel = QuantOptions(gptq_backend="gptq_torch")  # the kernel transformers is given below
    before = greedy(load_model(LoadRequest(model=str(folder), mode="gptq", options=torch_kernel)))
    result = push_folder(folder, "alice/tiny-gptq", token=WRITER, private=True)
    assert result.url.endswith("alice/tiny-gptq") and result.commit

    downloaded = snapshot_download("alice/tiny-gptq", token=WRITER, cache_dir=tmp_path / "dl")
    assert greedy(load_model(LoadRequest(model=downloaded, mode="gptq", options=torch_kernel))) == before
    # and straight through transformers, as the model card tells users to do (same kernel as above: kernels differ
    # in rounding, and gptqmodel's automatic choice on this CPU is another one)
    model = AutoModelForCausalLM.from_pretrained("alice/tiny-gptq", token=WRITER, device_map="cpu",
                                                 quantization_config=GPTQConfig(bits=4, backend="gptq_torch"))
    tokenizer_ids = load_model(LoadRequest(model=downloaded, mode="gptq")).tokenizer(
        "The with statement is used to", return_tensors="pt")
    assert model.generate(**tokenizer_ids, max_new_tokens=12, do_sample=False)[0].tolist() == before

    card = open(f"{downloaded}/README.md").read()
    assert 'model_id = "alice/tiny-gptq"' in card and "quantized with **gptq**" in card
    assert f"{quantized.quantized_perplexity:.2f}" in card
    # the token went only into the Authorization header: not in logs, files, the card
    assert hub.token_leaks(WRITER) == []
    assert WRITER not in caplog.text
    for path in Path(downloaded).iterdir():
        assert WRITER.encode() not in path.read_bytes()


def test_card_metadata_for_a_hub_base_model(quantized):
    from dataclasses import replace

    card = build_model_card(replace(quantized, base_model="meta-llama/Llama-3.2-1B"), "alice/x")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert card.data.to_dict()["base_model_relation"] == "quantized"
    assert {"gptq", "4-bit", "quantized"} <= set(card.data.tags)


def test_wrong_token_is_refused_and_the_folder_kept(hub, quantized):
    folder = Path(quantized.out_dir)
    digest = folder_digest(folder)
    with pytest.raises(PushError, match="rejected the token.*intact"):
        push_folder(folder, "alice/tiny-gptq", token="hf_wrong_token_000000")
    with pytest.raises(PushError, match="may not write.*403"):
        push_folder(folder, "alice/tiny-gptq", token=READER)
    assert folder_digest(folder) == digest
    assert hub.token_leaks("hf_wrong_token_000000") == []


def test_existing_repo_is_refused_unless_overwrite(hub, quantized):
    folder = Path(quantized.out_dir)
    push_folder(folder, "alice/tiny-gptq", token=WRITER)
    with pytest.raises(PushError, match="already exists"):
        push_folder(folder, "alice/tiny-gptq", token=WRITER)
    (folder / "NOTES.txt").write_text("second push")
    try:
        push_folder(folder, "alice/tiny-gptq", token=WRITER, overwrite=True)
        assert "NOTES.txt" in hub.files("alice/tiny-gptq")
    finally:
        (folder / "NOTES.txt").unlink()


def test_server_errors_and_a_dying_server_leave_the_folder_and_retry_works(hub, quantized):
    folder = Path(quantized.out_dir)
    digest = folder_digest(folder)
    hub.fail_next(r"/commit/", 500)
    with pytest.raises(PushError, match="answered 500.*intact"):
        push_folder(folder, "alice/a", token=WRITER)
    hub.drop_next(r"/commit/")
    with pytest.raises(PushError, match="connection to the Hub failed.*retried"):
        push_folder(folder, "alice/a", token=WRITER, overwrite=True)
    assert folder_digest(folder) == digest
    push_folder(folder, "alice/a", token=WRITER, overwrite=True)
    assert "model.safetensors" in hub.files("alice/a")


def test_on_a_space_a_push_takes_the_visitors_login_and_never_the_spaces_token(hub, monkeypatch, tmp_path):
    """One push handler for every case, taking the login when there is one: on a Space, Gradio hands it the
    signed-in visitor's token (a `gr.OAuthToken | None` parameter), which pushes with the token box left empty; a
    visitor who is not signed in gets a message, never the Space's own HF_TOKEN. (Off a Space the parameter is None:
    the other push tests go through the same handler.)"""
    import time

    import gradio.oauth
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from app import serve_in_process
    from quant.quantize import output_folder
    from ui import common

    monkeypatch.setattr(common, "ON_SPACE", True)  # what a Space's SPACE_ID sets: the app shows Gradio's LoginButton
    # Off a Space, Gradio's login routes sign in a mocked profile (the machine's own Hub login): this visitor's.
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: {
        "access_token": WRITER, "scope": "openid profile write-repos", "expires_at": int(time.time()) + 3600,
        "userinfo": {"preferred_username": "alice", "name": "Alice", "sub": "1", "picture": "", "profile": "",
                     "website": "", "email": ""}})
    monkeypatch.setenv("HF_TOKEN", READER)  # the Space owner's secret
    monkeypatch.setenv("QUANT_OUTPUT_DIR", str(tmp_path / "outputs"))
    with serve_in_process() as url:
        login = httpx.get(url + "login/callback", params={"_target_url": "/"}, follow_redirects=False)
        cookie = login.headers["set-cookie"].split(";")[0]  # Secure (https only): handed over as the browser would
        signed_in, anonymous = Client(url, verbose=False, headers={"Cookie": cookie}), Client(url, verbose=False)
        folders = {}
        for client in (signed_in, anonymous):  # a folder each of them quantized (the only kind Push accepts)
            folders[client] = output_folder(f"session:{client.session_hash}") / "tiny"
            folders[client].mkdir(parents=True)
            (folders[client] / "config.json").write_text("{}")
        status = signed_in.predict(str(folders[signed_in]), "alice/from-login", True, False, "", api_name="/push")
        assert status.startswith("Pushed to [alice/from-login]")
        with pytest.raises(AppError, match="Pushing needs a Hugging Face token"):
            anonymous.predict(str(folders[anonymous]), "alice/anonymous", True, False, "", api_name="/push")
    assert hub.find_requests(pattern="/commit/")
    assert {r.authorization for r in hub.requests if r.authorization} == {f"Bearer {WRITER}"}  # never READER
    assert ("model", "alice/anonymous") not in hub.repos
