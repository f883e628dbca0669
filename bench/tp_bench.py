"""Batch-1 decode of a Llama-shaped model with tensor parallelism over two GPUs (quant.tensor_parallel: this process
is rank 0, one spawned worker is rank 1, nccl) against the same model on one GPU through the app's compiled path.

Paths: "one GPU, compiled" (the registry and the Chat tab's path, as bench/multi_gpu.py --decode-paths measures it),
"split over 2 GPUs, compiled segments" (whole layers per GPU, quant.segments), "TP 2 GPUs, eager" (generate on the
ranks' plain local slices, quant.tensor_parallel.localize), "TP 2 GPUs, compiled" (every rank on its compiled, captured
decode loop: QUANT_FAST_GENERATION=all) and, with --with-static-cache, "TP 2 GPUs, static cache" (transformers
compiles the forward on CUDA when the cache is static). Each row: tokens/s after the first token, and how many of the
first 32 greedy tokens equal one GPU's. The goal of issue #29: TP at >= 1.3x one GPU compiled at 8B bf16.

    NCCL_NVLS_ENABLE=0 python bench/tp_bench.py --shape 8b --new-tokens 256 --out bench/results
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402
from bench.gpu_bench import prompts_from_text  # noqa: E402
from bench.llama_shapes import build_checkpoint  # noqa: E402


class Stamps:
    """A streamer that notes when each put comes (the first is the prompt): rank 0's tokens, as they are made."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode_rate(generate, kwargs: dict) -> tuple[float, torch.Tensor]:
    stamps = Stamps()
    torch.cuda.synchronize()
    out = generate(**kwargs, streamer=stamps)
    torch.cuda.synchronize()
    ended = time.perf_counter()
    tokens = stamps.times[1:]
    return (len(tokens) - 1) / max(ended - tokens[0], 1e-9), out


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shape="8b", new_tokens=256)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--with-static-cache", action="store_true",
                        help="also transformers' static cache on the ranks (its warm-up ran past 4 minutes at 8B)")
    args = parser.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    # the compiled path over the ranks is QUANT_FAST_GENERATION=all's (not yet auto's); the workers inherit it
    os.environ["QUANT_FAST_GENERATION"] = "all"
    if torch.cuda.device_count() < 2:
        raise SystemExit("This benchmark needs two GPUs.")
    from quant.compare import measure_decode
    from quant.loader import LoadRequest
    from quant.registry import ModelRegistry
    from quant.tensor_parallel import start_group

    checkpoint = build_checkpoint(args.shape, args.work / f"llama-{args.shape}")
    prompt = prompts_from_text(1, 24)[0]
    mode = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[args.dtype]
    rows, reference = [], None
    registry = ModelRegistry(max_models=1)
    try:
        loaded = registry.load(LoadRequest(model=str(checkpoint), mode=mode, device_map="cuda:0"))
        measure_decode(loaded, prompt, 8)  # warm-up (compiles)
        _, rate, compiled = measure_decode(loaded, prompt, args.new_tokens)
        ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            reference = loaded.model.generate(ids.to(loaded.device), attention_mask=torch.ones_like(ids).to(
                loaded.device), max_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
        rows.append({"path": "one GPU, compiled", "b1_tokens_per_s": rate, "compiled": compiled,
                     "generation_path": loaded.report.generation_path, "tokens_shared": 32, "error": None})
    except Exception as exc:  # noqa: BLE001 - a failing path is a row of its own
        rows.append({"path": "one GPU, compiled", "error": f"{type(exc).__name__}: {exc}"})
        ids = None
    finally:
        registry.unload_all()
        torch.cuda.empty_cache()
    print(rows[-1], flush=True)
    try:  # the other way to use both GPUs: whole layers on each, in turn (quant.segments)
        from bench.multi_gpu import split_limit
        from quant.methods import Mode

        loaded = registry.load(LoadRequest(model=str(checkpoint), mode=mode, device_map="auto",
                                           max_memory=split_limit(str(checkpoint), Mode(mode))))
        measure_decode(loaded, prompt, 8)
        _, rate, compiled = measure_decode(loaded, prompt, args.new_tokens)
        rows.append({"path": "split over 2 GPUs, compiled segments", "b1_tokens_per_s": rate, "compiled": compiled,
                     "generation_path": loaded.report.generation_path, "error": None})
    except Exception as exc:  # noqa: BLE001
        rows.append({"path": "split over 2 GPUs, compiled segments", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        registry.unload_all()
        torch.cuda.empty_cache()
    print(rows[-1], flush=True)

    started = time.perf_counter()
    group = start_group(str(checkpoint), world_size=2, dtype=args.dtype, backend="nccl", timeout_s=900)
    load_s = time.perf_counter() - started
    if ids is None:
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(str(checkpoint))(prompt, return_tensors="pt").input_ids
    base = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False)
    names = [torch.cuda.get_device_name(i) for i in range(2)]

    def save() -> None:
        """Written after every row: a path that hangs (the static cache's did, 2026-12-01, until the step's timeout
        killed the run) leaves the rows before it on disk."""
        one = next((r["b1_tokens_per_s"] for r in rows if r["path"] == "one GPU, compiled" and not r["error"]), None)
        for r in rows:
            if one and not r.get("error"):
                r["vs_one_gpu_compiled"] = r["b1_tokens_per_s"] / one
        write_results(args.out, result_stem("tp", args.shape, args.dtype, tag=args.tag),
                      {"devices": names, "shape": args.shape, "dtype": args.dtype, "new_tokens": args.new_tokens,
                       "rows": rows}, markdown)

    save()
    paths = [("TP 2 GPUs, eager", {}), ("TP 2 GPUs, compiled", {})]
    if args.with_static_cache:
        paths.append(("TP 2 GPUs, static cache", {"cache_implementation": "static"}))
    try:
        for label, extra in paths:
            row = {"path": label, "load_s": load_s}
            try:
                first = time.perf_counter()
                if label == "TP 2 GPUs, compiled":  # every rank compiles and captures its decode loop (quant.fastpath)
                    from transformers import AutoTokenizer

                    row["generation_path"] = group.prepare_compiled_path(
                        AutoTokenizer.from_pretrained(str(checkpoint)), group.model.config.max_position_embeddings)
                    if group.path is None:
                        raise RuntimeError(row["generation_path"])
                group.generate(**base, **extra, max_new_tokens=8, min_new_tokens=8)  # warm-up (compiles)
                row["warmup_s"] = time.perf_counter() - first
                rate, _ = decode_rate(group.generate, {**base, **extra, "max_new_tokens": args.new_tokens,
                                                       "min_new_tokens": args.new_tokens})
                out = group.generate(**base, **extra, max_new_tokens=32)[0, ids.shape[1]:].tolist()
                shared = None
                if reference is not None:
                    shared = next((i for i, (a, b) in enumerate(zip(out, reference)) if a != b),
                                  min(len(out), len(reference)))
                row.update(b1_tokens_per_s=rate, tokens_shared=shared, error=None)
            except Exception as exc:  # noqa: BLE001
                row["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            print(row, flush=True)
            rows.append(row)
            save()
    finally:
        group.close()


def markdown(data: dict) -> str:
    lines = [f"# Batch-1 decode, {data['shape']} {data['dtype']}: tensor parallel over two GPUs vs one GPU compiled "
             f"({', '.join(data['devices'])})", "",
             "| path | b1 tok/s | vs one GPU compiled | first 32 greedy tokens shared | error |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        rate = f"{r['b1_tokens_per_s']:.1f}" if r.get("b1_tokens_per_s") else ""
        ratio = f"{r['vs_one_gpu_compiled']:.2f}x" if r.get("vs_one_gpu_compiled") else ""
        lines.append(f"| {r['path']} | {rate} | {ratio} | {r.get('tokens_shared', '')} | {r.get('error') or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
