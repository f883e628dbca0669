"""The real huggingface_hub client (and transformers) against tests/support/hub_server.FakeHub, over 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import get_session

from tests.support.hub_server import FakeHub, git_blob_oid

GOOD, BOB, READ_ONLY, WRONG = "hf_good_alice", "hf_good_bob", "hf_read_alice", "hf_wrong"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running FakeHub with the client pointed at it and HF_HOME in a temp dir; no implicit token."""
    with FakeHub(tokens={GOOD: "alice", BOB: "bob", READ_ONLY: "alice"}, read_only={READ_ONLY}) as server:
        server.patch_client(monkeypatch, tmp_path / "hf_home")
        yield server
        assert server.server_errors == []


@pytest.fixture
def api(hub) -> HfApi:
    return HfApi(token=GOOD)


def make_folder(root: Path) -> dict[str, bytes]:
    """A folder with a README (front matter), JSON, a ~1 MB binary and a nested path; returns path -> bytes."""
    files = {
        "README.md": b"---\nlicense: mit\n---\n# tiny\n",
        "config.json": json.dumps({"hidden_size": 16}).encode(),
        "weights.bin": os.urandom(1 << 20),
        "nested/deeper/notes.txt": "héllo\n".encode(),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def local_files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def test_whoami(api, hub):
    assert api.whoami()["name"] == "alice"
    assert HfApi(token=BOB).whoami()["name"] == "bob"
    assert HfApi(token=READ_ONLY).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=WRONG).whoami()
    assert err.value.response.status_code == 401


def test_create_repo_public_private_conflict_and_exist_ok(api, hub):
    public = api.create_repo("alice/public")
    assert public.repo_id == "alice/public" and public.endpoint == hub.url
    api.create_repo("alice/secret", private=True)
    assert api.model_info("alice/public").private is False
    assert api.model_info("alice/secret").private is True
    assert api.repo_exists("alice/public") and not api.repo_exists("alice/missing")

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/public")
    assert err.value.response.status_code == 409
    again = api.create_repo("alice/public", exist_ok=True)
    assert again.repo_id == "alice/public"
    # The Hub answers 403 for a read-only token even when the repo exists; exist_ok then falls back to repo_info.
    assert HfApi(token=READ_ONLY).create_repo("alice/public", exist_ok=True).repo_id == "alice/public"
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=BOB).create_repo("alice/other")
    assert err.value.response.status_code == 403


def test_upload_list_snapshot_and_single_download(api, hub, tmp_path):
    src = tmp_path / "src"
    files = make_folder(src)
    api.create_repo("alice/folder")
    info = api.upload_folder(folder_path=src, repo_id="alice/folder", commit_message="add files")

    assert api.model_info("alice/folder").sha == info.oid
    assert hub.history("alice/folder")[0].summary == "add files"
    assert api.list_repo_files("alice/folder") == sorted([*files, ".gitattributes"])

    out = Path(snapshot_download("alice/folder", local_dir=tmp_path / "snap", token=GOOD))
    got = local_files(out)
    assert {k: v for k, v in got.items() if k != ".gitattributes"} == files  # byte-identical

    cached = Path(hf_hub_download("alice/folder", "nested/deeper/notes.txt", token=GOOD))
    assert cached.read_bytes() == files["nested/deeper/notes.txt"]
    assert str(cached).startswith(str(tmp_path / "hf_home" / "hub"))  # the cache went to the temp HF_HOME
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/folder", "no/such/file.txt", token=GOOD)

    # The token travelled only as an Authorization header, and every write carried it.
    assert hub.token_leaks(GOOD) == []
    writes = hub.find_requests("POST", r"/(preupload|commit)/")
    assert writes and all(r.authorization == f"Bearer {GOOD}" for r in writes)


def test_tree_listing_of_a_subfolder(api, hub, tmp_path):
    files = make_folder(tmp_path / "src")
    api.create_repo("alice/tree")
    api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/tree")
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("alice/tree")}
    assert top == {".gitattributes": "RepoFile", "README.md": "RepoFile", "config.json": "RepoFile",
                   "weights.bin": "RepoFile", "nested": "RepoFolder"}
    deep = {e.path: e for e in api.list_repo_tree("alice/tree", "nested", recursive=True)}
    assert set(deep) == {"nested/deeper", "nested/deeper/notes.txt"}
    assert deep["nested/deeper/notes.txt"].blob_id == git_blob_oid(files["nested/deeper/notes.txt"])
    assert deep["nested/deeper/notes.txt"].size == len(files["nested/deeper/notes.txt"])


def test_commit_with_deletions_and_no_op_reupload(api, hub, tmp_path):
    files = make_folder(tmp_path / "src")
    api.create_repo("alice/edit")
    first = api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/edit")
    second = api.create_commit(
        "alice/edit",
        [
            CommitOperationDelete("config.json"),
            CommitOperationDelete("nested/", is_folder=True),
            CommitOperationAdd("new.txt", b"new"),
        ],
        commit_message="edit",
    )
    assert second.oid != first.oid
    assert hub.files("alice/edit") == {
        ".gitattributes": hub.files("alice/edit")[".gitattributes"],
        "README.md": files["README.md"], "weights.bin": files["weights.bin"], "new.txt": b"new",
    }
    assert hub.files("alice/edit", first.oid)["config.json"] == files["config.json"]  # old commit still readable
    # Preupload reports the remote git oid, so re-uploading identical files makes no commit at all.
    commits = len(hub.history("alice/edit"))
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "new.txt").write_bytes(b"new")
    api.upload_folder(folder_path=tmp_path / "same", repo_id="alice/edit")
    assert len(hub.history("alice/edit")) == commits
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit("alice/edit", [CommitOperationDelete("gone.txt")], commit_message="x")


def test_wrong_token_is_401(hub, tmp_path):
    make_folder(tmp_path / "src")
    HfApi(token=GOOD).create_repo("alice/auth")
    bad = HfApi(token=WRONG)
    for call in (
        lambda: bad.create_repo("alice/other"),
        lambda: bad.upload_folder(folder_path=tmp_path / "src", repo_id="alice/auth"),
        lambda: hf_hub_download("alice/auth", ".gitattributes", token=WRONG),
    ):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 401
    assert HfApi(token=GOOD).list_repo_files("alice/auth") == [".gitattributes"]


def test_missing_token_on_write_is_401(hub, tmp_path):
    make_folder(tmp_path / "src")
    HfApi(token=GOOD).create_repo("alice/anon")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).upload_folder(folder_path=tmp_path / "src", repo_id="alice/anon")
    assert err.value.response.status_code == 401
    assert all(r.authorization is None for r in hub.find_requests("POST", "/preupload/"))


def test_read_only_token_gets_403_on_upload(hub, tmp_path):
    make_folder(tmp_path / "src")
    HfApi(token=GOOD).create_repo("alice/ro")
    reader = HfApi(token=READ_ONLY)
    with pytest.raises(HfHubHTTPError) as err:
        reader.upload_folder(folder_path=tmp_path / "src", repo_id="alice/ro")
    assert err.value.response.status_code == 403
    assert reader.list_repo_files("alice/ro") == [".gitattributes"]  # reading is fine, nothing was written
    with pytest.raises(HfHubHTTPError) as err:
        reader.create_repo("alice/new")
    assert err.value.response.status_code == 403


def test_private_repo_needs_a_token(hub, tmp_path):
    hub.add_repo("alice/private", private=True)
    hub.put_files("alice/private", {"secret.txt": b"s3cret"})
    anonymous = HfApi(token=False)
    with pytest.raises(RepositoryNotFoundError) as err:
        anonymous.model_info("alice/private")
    assert err.value.response.status_code == 401
    assert not anonymous.repo_exists("alice/private")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/private", "secret.txt")  # no implicit token exists in this test
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("alice/private", token=False)
    with pytest.raises(RepositoryNotFoundError) as err:
        HfApi(token=BOB).model_info("alice/private")  # valid token, not the owner
    assert err.value.response.status_code == 404
    assert Path(hf_hub_download("alice/private", "secret.txt", token=GOOD)).read_bytes() == b"s3cret"


def test_gated_repo_lists_for_anyone_and_serves_files_only_to_granted_users(hub, tmp_path):
    hub.add_repo("meta/gated", gated=True, granted={"bob"})
    hub.put_files("meta/gated", {"config.json": b"{}"})
    assert HfApi(token=False).model_info("meta/gated").gated == "manual"
    assert set(HfApi(token=False).list_repo_files("meta/gated")) == {".gitattributes", "config.json"}
    for token, status in ((False, 401), (READ_ONLY, 403)):  # anonymous; logged in (alice) without access
        with pytest.raises(GatedRepoError) as err:
            hf_hub_download("meta/gated", "config.json", token=token, cache_dir=tmp_path / "cache")
        assert err.value.response.status_code == status
    assert not list((tmp_path / "cache").rglob("config.json"))  # nothing of it was stored
    assert Path(hf_hub_download("meta/gated", "config.json", token=BOB, cache_dir=tmp_path / "cache")).read_bytes() \
        == b"{}"


def test_injected_500_on_commit_then_retry_succeeds(api, hub, tmp_path):
    files = make_folder(tmp_path / "src")
    api.create_repo("alice/flaky")
    hub.fail_next(r"/commit/", 500, method="POST")
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/flaky")
    assert err.value.response.status_code == 500
    assert hub.files("alice/flaky").keys() == {".gitattributes"} and not hub.pending_faults()
    api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/flaky")
    assert {k: v for k, v in hub.files("alice/flaky").items() if k != ".gitattributes"} == files
    assert [r.status for r in hub.find_requests("POST", "/commit/")] == [500, 200]


def test_transient_500_on_preupload_is_retried_by_the_client(api, hub, tmp_path):
    make_folder(tmp_path / "src")
    api.create_repo("alice/retry")
    hub.fail_next(r"/preupload/", 500)
    api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/retry")  # http_backoff waits 1 s, retries
    assert [r.status for r in hub.find_requests("POST", "/preupload/")] == [500, 200]


def test_injected_409_and_401_carry_status(api, hub):
    hub.fail_next(r"^/api/repos/create$", 409, message="Cannot create repo: conflict")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("alice/x")
    assert err.value.response.status_code == 409 and "conflict" in str(err.value)
    hub.fail_next(r"^/api/whoami-v2$", 401, times=2)
    for _ in range(2):
        with pytest.raises(HfHubHTTPError):
            api.whoami()
    assert api.whoami()["name"] == "alice"


def test_dropped_connection_mid_commit_is_a_client_error(api, hub, tmp_path):
    make_folder(tmp_path / "src")
    api.create_repo("alice/dying")
    hub.drop_next(r"/commit/", method="POST")
    with pytest.raises(httpx2.TransportError):  # e.g. "Server disconnected without sending a response"
        api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/dying")
    assert hub.files("alice/dying").keys() == {".gitattributes"}
    assert [r.status for r in hub.find_requests("POST", "/commit/")] == [None]  # one try, recorded, never answered

    # Dying after applying the commit: the client errors although the commit landed.
    hub.drop_next(r"/commit/", method="POST", after_handling=True)
    with pytest.raises(httpx2.TransportError):
        api.upload_folder(folder_path=tmp_path / "src", repo_id="alice/dying")
    assert "weights.bin" in hub.files("alice/dying")

    # Hanging up before even reading the ~1 MB body.
    hub.drop_next(r"/commit/", method="POST", read_body=False)
    with pytest.raises(httpx2.TransportError):
        api.create_commit("alice/dying", [CommitOperationAdd("big.bin", os.urandom(1 << 20))], commit_message="x")


def test_request_log_spots_a_token_outside_the_header(api, hub):
    api.whoami()
    assert hub.requests[-1].authorization == f"Bearer {GOOD}"
    assert GOOD not in json.dumps(hub.requests[-1].headers)
    assert hub.token_leaks(GOOD) == []
    get_session().get(f"{hub.url}/api/whoami-v2", params={"token": GOOD})
    assert hub.token_leaks(GOOD) == ["GET /api/whoami-v2: query"]
    hub.clear_requests()
    assert hub.requests == []


def test_range_requests_and_malformed_commits(api, hub):
    data = bytes(range(256)) * 4
    hub.put_files("alice/range", {"data.bin": data})
    url = f"{hub.url}/alice/range/resolve/main/data.bin"
    part = get_session().get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    head = get_session().head(url)
    assert head.headers["ETag"] == f'"{git_blob_oid(data)}"' and int(head.headers["Content-Length"]) == len(data)
    assert head.headers["X-Repo-Commit"] == hub.history("alice/range")[0].oid
    commit_url = f"{hub.url}/api/models/alice/range/commit/main"
    bad = get_session().post(commit_url, content=b"{not json\n", headers={"authorization": f"Bearer {GOOD}"})
    assert bad.status_code == 400


def test_delete_repo(api, hub):
    api.create_repo("alice/doomed")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=BOB).delete_repo("alice/doomed")
    assert err.value.response.status_code in (403, 404)
    api.delete_repo("alice/doomed")
    assert not api.repo_exists("alice/doomed")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("alice/doomed")
    api.delete_repo("alice/doomed", missing_ok=True)


def test_start_stop_many_times():
    for _ in range(5):
        hub = FakeHub(tokens={GOOD: "alice"}).start()
        response = httpx2.get(f"{hub.url}/api/whoami-v2", headers={"authorization": f"Bearer {GOOD}"})
        assert response.json()["name"] == "alice"
        port = int(hub.url.rsplit(":", 1)[1])
        hub.stop()
        hub.stop()  # idempotent
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_patch_client_is_undone(tmp_path):
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import constants

    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, hf_api.api.endpoint,
              os.environ.get("HF_ENDPOINT"), os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_TOKEN"))
    with FakeHub(tokens={GOOD: "alice"}) as hub, pytest.MonkeyPatch.context() as mp:
        hub.patch_client(mp, tmp_path / "home", token=GOOD)
        assert constants.ENDPOINT == hf_api.api.endpoint == os.environ["HF_ENDPOINT"] == hub.url
        assert HfApi().whoami()["name"] == "alice"  # implicit token from HF_TOKEN
    after = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, hf_api.api.endpoint,
             os.environ.get("HF_ENDPOINT"), os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_TOKEN"))
    assert after == before


def test_tiny_llama_roundtrip_through_from_pretrained(hub, monkeypatch, tmp_path):
    import torch
    import transformers

    hub.patch_client(monkeypatch, tmp_path / "hf_home", token=GOOD)  # now with an implicit token (HF_TOKEN)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "tiny")
    api = HfApi()
    api.create_repo("alice/tiny", private=True)
    api.upload_folder(folder_path=tmp_path / "tiny", repo_id="alice/tiny")

    loaded = transformers.LlamaForCausalLM.from_pretrained("alice/tiny")
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    assert hub.find_requests("GET", r"^/alice/tiny/resolve/[^/]+/model\.safetensors$")
    assert all(r.status != 401 for r in hub.requests)  # the private repo was read with the implicit token
    assert hub.token_leaks(GOOD) == []
