"""`python -m quant load` prints the report; errors (a malformed setting too, in the app as well) are one line, exit
status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import LLAMA, ROOT


def run_cli(*args: str, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    return subprocess.run([sys.executable, "-m", "quant", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_load_json_report():
    result = run_cli("load", LLAMA, "--mode", "nf4", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mode"] == "nf4" and report["linear_layers"]["Linear4bit"] == 28
    assert report["quantization"]["bnb_4bit_quant_type"] == "nf4"


def test_load_text_report_and_progress():
    result = run_cli("load", LLAMA, "--mode", "int8", "--int8-threshold", "4.0")
    assert result.returncode == 0, result.stderr
    assert "Linear8bitLt x28" in result.stdout and "llm_int8_threshold=4.0" in result.stdout
    assert "[100%] Loaded" in result.stderr


def test_error_is_one_line_without_traceback(tmp_path):
    result = run_cli("load", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: No such folder")
    assert "Traceback" not in result.stderr


def test_malformed_setting_stops_the_cli_and_the_app_with_its_name():
    """An operator setting that is not a number: one line naming it, exit status 2, no traceback; the app does not
    start serving."""
    result = run_cli("load", LLAMA, QUANT_STATIC_CACHE_TOKENS="512,two")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: QUANT_STATIC_CACHE_TOKENS='512,two' is not a comma-separated list of whole numbers. "
        "For example QUANT_STATIC_CACHE_TOKENS=512,2048.")
    assert "Traceback" not in result.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QUANT_MAX_LOADED_MODELS": "three", "GRADIO_SERVER_PORT": "7997"}
    app = subprocess.run([sys.executable, "app.py"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert app.returncode == 2, app.stderr[-2000:]
    assert app.stderr.strip().splitlines()[-1] == (
        "error: QUANT_MAX_LOADED_MODELS='three' is not a whole number. Unset it for the default, 3.")
    assert "Traceback" not in app.stderr and "Running on" not in app.stdout


def test_every_subcommand_with_json_prints_json_alone_on_stdout(tmp_path, gptq_llama_dir):
    """Libraries' banners and log lines (gptqmodel's at import) go to stderr: stdout parses as JSON, in separate
    processes as a user's shell runs them (the push goes to tests/support/hub_server.FakeHub over HTTP)."""
    from tests.support.hub_server import FakeHub

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The with statement\nA class\n")
    with FakeHub(tokens={"hf_cli_token_0123456": "alice"}) as hub:
        hub_env = {"HF_ENDPOINT": hub.url.rstrip("/"), "HF_TOKEN": "hf_cli_token_0123456", "HF_HUB_OFFLINE": "0",
                   "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")}
        commands = {
            "load": ["load", str(gptq_llama_dir), "--mode", "gptq", "--json"],
            "batch": ["batch", LLAMA, "--input", str(prompts), "--output", str(tmp_path / "out.jsonl"),
                      "--max-new-tokens", "4", "--json"],
            "quantize": ["quantize", LLAMA, "--samples", "4", "--seq-len", "32", "--no-eval", "--out",
                         str(tmp_path / "q"), "--json"],
            "compare": ["compare", LLAMA, "--modes", f"bf16,nf4,gptq:{gptq_llama_dir}", "--new-tokens", "4",
                        "--batch-size", "2", "--json", "-"],
            "push": ["push", str(gptq_llama_dir), "--repo", "alice/tiny-gptq", "--json"],
            "plan": ["plan", LLAMA, "--max-memory", "0=1MiB,1=1MiB,cpu=1GiB", "--json"],
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT), **hub_env}
        running = {name: subprocess.Popen([sys.executable, "-m", "quant", *argv], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
                   for name, argv in commands.items()}
        outputs = {name: proc.communicate(timeout=600) for name, proc in running.items()}
    for name, (stdout, stderr) in outputs.items():
        assert running[name].returncode == 0, (name, stderr[-2000:])
        json.loads(stdout)  # nothing else on stdout
    loaded = json.loads(outputs["load"][0])
    assert loaded["quantization"]["backend"] == "gptq_int4pack"
    assert [(g["reason"], g["examples"]) for g in loaded["kept"]] == [("head", "lm_head")]  # GPTQ quantized the rest
    batch = json.loads(outputs["batch"][0])
    assert batch["done"] == 2 and (batch["engine"], batch["engine_reason"]) == ("continuous", "")
    quantized = json.loads(outputs["quantize"][0])
    assert quantized["method"] == "gptq" and len(quantized["layer_errors"]) == 4 * 7  # the demo Llama: 4 layers
    assert all(e["loss"] >= 0 for e in quantized["layer_errors"])
    layer_lines = [line for line in outputs["quantize"][1].splitlines() if line.startswith("layer ")]
    assert [line.split(":")[0] for line in layer_lines] == [f"layer {n:>3}" for n in range(4)]  # each once, in order
    worst = max((e for e in quantized["layer_errors"] if e["layer"] == 0), key=lambda e: e["loss"])
    assert layer_lines[0].endswith(f"max {worst['loss']:.3e} ({worst['module']})") and "7 modules" in layer_lines[0]
    compared, table = json.loads(outputs["compare"][0]), outputs["compare"][1]  # the table goes to stderr
    assert [r["label"] for r in compared["results"]] == ["bf16", "nf4", f"gptq:{gptq_llama_dir}"]
    assert compared["schema"] == 2 and compared["quality"]["window"] == compared["quality"]["stride"] == 512
    nf4 = compared["results"][1]
    assert nf4["kl_mean"] > 0 and nf4["top1_agreement"] < 100 and nf4["verdict"].endswith("bf16")
    assert "b1 tok/s" in table and "next-token quality vs bf16" in table and nf4["verdict"] in table
    assert [g["reason"] for g in nf4["kept"]] == ["head"] and compared["results"][0]["kept"] == []
    assert "nf4                     not nf4: the output head, which nf4 leaves unquantized: 1 module" in table
    assert json.loads(outputs["push"][0])["repo_id"] == "alice/tiny-gptq"
    planned = json.loads(outputs["plan"][0])  # two GPUs this machine need not have
    assert planned["budgets"] == {"0": 2**20, "1": 2**20, "cpu": 2**30} and planned["budget_source"] == "max_memory"
    bf16 = next(m for m in planned["modes"] if m["mode"] == "bf16")
    assert bf16["verdict"] == "offload" and bf16["fits"] and "offloaded to CPU RAM" in bf16["reason"]
    assert sum(d["bytes"] for d in bf16["devices"]) == bf16["total_bytes"]


def test_an_unforeseen_error_is_one_line_with_the_traceback_in_a_log(tmp_path, capsys):
    """A checkpoint whose weights file is not safetensors at all: the library's own exception type is nothing the
    CLI knows, and still ends as one line naming where the traceback went."""
    import shutil

    from quant.source import resolve_location

    broken = tmp_path / "broken"
    shutil.copytree(resolve_location(LLAMA)[0], broken)
    (broken / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The with statement\n")
    from quant.cli import main  # in this process: the same code as `python -m quant`, without its imports' time

    status = main(["batch", str(broken), "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")])
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: unexpected SafetensorError: Error while deserializing header"), stderr
    assert "Traceback" not in stderr
    log = last.split("(traceback in ")[1].rstrip(")")
    assert "SafetensorError" in open(log, encoding="utf-8").read().split("Traceback")[-1]
