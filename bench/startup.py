"""How long from starting a process to the first token of a chat, with an empty kernel cache (cold) and with the cache
the cold start filled (warm)? Issue 27's start-up goals for the 8B shape: warm <= 10 s, cold <= 40 s.

Each start is a fresh Python process, as a restarted app is: it imports quant, loads the checkpoint through the
registry (the app's path: compile and capture at load where the mode compiles) and streams one chat reply. The child
reports the seconds at each stage against its own start; the parent also times the whole process. Per mode, the
first start gets an empty QUANT_KERNEL_CACHE folder of its own and the next ones reuse it.

    python bench/startup.py --shape 8b --modes bf16,nf4 --device-map cuda:0 --out bench/results          # GPU
    python bench/startup.py --model demo:tiny-llama-chat --modes fp32 --device-map cpu --out /tmp/startup  # CPU check

--other-weights (a shape): one more start, of a checkpoint of the same shape with other random weights, on the cache
the first model filled: does a kernel cache serve every model of that architecture and shape (issue 27: "reuse
across models of the same shape")?
"""

from __future__ import annotations

import argparse
import json
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
    loaded = ModelRegistry(max_models=1).load(LoadRequest(model=model, mode=mode, device_map=device_map))
    load_done = since()
    first = None
    reply = None
    for reply in stream_chat(loaded, [{"role": "user", "content": "Hello, who are you?"}],
                             settings=GenerationSettings(max_new_tokens=new_tokens)):
        if first is None and reply.stats.new_tokens:
            first = since()
    print(json.dumps({"torch_import_s": torch_imported, "transformers_import_s": transformers_imported,
                      "import_s": imported, "load_done_s": load_done, "first_token_s": first,
                      "load_seconds": loaded.report.load_seconds, "compile_seconds": loaded.report.compile_seconds,
                      "path": reply.stats.path if reply else None, "generation": loaded.report.generation_path}))


def start(model: str, mode: str, device_map: str, cache: Path, new_tokens: int, regions: str) -> dict:
    env = {**os.environ, "QUANT_KERNEL_CACHE": str(cache), "PYTHONPATH": str(ROOT), "QUANT_COMPILE_REGIONS": regions}
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
    parser.add_argument("--compile-regions", default="layers",
                        help="QUANT_COMPILE_REGIONS to start with, comma-separated (layers,model: both, each with its "
                             "own cold cache)")
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
        model, name = str(build_checkpoint(args.shape, args.work / f"llama-{args.shape}", device=device)), args.shape
        other = (str(build_checkpoint(args.shape, args.work / f"llama-{args.shape}-seed1", device=device, seed=1))
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
            for label in starts + (["other weights, same shape (warm cache)"] if other else []):
                row = {"mode": mode, "regions": regions, "start": label,
                       **start(other_of_mode if label.startswith("other") else model_of_mode, mode, args.device_map,
                               cache, args.new_tokens, regions)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    data = {"model": model, "name": name, "device_map": args.device_map, "new_tokens": args.new_tokens,
            "goals": GOALS if name == "8b" else None, "command": "python " + " ".join(sys.argv), "rows": rows}
    write_results(args.out, result_stem("startup", name, args.device_map.split(":")[0], tag=args.tag), data,
                  markdown)


def _s(value) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(data: dict) -> str:
    machine = data.get("machine", {})
    lines = [f"# Start to first chat token, {data['name']} on {machine.get('gpu') or 'CPU'}", "",
             f"`{data['command']}`: each start a fresh process (import, load through the registry with its compile "
             f"and capture, one chat reply of {data['new_tokens']} tokens); the cold start has an empty "
             "QUANT_KERNEL_CACHE, the warm ones reuse what it wrote.", "",
             "Times are seconds since the process was launched: torch imported, transformers imported, the app's "
             "modules imported, the load done (weights, compile and capture), the first token of the reply. "
             "Compile regions: QUANT_COMPILE_REGIONS (layers: one decoder layer compiled for all; model: the whole "
             "forward).", "",
             "| mode | compile regions | start | torch s | transformers s | import s | load done s | first token s | "
             "of which compile s | process s | path | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    goals = data.get("goals")
    for row in data["rows"]:
        if row.get("error"):
            lines.append(f"| {row['mode']} | {row.get('regions', '')} | {row['start']} | failed: "
                         f"{row['error'][:200]} | | | | | | {_s(row['process_s'])} | | |")
            continue
        kind = "cold" if row["start"] == "cold" else "warm"
        goal = ""
        if goals and row["first_token_s"] is not None:
            goal = f"<= {goals[kind]:.0f} s: {'met' if row['first_token_s'] <= goals[kind] else 'NOT met'}"
        lines.append(f"| {row['mode']} | {row.get('regions', '')} | {row['start']} | {_s(row.get('torch_import_s'))} | "
                     f"{_s(row.get('transformers_import_s'))} | {_s(row['import_s'])} | {_s(row['load_done_s'])} | "
                     f"{_s(row['first_token_s'])} | {_s(row['compile_seconds'])} | {_s(row['process_s'])} | "
                     f"{row['path']} | {goal} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
