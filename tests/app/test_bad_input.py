"""The bad-input catalogue: one table of what users get wrong, each driven through the real app over HTTP.

Every input goes where the UI takes it (gradio_client on a served app; raw HTTP where a browser can send what the
client refuses to: NaN, an upload over the size limit), and a few also through the CLI (one as a real
`python -m quant` process, the others through `quant.cli.main` in this process: the same code, without paying the
~8 s of torch/transformers imports per case on 2 cores). Each must get
(a) a clear message: the gr.Error text holds the key words, never a traceback or gradio's generic "error", and
(b) no other effect: the server holds the same models with no lease left, loaded nothing, wrote nothing to the output
folder or the Hub cache, sent nothing to the Hub, ran no shipped code, and still answers a good request.

Hub cases use tests/support/hub_server.FakeHub over real HTTP (the server runs in this process, so pointing the
Hugging Face client at it points the app at it); gated repos answer 401/403 with `X-Error-Code: GatedRepo` as the Hub
does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tests.conftest import LLAMA, ROOT, T5
from tests.support.hub_server import FakeHub
from tests.support.model_tab import load_args

# max new tokens, sample, temperature, top-p, top-k, repetition penalty, no-repeat n-gram, seed
SETTINGS = (8, False, 0.7, 0.9, 50, 1.0, 0, "")  # seed "": the untouched Seed box
GOOD_BATCH = ("The with statement", None, "", False, "", 1, 1, False, 0.7, 0.9, 50, 1.0, 0, "")
MEMBER, STRANGER = "hf_member_token_0123", "hf_stranger_token_0123"  # the gated repo's owner, and someone else
NOT_CLEAR = ("Traceback", "Unexpected error", "verbose error reporting", 'File "')


# --------------------------------------------------------------------------------------------------------------------
# The world the inputs are tried in: files, folders, a fake Hub, the served app
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class World:
    """Paths and servers the cases refer to (as `{w.name}` in model references)."""

    url: str
    tmp: Path
    outputs: Path
    """QUANT_OUTPUT_DIR for this module; pushes may only come from here and quantize writes here."""
    pushable: Path
    """A model folder in the `client` session's own folder under `outputs`: the only kind of folder its push
    accepts (set by the `client` fixture)."""
    mine: Path
    """The `client` session's own output folder."""
    base: Path
    """The tests' temporary folder, holding every folder the cases name: QUANT_LOCAL_MODELS_ROOT in the "local"
    cases (the app loads no local folder without a root)."""
    root: Path
    """QUANT_LOCAL_MODELS_ROOT in the "rooted" cases."""
    secret: Path
    """A complete model outside `root` (a copy of the demo Llama)."""
    gptq: Path
    hub: FakeHub
    hf_home: Path
    marker: Path
    """Written by the 'remote code' of the custom checkpoints if it ever runs."""
    endpoints: dict[str, tuple[int, list[bool]]]
    """api name -> (fn_index, which inputs are gr.State), from the app's /config."""
    vit: Path = Path()
    clip: Path = Path()
    remote: Path = Path()
    """Unknown model type with auto_map: loading needs its shipped code, which writes `marker` if it runs."""
    junk: Path = Path()
    """A folder with a file but no config.json."""
    cli: dict[str, subprocess.Popen] = field(default_factory=dict)

    def file(self, name: str, data: bytes | str | Callable[[], bytes | str]) -> Path:
        """A file under this module's tmp folder (data may be a callable, so big files are built on use)."""
        data = data() if callable(data) else data
        path = self.tmp / "files" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def upload(self, name: str, data: bytes | str | Callable[[], bytes | str]) -> dict:
        return handle_file(str(self.file(name, data)))


def _make_model_folders(tmp: Path, marker: Path) -> dict[str, Path]:
    """Checkpoints that must be refused from their config alone (nothing else is read)."""
    from transformers import CLIPVisionConfig, ViTConfig

    folders = {name: tmp / name for name in ("vit", "clip", "remote", "junk")}
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
              architectures=["ViTForImageClassification"]).save_pretrained(folders["vit"])
    CLIPVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37).save_pretrained(folders["clip"])
    code = f"open({str(marker)!r}, 'w').write('remote code ran')\n"
    remote = folders["remote"]
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({
        "model_type": "my-custom-lm", "architectures": ["MyCustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.MyConfig", "AutoModelForCausalLM": "modeling_custom.MyLM"}}))
    for module in ("configuration_custom.py", "modeling_custom.py"):
        (remote / module).write_text(code)
    folders["junk"].mkdir()
    (folders["junk"] / "weights.bin").write_bytes(b"\x00" * 16)
    return folders


def _endpoints(url: str) -> dict[str, tuple[int, list[bool]]]:
    config = httpx.get(url + "config", timeout=30).json()
    kinds = {c["id"]: c["type"] for c in config["components"]}
    return {f"/{d['api_name']}": (d["id"], [kinds[i] == "state" for i in d["inputs"]])
            for d in config["dependencies"] if d.get("api_name")}


@pytest.fixture(scope="module")
def world(app_url, request, tmp_path_factory):
    """One served app for every case; the CLI cases start first, in parallel, and are collected later."""
    import transformers  # noqa: F401 - imported before patching, as hub_server.point_client_at requires

    tmp = tmp_path_factory.mktemp("bad-input")
    marker = tmp / "REMOTE_CODE_RAN"
    secret = tmp / "secret"
    shutil.copytree(ROOT / "quant" / "demo_models" / "tiny-llama-chat", secret)
    root = tmp / "models-root"
    root.mkdir()
    (root / "link").symlink_to(secret)
    outputs = tmp / "outputs"
    outputs.mkdir()
    with pytest.MonkeyPatch.context() as mp, FakeHub(tokens={MEMBER: "meta", STRANGER: "bob"}) as hub:
        mp.setenv("QUANT_OUTPUT_DIR", str(outputs))
        mp.delenv("HF_TOKEN", raising=False)
        mp.delenv("QUANT_LOCAL_MODELS_ROOT", raising=False)
        mp.delenv("QUANT_TRUST_REMOTE_CODE", raising=False)
        config = (secret / "config.json").read_bytes()
        hub.add_repo("meta/gated-llama", gated=True)
        hub.put_files("meta/gated-llama", {"config.json": config})
        hub.put_files("alice/tiny", {"config.json": config})
        w = World(app_url, tmp, outputs, Path(), Path(), tmp_path_factory.getbasetemp(), root, secret, Path(), hub,
                  tmp / "hf_home", marker, _endpoints(app_url))
        for name, path in _make_model_folders(tmp, marker).items():
            setattr(w, name, path)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for case in CASES:
            if case.cli is not None and case.cli_process:
                w.cli[case.name] = subprocess.Popen(
                    [sys.executable, "-m", "quant", *case.cli(w)], cwd=tmp, env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        w.gptq = request.getfixturevalue("gptq_llama_dir")  # built while the CLI runs start
        yield w
        for proc in w.cli.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        assert hub.server_errors == []


@pytest.fixture(scope="module")
def client(world) -> Client:
    """A browser-like session with the demo Llama as its model, and a quantized folder of its own to push."""
    from quant.quantize import output_folder

    session = _session(world)
    world.mine = output_folder(f"session:{session.session_hash}")
    world.pushable = world.mine / "tiny-llama-chat-GPTQ-4bit-g128"
    world.pushable.mkdir(parents=True)
    (world.pushable / "config.json").write_text("{}")
    return session


def _session(world: World) -> Client:
    session = Client(world.url, verbose=False, download_files=False)
    session.predict(*load_args(LLAMA, "bf16"), api_name="/load_model")
    return session


# --------------------------------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: where it goes, how it travels, and the words its message must hold."""

    name: str
    api: str | None
    """The endpoint (the UI's own event); None for an input only the CLI takes."""
    args: Callable[[World], tuple] = lambda w: ()
    expect: str = ""
    """A regex the message must match."""
    via: str = "client"
    """client: gradio_client; json: a raw JSON body (NaN); upload: a raw upload; row: the batch runs, its row says;
    compare-row: the Compare run answers, its one row says."""
    env: str = ""
    """hub: the Hugging Face client points at the fake Hub; rooted: QUANT_LOCAL_MODELS_ROOT is the world's `root`;
    local: it is the tests' temporary folder (every folder the cases name). Otherwise it is unset: a served app then
    loads no local folder."""
    before: Callable[[Client, World], Any] | None = None
    """Puts a fresh session where the input matters (a chat message to answer)."""
    cli: Callable[[World], list[str]] | None = None
    """The same input as `python -m quant` arguments (run from the module's tmp folder)."""
    cli_process: bool = False
    """Run the CLI case as its own `python -m quant` process (started with the module, run in parallel)."""
    xfail: str | None = None
    """A known gap: where it must be fixed. Strict, so the fix is noticed."""


def load(name: str, ref: str, expect: str, mode: str = "bf16", env: str = "", cli: str = "", **fields) -> Case:
    """A Model-tab load of `ref` (formatted with the world: `{w.secret}`); cli: "", "main" or "process"."""
    return Case(name, "/load_model", lambda w: load_args(ref.format(w=w), mode, **fields), expect, env=env,
                cli=(lambda w: ["load", ref.format(w=w), "--mode", mode]) if cli else None,
                cli_process=cli == "process")


def batch(name: str, expect: str, pasted: str = "", upload: tuple[str, Any] | None = None, column: str = "",
          size: int = 2, settings: tuple = SETTINGS, via: str = "client", xfail: str | None = None,
          cli: Callable[[World], list[str]] | None = None) -> Case:
    def args(w: World) -> tuple:
        return (pasted, w.upload(*upload) if upload else None, column, False, "", size, *settings)

    return Case(name, "/run_batch", args, expect, via=via, xfail=xfail, cli=cli)


def respond(name: str, expect: str, settings: tuple, message: str = "Explain the with statement.",
            via: str = "client") -> Case:
    """A chat reply asked for with `settings`, after `message` was sent in a fresh session."""
    return Case(name, "/chat_respond", lambda w: ("", *settings), expect, via=via,
                before=lambda c, w: c.predict(message, api_name="/chat_add_message"))


def quantize(name: str, expect: str, model: str = LLAMA, method: str = "gptq", source: str = "builtin",
             text: str = "", upload: tuple[str, Any] | None = None, env: str = "", damp: Any = 0.05) -> Case:
    def args(w: World) -> tuple:
        return (model.format(w=w), "", "", method, 4, 128, False, True, damp, 8, 64, source, text,
                w.upload(*upload) if upload else None)

    return Case(name, "/quantize", args, expect, env=env)


def push(name: str, expect: str, repo: str = "alice/tiny-gptq", folder: str = "{w.pushable}",
         token: str = "hf_typed_token", cli: bool = False) -> Case:
    """A push with the Hub client pointed at the fake Hub: if validation let it through, the Hub would see it."""
    return Case(name, "/push", lambda w: (folder.format(w=w), repo, True, False, token), expect, env="hub",
                cli=(lambda w: ["push", folder.format(w=w), "--repo", repo]) if cli else None)


def cli_batch(*extra: str):
    def argv(w: World) -> list[str]:
        return ["batch", LLAMA, "--input", str(w.file("ok.txt", "The with statement\n")), "--output",
                "results.jsonl", *extra]

    return argv


BINARY = b"PK\x03\x04\x00\x00binary\x00\x01\x02"
LATIN1 = "Caf\xe9 au lait\n".encode("latin-1")
OVER_CONTEXT = "word " * 2000
GATED_RE = r"meta/gated-llama is a gated repository"
SEED_RE = "Seed must be a whole number"  # quant.forms.GenerationForm.seed_value
NOT_REPO = "is not a valid repo id"
PUSH_ROOT = r"Only folders this session quantized \(under the output directory\) can be pushed"
REFUSED = r"is not a model this server can load: this server loads no local folders.*Give a Hub id"
"""The one refusal for every local path on a server without a models root (whether it exists or not)."""
OUTSIDE = r"is not a model this server can load: local models must be under"

CASES: list[Case] = [
    # --- what to load -------------------------------------------------------------------------------------------
    load("empty model box", "", "No model given"),
    load("blank model box", "   ", "No model given"),
    load("missing folder", "{w.tmp}/missing", "No such folder", env="local", cli="main"),
    load("folder without config.json", "{w.junk}", "has no config.json", env="local"),
    load("a file instead of a folder", "{w.vit}/config.json", "is a file, not a model folder", env="local"),
    load("repo id with too many parts", "a/b/c", REFUSED),
    load("a model id of 5,000 characters", "org/" + "m" * 4996, "The model reference is 5,000 characters long"),
    load("markup in the model box", "<img src=x onerror=alert(1)>", r"&lt;img src=x onerror=alert\(1\)&gt;"),
    load("a folder without a models root", "{w.secret}", REFUSED),
    load("a missing folder without a models root", "{w.tmp}/missing", REFUSED),
    load("a system file without a models root", "/etc/shadow", REFUSED),
    load("a relative folder without a models root", "outputs/x/y", REFUSED),
    load("demo name with ../", "demo:../x", "There is no demo model 'demo:../x'.*demo:tiny-llama-chat"),
    load("demo name that is an absolute path", "demo:{w.secret}", "There is no demo model", cli="process"),
    load("demo name climbing out", "demo:../../../../../../..{w.secret}", "There is no demo model"),
    load(".. without a models root", "..", REFUSED),
    load(".. under a models root", "..", OUTSIDE, env="rooted"),
    load("folder outside the models root", "{w.secret}", OUTSIDE, env="rooted"),
    load("root/../ outside the models root", "{w.root}/../secret", OUTSIDE, env="rooted"),
    load("link out of the models root", "{w.root}/link", OUTSIDE, env="rooted"),
    load("../ relative to the models root", "../secret", OUTSIDE, env="rooted"),
    load("system folder under a models root", "/etc", OUTSIDE, env="rooted"),
    load("unknown repo, Hub unreachable", "someone/not-cached", "Hub cannot be reached.*demo:tiny-llama-chat"),
    load("unknown repo", "nobody/nothing", "nobody/nothing was not found on the Hub", env="hub"),
    load("gated repo without a token", "meta/gated-llama", GATED_RE + ": it needs the token", env="hub"),
    load("gated repo, token without access", "meta/gated-llama", GATED_RE + ": this token has no access",
         env="hub", token=STRANGER),
    load("token the Hub does not know", "alice/tiny", "Hub rejected the token.*401", env="hub", token="hf_typo"),
    load("revision that does not exist", "alice/tiny", "alice/tiny has no revision 'no-such-branch'", env="hub",
         revision="no-such-branch"),
    load("custom code while trust_remote_code is off", "{w.remote}", "own modelling code.*QUANT_TRUST_REMOTE_CODE",
         env="local"),
    load("vision model (ViT)", "{w.vit}", "not a text-generation model.*ViTForImageClassification", env="local"),
    load("vision tower (CLIP)", "{w.clip}", r"clip is not a model type that generates text", env="local"),
    load("GPTQ checkpoint in nf4", "{w.gptq}", "already quantized with GPTQ.*mode gptq", mode="nf4", env="local"),
    load("GPTQ checkpoint in int8", "{w.gptq}", "already quantized with GPTQ.*mode gptq", mode="int8", env="local"),
    Case("unload a key this session never saw", "/unload_model", lambda w: ("someone@main:bf16:12345678",),
         "That model is not loaded"),
    load("plain checkpoint in gptq mode", LLAMA, "already GPTQ-quantized, and this one is not", mode="gptq"),
    load("max_memory that is no size", LLAMA, "not a memory size", max_memory="cpu=plenty"),
    # --- chat ---------------------------------------------------------------------------------------------------
    Case("empty chat message", "/chat_add_message", lambda w: ("   ",), "Type a message first"),
    Case("chat message over the length limit", "/chat_add_message", lambda w: ("x" * 300_000,),
         "The message is too long: 300,000 characters; the limit is 200,000"),
    Case("reply with no message", "/chat_respond", lambda w: ("", *SETTINGS), "Type a message first"),
    respond("max new tokens 0", "less than minimum value 1", (0, *SETTINGS[1:])),
    respond("max new tokens negative", "less than minimum value 1", (-5, *SETTINGS[1:])),
    respond("max new tokens huge", "greater than maximum value 2048", (10**12, *SETTINGS[1:])),
    respond("temperature huge", "greater than maximum value 2", (8, True, 50.0, *SETTINGS[3:])),
    respond("temperature negative", "less than minimum value 0.05", (8, True, -1.0, *SETTINGS[3:])),
    respond("top-p negative", "less than minimum value 0.05", (8, True, 0.7, -0.5, *SETTINGS[4:])),
    respond("top-p above 1", "greater than maximum value 1", (8, True, 0.7, 5.0, *SETTINGS[4:])),
    respond("max new tokens NaN", "Max new tokens must be a number", (float("nan"), *SETTINGS[1:]), via="json"),
    respond("temperature NaN", "temperature must be a number", (8, True, float("nan"), *SETTINGS[3:]), via="json"),
    respond("top-p NaN", "top-p must be a number", (8, True, 0.7, float("nan"), *SETTINGS[4:]), via="json"),
    respond("message past the context", "too long for this model.*context of 512", SETTINGS, message="word " * 3000),
    # --- batch --------------------------------------------------------------------------------------------------
    batch("no prompts at all", "the pasted text holds no prompts"),
    batch("only blank lines", "the pasted text holds no prompts", pasted="  \n\t\n"),
    batch("repetition penalty NaN", "repetition penalty must be a number", pasted="hi",
          settings=(8, False, 0.7, 0.9, 50, float("nan"), 0, ""), via="json"),
    batch("temperature NaN while sampling", "temperature must be a number", pasted="hi",
          settings=(8, True, float("nan"), 0.9, 50, 1.0, 0, ""), via="json",
          cli=cli_batch("--sample", "--temperature", "nan")),
    batch("max new tokens null", "Max new tokens must be a number", pasted="hi", settings=(None, *SETTINGS[1:])),
    batch("batch size null", "Batch size must be a number", pasted="hi", size=None),
    batch("seed beyond 64 bits", SEED_RE, pasted="hi", settings=(8, True, 0.7, 0.9, 50, 1.0, 0, str(10**30))),
    batch("seed that is a word", SEED_RE, pasted="hi", settings=(8, True, 0.7, 0.9, 50, 1.0, 0, "abc")),
    batch("negative seed", SEED_RE, pasted="hi", settings=(8, True, 0.7, 0.9, 50, 1.0, 0, "-1")),
    Case("seed beyond 64 bits (CLI)", None, expect="[Ss]eed",
         cli=cli_batch("--sample", "--seed", str(10**30))),
    batch("batch size 0", "less than minimum value 1", pasted="hi", size=0),
    batch("batch size huge", "greater than maximum value 64", pasted="hi", size=10_000),
    batch("binary upload", "bin.txt is a binary file, not text", upload=("bin.txt", BINARY),
          cli=lambda w: ["batch", LLAMA, "--input", str(w.file("bin.txt", BINARY)), "--output", "results.jsonl"]),
    batch("non-UTF-8 upload", r"latin.txt is not UTF-8 text \(line 1\)", upload=("latin.txt", LATIN1)),
    batch("upload over the batch limit", r"big.txt is 3.0 MiB; the limit is 2.0 MiB",
          upload=("big.txt", lambda: b"The with statement\n" * (3 * 2**20 // 19))),
    batch("executable upload", "Invalid file type", upload=("tool.exe", b"MZ\x90\x00")),
    batch("CSV row with missing fields", "Line 3 of rows.csv has 1 fields; the header has 2",
          upload=("rows.csv", "prompt,id\nHello,1\nlonely\n")),
    batch("CSV field past the csv module's limit", r"wide.csv is not valid CSV \(line 2: field larger",
          upload=("wide.csv", lambda: "prompt\n" + "x" * 200_000 + "\n")),
    batch("CSV column that does not exist", "no column 'question'; its columns: prompt, id",
          upload=("cols.csv", "prompt,id\nHello,1\n"), column="question"),
    batch("JSONL line that is not JSON", r"Line 2 of bad.jsonl is not valid JSON",
          upload=("bad.jsonl", '{"prompt": "ok"}\nnot json\n')),
    batch("JSONL object without the field", "Line 1 of nofield.jsonl has no 'prompt' field",
          upload=("nofield.jsonl", '{"text": "a"}\n')),
    batch("JSONL prompt that is a number", "Line 1 of num.jsonl: the prompt must be a string",
          upload=("num.jsonl", '{"prompt": 3}\n')),
    batch("too many prompts", "many.txt holds 1001 prompts; the limit is 1000", upload=("many.txt", "p\n" * 1001)),
    batch("prompt over the length limit", "Line 1 of long.txt is 20001 characters; the limit is 20000",
          upload=("long.txt", "x" * 20_001)),
    batch("prompt past the context", "past the model's context of 512", pasted=f"{OVER_CONTEXT}\nThe with statement",
          via="row"),
    Case("upload over the server's limit (batch or calibration)", "upload",
         lambda w: ("huge.txt", b"The with statement\n" * (21 * 2**20 // 19)),
         "File size exceeded maximum allowed size of 20971520 bytes", via="upload"),
    # --- quantize -----------------------------------------------------------------------------------------------
    quantize("quantize with an empty model box", "No model given", model=""),
    quantize("quantize a demo name with ../", "There is no demo model", model="demo:../x"),
    quantize("quantize a GPTQ checkpoint", "already quantized", model="{w.gptq}", env="local"),
    quantize("quantize a local folder without a models root", REFUSED, model="{w.secret}"),
    quantize("quantize with the damp percent box emptied", "Damp percent must be a number", damp=None),
    quantize("GPTQ of a seq2seq model", "causal LMs only.*int8 or nf4", model=T5),
    quantize("calibration: paste chosen, nothing pasted", "Paste some calibration text", source="paste", text=" \n"),
    quantize("calibration: upload chosen, no file", "Upload a .txt or .jsonl calibration file", source="upload"),
    quantize("calibration: pasted text over 20 MiB", r"pasted calibration text is 21.0 MiB; the limit is 20.0 MiB",
             source="paste", text="x" * (21 * 2**20)),
    quantize("calibration: binary upload", "cal.txt is a binary file, not text", source="upload",
             upload=("cal.txt", BINARY)),
    quantize("calibration: non-UTF-8 upload", r"cal-latin.txt is not UTF-8 text \(line 1\)", source="upload",
             upload=("cal-latin.txt", LATIN1)),
    quantize("calibration: CSV upload", "Invalid file type", source="upload", upload=("cal.csv", "text\nabc\n")),
    quantize("calibration: JSONL line that is not JSON", "Line 2 of cal.jsonl is not valid JSON", source="upload",
             upload=("cal.jsonl", '{"text": "ok"}\n{"text": \n')),
    quantize("calibration: JSONL text that is a number", "Line 1 of cal-num.jsonl: the calibration text must be a "
             "string", source="upload", upload=("cal-num.jsonl", '{"text": 5}\n')),
    quantize("calibration: blank .txt", "blank.txt holds no calibration texts", source="upload",
             upload=("blank.txt", " \n\n")),
    Case("calibration: file over 20 MiB (CLI)", None, expect=r"cal-big.txt is 21.0 MiB; the limit is 20.0 MiB",
         cli=lambda w: ["quantize", LLAMA, "--out", "quantized", "--no-eval", "--calibration",
                        str(w.file("cal-big.txt", lambda: b"x" * (21 * 2**20)))]),
    # --- push ---------------------------------------------------------------------------------------------------
    push("push to ../x", NOT_REPO, repo="../x", cli=True),
    push("push to ../etc/passwd", NOT_REPO, repo="../etc/passwd"),
    push("push to a/b/c", NOT_REPO, repo="a/b/c"),
    push("push to an empty repo id", NOT_REPO, repo=""),
    push("push to ..", NOT_REPO, repo=".."),
    push("push to user/../../x", NOT_REPO, repo="alice/../../x"),
    push("push to an absolute path", NOT_REPO, repo="/abs/path"),
    push("push to a name without a user", NOT_REPO, repo="alice"),
    push("push to a name with a space", NOT_REPO, repo="alice/ x"),
    push("push to a name ending in a dot", NOT_REPO, repo="alice/x."),
    push("push an empty folder box", PUSH_ROOT, folder=""),
    push("push a system folder", PUSH_ROOT, folder="/etc"),
    push("push outputs/../elsewhere", PUSH_ROOT, folder="{w.outputs}/../secret"),
    push("push another session's output", PUSH_ROOT, folder="{w.outputs}/v-0123456789abcdef/model"),
    push("push a folder that is not a model", r"missing is not a saved model folder \(no config.json\)",
         folder="{w.mine}/missing"),
    # --- compare ------------------------------------------------------------------------------------------------
    Case("compare with too many prompts", "/compare",
         lambda w: (LLAMA, ["bf16"], "", "", [], "p\n" * 17, 1, 4), "the Compare prompts holds 17 prompts; the limit "
         "is 16"),
    Case("compare a prompt over the length limit", "/compare",
         lambda w: (LLAMA, ["bf16"], "", "", [], "x" * 20_001, 1, 4), "Line 1 of the Compare prompts is 20001 "
         "characters; the limit is 20000"),
    Case("compare a local folder without a models root", "/compare",
         lambda w: ("{w.secret}".format(w=w), ["bf16"], "", "", [], "", 1, 4), REFUSED, via="compare-row"),
    push("push without a token", "Pushing needs a Hugging Face token", token=""),
]


assert len({c.name for c in CASES}) == len(CASES), "case names key the CLI runs: keep them unique"


def _params(via_cli: bool) -> list:
    chosen = [c for c in CASES if (c.cli is not None if via_cli else c.api is not None)]
    return [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
            for c in chosen]


# --------------------------------------------------------------------------------------------------------------------
# Driving and observing the server
# --------------------------------------------------------------------------------------------------------------------


def post_json(world: World, api: str, args: tuple, session: str) -> str:
    """Call an endpoint as any HTTP client can, with a body gradio_client refuses to send (NaN); the error text."""
    fn_index, is_state = world.endpoints[api]
    values = iter(args)
    data = [None if state else next(values) for state in is_state]  # the server keeps gr.State values itself
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                       "trigger_id": None})  # json.dumps writes NaN as the bare token NaN
    joined = httpx.post(world.url + "gradio_api/queue/join", content=body,
                        headers={"Content-Type": "application/json"}, timeout=30)
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    with httpx.stream("GET", world.url + "gradio_api/queue/data", params={"session_hash": session},
                      timeout=60) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                assert not message["success"], f"the app accepted {args}"
                return str(message["output"].get("error"))
    raise AssertionError("the queue closed without an answer")


def message_of(case: Case, session: Client, world: World) -> str:
    """Send the bad input; the message the user sees."""
    args = case.args(world)
    if case.via == "json":
        return post_json(world, case.api, args, session.session_hash)
    if case.via == "upload":
        from gradio.utils import get_upload_folder

        name, data = args
        answer = httpx.post(world.url + "gradio_api/upload", files={"files": (name, data)}, timeout=60)
        assert answer.status_code == 413, answer.text
        assert not list(Path(get_upload_folder()).rglob(name))  # refused before it was stored
        return answer.text
    if case.via == "row":
        table, totals, _files = session.predict(*args, api_name=case.api)
        rows = table["data"]
        assert all(row[2] and not row[5] for row in rows[1:]), rows  # the good prompts still got answers
        assert f"{len(rows)}/{len(rows)} prompts" in totals
        return rows[0][5]
    if case.via == "compare-row":  # a mode that cannot load fails its row; the run itself answers
        table, *_plots, _answers, _files = session.predict(*args, api_name=case.api)
        [row] = table["data"]
        return row[1]
    with pytest.raises(AppError) as info:
        session.predict(*args, api_name=case.api)
    return str(info.value)


def _files(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part in skip for part in p.relative_to(folder).parts))


def server_state(world: World) -> dict:
    """Everything a bad input must leave as it was. The server runs in this process: its registry is read directly."""
    from quant.registry import default_registry

    registry = default_registry()
    return {
        "loaded (key, leases)": [(m.key, registry.in_use(m.key)) for m in registry.loaded()],
        "loads so far": len(registry.history()),
        "output folder": _files(world.outputs),
        "Hub cache": _files(world.hf_home, skip=(".locks", "refs")),  # refs: a branch's commit id, no content
        "Hub writes": [f"{r.method} {r.path}" for r in world.hub.requests if r.method not in ("GET", "HEAD")],
        "Hub repos": {key: len(repo.commits) for key, repo in world.hub.repos.items()},
        "remote code ran": world.marker.exists(),
    }


def still_serves(session: Client) -> None:
    """A good request right after: one prompt, one token, from the session's model."""
    table, totals, files = session.predict(*GOOD_BATCH, api_name="/run_batch")
    assert totals.startswith("1/1 prompts") and table["data"][0][3] == 1 and len(files) == 2


def assert_clear(text: str, expect: str) -> None:
    assert re.search(expect, text, re.S), f"{text!r} does not say {expect!r}"
    assert not any(noise in text for noise in NOT_CLEAR), text


@pytest.mark.parametrize("case", _params(via_cli=False))
def test_bad_input_over_http(case: Case, world: World, client: Client, monkeypatch) -> None:
    if case.env == "hub":
        world.hub.patch_client(monkeypatch, world.hf_home)
    elif case.env == "rooted":
        monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(world.root))
    elif case.env == "local":
        monkeypatch.setenv("QUANT_LOCAL_MODELS_ROOT", str(world.base))
    session = client
    if case.before is not None:
        session = _session(world)
        case.before(session, world)
    before = server_state(world)
    text = message_of(case, session, world)
    after = server_state(world)
    assert_clear(text, case.expect)
    assert after == before
    still_serves(session)


@pytest.mark.parametrize("case", _params(via_cli=True))
def test_bad_input_through_the_cli(case: Case, world: World, capsys, monkeypatch) -> None:
    before = server_state(world)
    if case.cli_process:
        proc = world.cli[case.name]
        stdout, stderr = proc.communicate(timeout=300)
        status = proc.returncode
    else:
        from quant.cli import main

        monkeypatch.chdir(world.tmp)
        status = main(case.cli(world))  # an exception escaping here is a traceback for the user
        stdout, stderr = capsys.readouterr()
    assert status == 2, stderr
    assert_clear(stderr, case.expect)
    assert stderr.strip().splitlines()[-1].startswith("error: ")
    assert stdout == ""
    assert not (world.tmp / "results.jsonl").exists() and not (world.tmp / "quantized").exists()
    assert server_state(world) == before
