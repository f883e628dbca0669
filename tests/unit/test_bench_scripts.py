"""Every script in bench/ starts and parses its arguments, run as the device session runs it (`python bench/x.py`):
a GPU session must not be spent on an import error (one script imported a module that no longer existed). The
scripts run as programs, not imported: tests do not import from bench/."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if "def main(" in p.read_text())


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


RUN_EACH_WITH_HELP = """
import contextlib, io, runpy, sys
failed = []
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
        failed.append(f"{script}: --help did not exit")
    except SystemExit as exited:
        if exited.code != 0 or "usage:" not in out.getvalue():
            failed.append(f"{script}: exit {exited.code}")
    except Exception as exc:
        failed.append(f"{script}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_bench_script_starts_and_prints_its_usage():
    """One interpreter runs each script as __main__ with --help (one torch import instead of fifteen)."""
    assert len(SCRIPTS) >= 10
    done = run_script("-c", RUN_EACH_WITH_HELP, *(f"bench/{name}" for name in SCRIPTS))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout


def test_methods_bench_refuses_an_unknown_option_before_building_anything(tmp_path):
    done = run_script("bench/methods_bench.py", "--modes", "bf16,hqq[hqq_bitz=3]", "--out", str(tmp_path / "out"),
                      "--work", str(tmp_path / "work"))
    assert done.returncode != 0
    assert "hqq has no option 'hqq_bitz'" in done.stderr
    assert not (tmp_path / "work").exists()


def test_batch_engines_refuses_a_reference_run_without_replies_before_building_anything(tmp_path):
    """--reference needs a run written with --keep-replies: without its replies there is nothing to compare with,
    and a GPU session must not learn that after building and loading an 8B model."""
    reference = tmp_path / "reference.json"
    run = '"prompts": 128, "shortest": 16, "longest": 1000, "new_tokens": 128'
    reference.write_text('{%s, "modes": [{"mode": "bf16", "engines": [{"engine": "padded"}]}]}' % run)
    done = run_script("bench/batch_engines.py", "--modes", "bf16", "--reference", str(reference),
                      "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert done.returncode != 0
    assert "holds no replies: write the reference run with --keep-replies" in done.stderr
    # replies of other prompts: refused too, naming what differs
    reference.write_text('{%s, "modes": [{"mode": "bf16", "engines": [{"engine": "padded", "replies": [["a", 1]]}]}]}'
                         % run.replace('"new_tokens": 128', '"new_tokens": 64'))
    done = run_script("bench/batch_engines.py", "--modes", "bf16", "--reference", str(reference),
                      "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert done.returncode != 0
    assert "ran other prompts (128 of 16-1000 tokens, 64 new)" in done.stderr
    assert not (tmp_path / "work").exists()
