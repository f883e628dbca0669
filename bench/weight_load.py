"""How fast a checkpoint's weights reach the GPU: transformers' own load against quant.weight_stream's reader.

    python bench/weight_load.py --shape 8b --out bench/results                       # GPU (the warm-start question)
    python bench/weight_load.py --shape tiny --device-map cpu --out /tmp/r           # CPU (plumbing)

A warm 8B bf16 start spent 3.3 of its 4.3 s of weights in host-to-GPU copies from pageable memory
(bench/results/startup-8b-cuda-profiled-fifteenth.md). One process, the checkpoint read once before so it is in the
page cache (a warm start's case), then per repeat, alternating: (1) `from_pretrained(folder)` as quant.loader calls it,
(2) quant.weight_stream.read_safetensors alone for each --threads, (3) the reader's state dict handed to
`from_pretrained(state_dict=...)` (the model class's own loading: renames, ties, dtype). The state of (3) must equal
(1)'s tensor for tensor, or the script stops. Each row is the best of --repeats (seconds and GB/s of checkpoint bytes).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402


def _clock(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(folder: Path, device_map: str, dtype_name: str, threads: list[int], repeats: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quant.weight_stream import checkpoint_files, read_safetensors

    device = torch.device(device_map)
    dtype = getattr(torch, dtype_name)
    files = checkpoint_files(folder)
    size = sum(f.stat().st_size for f in files)
    for f in files:  # into the page cache, as for a warm start
        with open(f, "rb") as handle:
            while handle.read(64 << 20):
                pass
    config = AutoConfig.from_pretrained(folder)
    model_class = AutoModelForCausalLM._model_mapping[type(config)]
    seconds: dict[str, list[float]] = {}

    unused: dict[str, int] = {}

    def timed(label: str, load):
        began = _clock(device)
        result = load()
        seconds.setdefault(label, []).append(_clock(device) - began)
        if device.type == "cuda":  # reserved by the caching allocator and not in use, right after the load
            unused[label] = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return result

    for _ in range(repeats):
        reference = timed("from_pretrained(folder)", lambda: AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=device_map)).state_dict()
        reference = {name: tensor.detach() for name, tensor in reference.items()}
        for count in threads:
            read = timed(f"read_safetensors, {count} threads",
                         lambda: read_safetensors(files, device, threads=count))
            del read
            _free(device)
        streamed = timed(f"read_safetensors ({threads[-1]} threads) + from_pretrained(state_dict)",
                         lambda: model_class.from_pretrained(
                             None, config=config, state_dict=read_safetensors(files, device, threads=threads[-1]),
                             dtype=dtype, device_map=device_map)).state_dict()
        differing = [name for name in reference if not torch.equal(reference[name], streamed[name])]
        if differing or set(reference) != set(streamed):
            raise SystemExit(f"the streamed load differs from from_pretrained's: {differing[:5]} "
                             f"{sorted(set(reference) ^ set(streamed))[:5]}")
        del reference, streamed
        _free(device)
    rows = [{"load": label, "best_s": min(times), "seconds": times, "gb_per_s": size / min(times) / 1e9,
             "unused_reserved_gb": unused[label] / 1e9 if label in unused else None}
            for label, times in seconds.items()]
    return {"checkpoint_bytes": size, "files": len(files), "dtype": dtype_name, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU", "rows": rows,
            "equal": True}


def markdown(data: dict) -> str:
    base = next(r for r in data["rows"] if r["load"] == "from_pretrained(folder)")["best_s"]
    lines = [f"# Weights to {data['device']} ({data['gpu']}): {data['checkpoint_bytes'] / 1e9:.1f} GB in "
             f"{data['files']} file(s), loaded as {data['dtype']}", "",
             f"`{data['command']}`: {__doc__.split(chr(10) + chr(10))[2].strip()}", "",
             "| load | best s | GB/s | vs from_pretrained(folder) | every repeat s | reserved unused after, GB |",
             "|---|---|---|---|---|---|"]
    for row in data["rows"]:
        unused = "" if row.get("unused_reserved_gb") is None else f"{row['unused_reserved_gb']:.1f}"
        lines.append(f"| {row['load']} | {row['best_s']:.2f} | {row['gb_per_s']:.1f} | {base / row['best_s']:.2f}x | "
                     + ", ".join(f"{s:.2f}" for s in row["seconds"]) + f" | {unused} |")
    lines += ["", "The streamed model's tensors equal from_pretrained(folder)'s (checked every repeat). Reserved "
              "unused: the caching allocator's memory not in use right after the load (from_pretrained warms it up "
              "with a block the model's size before loading; quant.loader empties the cache after a streamed load)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, model=None, shape="8b", device_map="cuda:0")
    parser.add_argument("--dtype", default="bfloat16", help="the dtype the model is loaded in")
    parser.add_argument("--threads", default="1,4,8", help="reader threads to try, comma-separated (the last one "
                                                           "also feeds from_pretrained)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkpoint-dtype", default="float16", help="dtype the random-weight checkpoint is stored in")
    args = parser.parse_args()
    if args.model:
        folder, name = Path(args.model), Path(args.model).name
    else:
        from bench.llama_shapes import build_checkpoint

        device = "cpu" if args.device_map == "cpu" else "cuda"
        import torch

        dtype = getattr(torch, args.checkpoint_dtype)
        folder = args.work / (f"llama-{args.shape}" + ("" if dtype == torch.float16 else f"-{args.checkpoint_dtype}"))
        folder, name = build_checkpoint(args.shape, folder, dtype=dtype, device=device), args.shape
    data = measure(folder, args.device_map, args.dtype, [int(t) for t in args.threads.split(",")], args.repeats)
    data["command"] = "python bench/weight_load.py " + " ".join(sys.argv[1:])
    device_name = "cpu" if args.device_map == "cpu" else "cuda"
    write_results(args.out, result_stem("weight-load", name, device_name, tag=args.tag), data, markdown)


if __name__ == "__main__":
    main()
