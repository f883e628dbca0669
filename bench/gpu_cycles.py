"""20 load / generate / unload cycles per mode on the GPU: does GPU memory come back to where it started?

Each cycle loads through the registry (the app's path, compiled generation included where it applies), answers one
chat turn, unloads. Memory is read after every unload (`torch.cuda.memory_allocated`, and `memory_reserved` after
the registry's `empty_cache`). Run on the device machine:

    python bench/gpu_cycles.py --cycles 20 --out bench/results
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402
from bench.llama_shapes import build_checkpoint  # noqa: E402
from quant.generation import GenerationSettings, stream_chat  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.methods import QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402

MiB = 2**20


def cycles(registry: ModelRegistry, request: LoadRequest, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        loaded = registry.load(request)
        reply = list(stream_chat(loaded, [{"role": "user", "content": "Hello"}],
                                 settings=GenerationSettings(max_new_tokens=16)))[-1]
        path = reply.stats.path
        key = loaded.key
        del loaded, reply
        registry.unload(key)
        rows.append({"cycle": index + 1, "allocated": torch.cuda.memory_allocated(),
                     "reserved": torch.cuda.memory_reserved(), "path": path})
    return rows


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shape="1b", modes="fp16,int8,nf4")
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(args.shape, args.work / f"llama-{args.shape}")
    registry = ModelRegistry(max_models=1)
    start = {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
    results = {}
    for mode in args.modes.split(","):
        options = QuantOptions(bnb4_compute_dtype="fp16") if mode == "nf4" else QuantOptions()
        rows = cycles(registry, LoadRequest(model=str(checkpoint), mode=mode, options=options, device_map="cuda:0"),
                      args.cycles)
        results[mode] = rows
        first, last = rows[0], rows[-1]
        print(f"{mode}: allocated after cycle 1 {first['allocated'] / MiB:.1f} MiB, after cycle {len(rows)} "
              f"{last['allocated'] / MiB:.1f} MiB; reserved {first['reserved'] / MiB:.1f} -> "
              f"{last['reserved'] / MiB:.1f} MiB; path {last['path']}", flush=True)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": args.shape,
               "cycles": args.cycles, "start": start, "modes": results}
    write_results(args.out, result_stem("gpu-cycles", args.shape, tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    start = summary["start"]
    lines = [f"# {summary['cycles']} load/chat/unload cycles per mode, Llama-{summary['shape']} shape, "
             f"{summary['device']}", "",
             f"Before the first load: allocated {start['allocated'] / MiB:.1f} MiB, reserved "
             f"{start['reserved'] / MiB:.1f} MiB.", "",
             "| mode | generation path per cycle | allocated after cycle 1 (MiB) | after the last (MiB) | "
             "max over cycles 2..N (MiB) | reserved after the last (MiB) |", "|---|---|---|---|---|---|"]
    for mode, rows in summary["modes"].items():
        later = max(r["allocated"] for r in rows[1:]) if len(rows) > 1 else rows[0]["allocated"]
        paths = Counter(r["path"] for r in rows)
        lines.append(f"| {mode} | {', '.join(f'{p} x{n}' for p, n in paths.items())} | "
                     f"{rows[0]['allocated'] / MiB:.1f} | {rows[-1]['allocated'] / MiB:.1f} | {later / MiB:.1f} | "
                     f"{rows[-1]['reserved'] / MiB:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
