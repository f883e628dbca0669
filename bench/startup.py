"""How long from starting a process to the first token of a chat, with an empty kernel cache (cold) and with the cache
the cold start filled (warm)? Issue 27's start-up goals for the 8B shape: warm <= 10 s, cold <= 40 s.

Each start is a fresh Python process, as a restarted app is: it imports quant, loads the checkpoint through the
registry (the app's path: compile and capture at load where the mode compiles) and streams one chat reply. The child
reports the seconds at each stage against its own start; the parent also times the whole process. Per mode, the
first start gets an empty QUANT_KERNEL_CACHE folder of its own and the next ones reuse it.

    python bench/startup.py --shape 8b --modes bf16,nf4 --device-map cuda:0 --out bench/results          # GPU
    python bench/startup.py --model demo:tiny-llama-chat --modes fp32 --device-map cpu --out /tmp/startup  # CPU check

--profile-warm: one more warm start, its load run under cProfile (the main thread and the compiled runner thread,
where compile and capture run) with dynamo's own phase times: where a warm start's compile-from-cache goes (slower
than the unprofiled starts by the profiler's overhead, so read its shares, not its seconds).

--other-weights (a shape): one more start, of a checkpoint of the same shape with other random weights, on the cache
the first model filled: does a kernel cache serve every model of that architecture and shape (issue 27: "reuse
across models of the same shape")?
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"cold": 40.0, "warm": 10.0}
"""Issue 27's goals for the 8B shape (seconds from the start to the first token); shown for that shape only."""
PROFILED = "warm, load profiled"


class _StreamedWeights(logging.Handler):
    """quant.loader's line saying it streamed the weights (QUANT_STREAM_WEIGHTS), if it did."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Streamed "):
            self.message = record.getMessage()


def child(model: str, mode: str, device_map: str, new_tokens: int) -> None:
    """One start: print a JSON line of stage times, in seconds since the parent launched this process."""
    launched = float(os.environ["STARTUP_BENCH_LAUNCHED"])

    def since() -> float:
        return time.time() - launched

    import torch  # noqa: F401 - timed on its own: most of an import is torch's

    torch_imported = since()
    import transformers  # noqa: F401

    transformers_imported = since()
    from quant.generation import GenerationSettings, stream_chat
    from quant.loader import LoadRequest
    from quant.registry import ModelRegistry

    imported = since()
    streamed = _StreamedWeights()
    logging.getLogger("quant.loader").addHandler(streamed)
    logging.getLogger("quant.loader").setLevel(logging.INFO)
    profilers = _start_profiling() if os.environ.get("STARTUP_BENCH_PROFILE") else None
    loaded = ModelRegistry(max_models=1).load(LoadRequest(model=model, mode=mode, device_map=device_map))
    load_done = since()
    profile = _stop_profiling(profilers) if profilers else None
    first = None
    reply = None
    for reply in stream_chat(loaded, [{"role": "user", "content": "Hello, who are you?"}],
                             settings=GenerationSettings(max_new_tokens=new_tokens)):
        if first is None and reply.stats.new_tokens:
            first = since()
    print(json.dumps({"torch_import_s": torch_imported, "transformers_import_s": transformers_imported,
                      "import_s": imported, "load_done_s": load_done, "first_token_s": first,
                      "load_seconds": loaded.report.load_seconds, "compile_seconds": loaded.report.compile_seconds,
                      "path": reply.stats.path if reply else None, "generation": loaded.report.generation_path,
                      "bytecode": _bytecode(), "weights": streamed.message or "transformers' from_pretrained",
                      **({"profile": profile} if profile else {})}))


def _bytecode() -> str:
    """Whether this process read its packages' compiled bytecode: without it every start compiles torch's and
    transformers' sources (PYTHONDONTWRITEBYTECODE=1 and no __pycache__, as on the device machine before the eighth
    session: 13 s of import instead of 6)."""
    import torch

    cached = (Path(torch.__file__).parent / "__pycache__").is_dir()
    return "compiled" if cached else f"none for torch (PYTHONDONTWRITEBYTECODE={int(sys.flags.dont_write_bytecode)})"


def _start_profiling() -> list:
    """cProfile on this thread and on the compiled runner thread (where compile, capture and warm-up run)."""
    import cProfile

    from quant.fastpath import compiled_runner

    main, runner = cProfile.Profile(), cProfile.Profile()
    main.enable()
    try:
        compiled_runner().submit(runner.enable).result()
    except ValueError:  # Python 3.12+: one profiler per process (sys.monitoring), and it sees every thread
        runner = None
    return [main, runner]


def _stop_profiling(profilers: list, top: int = 45) -> dict:
    """The functions with the most cumulative seconds in either thread, and dynamo's phase times."""
    import pstats

    from quant.fastpath import compiled_runner

    main, runner = profilers
    if runner is not None:
        compiled_runner().submit(runner.disable).result()
    main.disable()
    functions, own = [], []
    for profiler in filter(None, (main, runner)):
        stats = pstats.Stats(profiler).stats
        functions += [(cumulative, f"{Path(file).name}:{line}({name})")
                      for (file, line, name), (_, _, _, cumulative, _) in stats.items() if cumulative >= 0.05]
        own += [(inside, f"{Path(file).name}:{line}({name})")
                for (file, line, name), (_, _, inside, _, _) in stats.items() if inside >= 0.02]
    phases = {}
    try:  # dynamo's own accounting (not a public API: the profile above stands without it)
        from torch._dynamo.utils import calculate_time_spent

        phases = {phase: round(seconds, 2) for phase, seconds in calculate_time_spent().items()}
    except Exception:  # noqa: BLE001
        pass
    return {"top_cumulative_s": [[round(seconds, 2), where] for seconds, where in sorted(functions, reverse=True)[:top]],
            "top_own_s": [[round(seconds, 2), where] for seconds, where in sorted(own, reverse=True)[:20]],
            "dynamo_phases_s": phases}


def start(model: str, mode: str, device_map: str, cache: Path, new_tokens: int, regions: str,
          profile: bool = False) -> dict:
    # The repo first, then what the caller had on the path (the device machine's packages live in /tmp/site).
    python_path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "QUANT_KERNEL_CACHE": str(cache), "PYTHONPATH": python_path, "QUANT_COMPILE_REGIONS": regions}
    if profile:
        env["STARTUP_BENCH_PROFILE"] = "1"
    for inherited in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # the cache must be this run's folder alone
        env.pop(inherited, None)
    env["STARTUP_BENCH_LAUNCHED"] = repr(time.time())
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--out", str(cache), "--child", model, "--child-mode", mode,
                           "--device-map", device_map, "--new-tokens", str(new_tokens)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}",
                "process_s": wall}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = wall
    return row


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, model=None, shape="8b", modes="bf16",
                          device_map="cuda:0", new_tokens=8)
    parser.add_argument("--warm-starts", type=int, default=2, help="starts after the cold one, on its cache")
    parser.add_argument("--other-weights", action="store_true",
                        help="then start the same shape with other weights on that cache")
    parser.add_argument("--profile-warm", action="store_true",
                        help="then one more warm start with its load under cProfile (where the compile from cache goes)")
    parser.add_argument("--compile-regions", default="layers",
                        help="QUANT_COMPILE_REGIONS to start with, comma-separated (layers,model: both, each with its "
                             "own cold cache)")
    parser.add_argument("--checkpoint-dtype", default="float16",
                        help="dtype the random-weight checkpoint is stored in (bfloat16: as Llama-3's, loaded in bf16 "
                             "without a conversion, which QUANT_STREAM_WEIGHTS needs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a model: run as one start (a child process)
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.child_mode, args.device_map, args.new_tokens)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    other = None
    if args.model:
        model, name = args.model, args.model.split(":")[-1].split("/")[-1]
    else:
        from bench.llama_shapes import build_checkpoint

        device = "cpu" if args.device_map == "cpu" else "cuda"
        import torch

        dtype = getattr(torch, args.checkpoint_dtype)
        folder = f"llama-{args.shape}" + ("" if dtype == torch.float16 else f"-{args.checkpoint_dtype}")
        model, name = str(build_checkpoint(args.shape, args.work / folder, dtype=dtype, device=device)), args.shape
        other = (str(build_checkpoint(args.shape, args.work / f"{folder}-seed1", dtype=dtype, device=device, seed=1))
                 if args.other_weights else None)
    rows = []
    from quant.methods import parse_mode  # not at the top: a child times its own imports

    for mode in args.modes.split(","):
        model_of_mode, other_of_mode = model, other
        method = parse_mode(mode).method
        if method.needs_quantized_checkpoint and not args.model:
            # GPTQ and AWQ load only their own checkpoints: the shape quantized by the Quantize pipeline (kept in --work)
            from bench.methods_bench import BenchMode, quantized_checkpoint

            model_of_mode = quantized_checkpoint(BenchMode(mode, method.name), Path(model), args.work)[0]
            other_of_mode = other and quantized_checkpoint(BenchMode(mode, method.name), Path(other), args.work)[0]
        for regions in args.compile_regions.split(","):
            cache = args.work / f"startup-kcache-{name}-{mode}-{regions}"
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            starts = ["cold", *(f"warm {index}" for index in range(1, 1 + args.warm_starts))]
            starts += ["other weights, same shape (warm cache)"] if other else []
            starts += [PROFILED] if args.profile_warm else []
            for label in starts:
                row = {"mode": mode, "regions": regions, "start": label,
                       **start(other_of_mode if label.startswith("other") else model_of_mode, mode, args.device_map,
                               cache, args.new_tokens, regions, profile=label == PROFILED)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    data = {"model": model, "name": name, "device_map": args.device_map, "new_tokens": args.new_tokens,
            "goals": GOALS if name == "8b" else None, "command": "python " + " ".join(sys.argv), "rows": rows,
            "stream_weights": os.environ.get("QUANT_STREAM_WEIGHTS") or "auto",
            "checkpoint_dtype": args.checkpoint_dtype}
    write_results(args.out, result_stem("startup", name, args.device_map.split(":")[0], tag=args.tag), data,
                  markdown)


def _s(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _bytecode_seen(rows: list[dict]) -> list[str]:
    return sorted({row.get("bytecode", "not recorded") for row in rows if not row.get("error")})


def markdown(data: dict) -> str:
    machine = data.get("machine", {})
    lines = [f"# Start to first chat token, {data['name']} on {machine.get('gpu') or 'CPU'}", "",
             f"`{data['command']}`: each start a fresh process (import, load through the registry with its compile "
             f"and capture, one chat reply of {data['new_tokens']} tokens); the cold start has an empty "
             "QUANT_KERNEL_CACHE, the warm ones reuse what it wrote.", "",
             "Times are seconds since the process was launched: torch imported, transformers imported, the app's "
             "modules imported, the load done (weights, compile and capture), the first token of the reply. "
             "In a running app: from the load's start to the first token (what a user of an app already up waits for "
             "after choosing the model: the same start without the imports). "
             "Compile regions: QUANT_COMPILE_REGIONS (layers: one decoder layer compiled for all; model: the whole "
             "forward).", "",
             f"Python bytecode of the packages: {', '.join(_bytecode_seen(data['rows']))} (without it, every start "
             "compiles torch's sources: seconds of import that a pip install does not have).", "",
             f"Checkpoint stored in {data.get('checkpoint_dtype', 'float16')}; QUANT_STREAM_WEIGHTS="
             f"{data.get('stream_weights') or 'off'}; how each start loaded its weights: "
             + "; ".join(sorted({f"{r['start']}: {r['weights']}" for r in data["rows"] if r.get("weights")}))
             + ".", "",
             "| mode | compile regions | start | torch s | transformers s | import s | load done s | first token s | "
             "of which compile s | in a running app s | process s | path | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goals = data.get("goals")
    for row in data["rows"]:
        if row.get("error"):
            lines.append(f"| {row['mode']} | {row.get('regions', '')} | {row['start']} | failed: "
                         f"{row['error'][:200]} | | | | | | | {_s(row['process_s'])} | | |")
            continue
        kind = "cold" if row["start"] == "cold" else "warm"
        goal = ""
        in_app = None if row["first_token_s"] is None else row["first_token_s"] - row["import_s"]
        if goals and row["first_token_s"] is not None and row["start"] != PROFILED:
            goal = f"<= {goals[kind]:.0f} s: {'met' if row['first_token_s'] <= goals[kind] else 'NOT met'}"
        lines.append(f"| {row['mode']} | {row.get('regions', '')} | {row['start']} | {_s(row.get('torch_import_s'))} | "
                     f"{_s(row.get('transformers_import_s'))} | {_s(row['import_s'])} | {_s(row['load_done_s'])} | "
                     f"{_s(row['first_token_s'])} | {_s(row['compile_seconds'])} | {_s(in_app)} | "
                     f"{_s(row['process_s'])} | "
                     f"{row['path']} | {goal} |")
    for row in data["rows"]:
        if row.get("profile"):
            profile = row["profile"]
            lines += ["", f"## Where the profiled load went ({row['mode']}, {row.get('regions', '')}: cumulative "
                      "seconds under cProfile, the main thread and the compiled runner thread)", "",
                      f"dynamo's phases: {json.dumps(profile['dynamo_phases_s'])}", "", "| cumulative s | function |",
                      "|---|---|"]
            lines += [f"| {seconds:.2f} | `{where}` |" for seconds, where in profile["top_cumulative_s"]]
            lines += ["", "Most seconds in the function itself:", "", "| own s | function |", "|---|---|"]
            lines += [f"| {seconds:.2f} | `{where}` |" for seconds, where in profile.get("top_own_s", [])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
