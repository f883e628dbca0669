"""What freezing the import-time objects out of garbage collection (quant.loader.freeze_startup_objects, as app.py
and `python -m quant` do at start-up) saves on each model load and unload, in one process: the app's modules
imported (gradio included, as the served app has them), then --cycles loads and unloads of the same model through
the registry before the freeze, then as many after it (a first cycle before both reads the files and imports what
loading needs). Each load and unload runs gc.collect() (a true memory baseline before a load, a model's cycles freed after
an unload); a full collection walks every object of the process.

    python bench/gc_freeze.py --out bench/results                       # the demo Llama in bf16 on the CPU
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", model="demo:tiny-llama-chat", mode="bf16", device_map="cpu")
    parser.add_argument("--cycles", type=int, default=10, help="loads and unloads timed on each side of the freeze")
    args = parser.parse_args()
    import app  # noqa: F401 - the served app's imports: the heap a collection walks
    from quant.loader import LoadRequest, freeze_startup_objects
    from quant.registry import ModelRegistry

    registry = ModelRegistry(max_models=1)
    request = LoadRequest(model=args.model, mode=args.mode, device_map=args.device_map)

    def cycle() -> float:
        started = time.perf_counter()
        loaded = registry.load(request)
        key = loaded.key
        del loaded
        registry.unload(key)
        return time.perf_counter() - started

    cycle()  # the first load reads the files and imports what loading needs
    objects = len(gc.get_objects())
    collect_started = time.perf_counter()
    gc.collect()
    collect_before = time.perf_counter() - collect_started
    before = [cycle() for _ in range(args.cycles)]
    freeze_startup_objects()
    collect_started = time.perf_counter()
    gc.collect()
    collect_after = time.perf_counter() - collect_started
    after = [cycle() for _ in range(args.cycles)]
    data = {"command": " ".join(["python bench/gc_freeze.py", *sys.argv[1:]]), "model": args.model,
            "mode": args.mode, "device_map": args.device_map, "objects": objects, "frozen": gc.get_freeze_count(),
            "gc_collect_s": {"before": collect_before, "after": collect_after},
            "cycle_s": {"before": before, "after": after},
            "median_s": {"before": statistics.median(before), "after": statistics.median(after)}}
    write_results(args.out, result_stem("gc-freeze", args.mode, args.device_map, tag=args.tag), data, markdown)


def markdown(data: dict) -> str:
    median = data["median_s"]
    return "\n".join([
        f"# Load + unload with the start-up objects frozen out of garbage collection, {data['model']} "
        f"[{data['mode']}] on {data['device_map']}", "",
        f"`{data['command']}`: one process, the app's modules imported ({data['objects']:,} objects tracked, "
        f"{data['frozen']:,} frozen by quant.loader.freeze_startup_objects); {len(data['cycle_s']['before'])} load + "
        "unload cycles through the registry before the freeze, then as many after it.", "",
        "| | before the freeze | after | ratio |", "|---|---|---|---|",
        f"| one gc.collect() ms | {data['gc_collect_s']['before'] * 1e3:.1f} | {data['gc_collect_s']['after'] * 1e3:.2f} "
        "| |",
        f"| load + unload, median s | {median['before']:.3f} | {median['after']:.3f} | "
        f"{median['before'] / median['after']:.2f}x |", ""])


if __name__ == "__main__":
    main()
