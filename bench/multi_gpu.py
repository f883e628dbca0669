"""A Llama-shaped model split over two GPUs against the same model on one: memory per GPU, decode and batch speed.

For bf16, int8, nf4 and GPTQ (or the --modes given): one run on cuda:0 alone, one with `device_map="auto"` and a `max_memory` that forces
a split (GPU 0 gets about 55% of the weights). Uses quant.compare, so the numbers are those the Compare tab shows.
Keep NCCL's NVLink multicast off on the device machines (NCCL_NVLS_ENABLE=0; nothing here uses NCCL). Run on a
machine with two GPUs:

    NCCL_NVLS_ENABLE=0 python bench/multi_gpu.py --shapes 1b,8b --out bench/results
    NCCL_NVLS_ENABLE=0 python bench/multi_gpu.py --shapes 70b-40layers --modes bf16 --tag=-70b-batch --out bench/results

--decode-paths measures batch-1 decode (the Chat tab's path) of one mode instead, in one run: one GPU compiled, one
GPU cut into segments (QUANT_DECODE_SEGMENTS: what the segments cost without the link), split over two GPUs compiled
(one CUDA graph per device segment, quant/segments.py) and split eager (QUANT_FAST_GENERATION=off, what a split model
got by default before 2026-12-01). The goal of issue #29: split compiled at >= 0.8x one GPU compiled at 8B bf16.

    NCCL_NVLS_ENABLE=0 python bench/multi_gpu.py --decode-paths --shapes 8b --modes bf16 --out bench/results
    NCCL_NVLS_ENABLE=0 python bench/multi_gpu.py --decode-paths --shapes 70b-40layers --modes bf16 --new-tokens 32 \
        --tag=-70b --out bench/results          # issue 29's 70B-class shape: loads, decodes; tok/s against its floor
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, environment, result_stem, write_results  # noqa: E402
from bench.gpu_bench import copy_bandwidth, prompts_from_text  # noqa: E402
from bench.llama_shapes import build_checkpoint  # noqa: E402
from quant.compare import ModeSpec, compare  # noqa: E402
from quant.gptq import GPTQRecipe, builtin_textsets, quantize_gptq  # noqa: E402
from quant.methods import Mode, QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402
from quant.source import resolve_source  # noqa: E402
from quant.registry import estimate_footprint  # noqa: E402

MiB = 2**20
GiB = 2**30


TABLE_MODES = "bf16,int8,nf4,gptq"


def split_limit(location: str, mode: Mode) -> str:
    """max_memory that puts a bit over half of the estimated weights on GPU 0 and the rest on GPU 1."""
    estimate = estimate_footprint(resolve_source(location), mode)
    first = max(int(estimate * 0.55), 256 * MiB)
    return f"0={first // MiB}MiB, 1={2 * estimate // MiB + 1024}MiB"


def bench_shape(shape: str, args) -> list[dict]:
    checkpoint = build_checkpoint(shape, args.work / f"llama-{shape}")
    wanted = (args.modes or TABLE_MODES).split(",")
    gptq_dir = args.work / f"llama-{shape}-gptq-4bit-g128"
    if "gptq" in wanted and not (gptq_dir / "config.json").is_file():
        quantize_gptq(str(checkpoint), GPTQRecipe(bits=4, group_size=128, num_samples=16, seq_len=512),
                      [builtin_textsets()["python-reference"].read_text()], gptq_dir, device="cuda:0")
    specs = [ModeSpec("bf16", Mode.BF16, str(checkpoint)), ModeSpec("int8", Mode.INT8, str(checkpoint)),
             ModeSpec("nf4", Mode.NF4, str(checkpoint), QuantOptions(bnb4_compute_dtype="bf16")),
             ModeSpec("gptq", Mode.GPTQ, str(gptq_dir), QuantOptions(gptq_backend=args.gptq_backend))]
    specs = [spec for spec in specs if spec.label in wanted]
    prompts = prompts_from_text(32, 24)
    rows = []
    for spec in specs:
        for placement, device_map, max_memory in (("one GPU", "cuda:0", None),
                                                  ("two GPUs", "auto", split_limit(spec.model, spec.mode))):
            registry = ModelRegistry(max_models=1)
            [result] = compare(spec.model, [spec], registry=registry, prompts=prompts, eval_text="", batch_size=32,
                               new_tokens=args.new_tokens, answer_tokens=8, device_map=device_map,
                               max_memory=max_memory)
            report = registry.history()[-1] if registry.history() else None
            row = {"shape": shape, "mode": spec.label, "placement": placement, "max_memory": max_memory,
                   **{k: v for k, v in asdict(result).items() if k != "answers"},
                   "bytes_by_device": report.bytes_by_device if report else None,
                   "device_map": report.device_map if report else None}
            print(f"[{shape}] {spec.label} {placement}: {result.error or ''} b1 {result.decode_tokens_per_s or 0:.1f} "
                  f"b32 {result.batch_tokens_per_s or 0:.0f} tok/s; by device "
                  f"{ {d: round(b / MiB) for d, b in (row['bytes_by_device'] or {}).items()} }", flush=True)
            rows.append(row)
    return rows


DECODE_PATHS = (  # label, device_map, split (max_memory from split_limit), environment
    ("one GPU, compiled", "cuda:0", False, {"QUANT_FAST_GENERATION": "auto"}),
    ("one GPU, compiled in 2 segments", "cuda:0", False,
     {"QUANT_FAST_GENERATION": "auto", "QUANT_DECODE_SEGMENTS": "2"}),
    # "all": the quantized modes' segments too (auto compiles a split in 16/32-bit only; measured with "all" on
    # 2026-12-01, where 16/32-bit takes the same path)
    ("two GPUs, compiled segments", "auto", True, {"QUANT_FAST_GENERATION": "all"}),
    ("two GPUs, eager", "auto", True, {"QUANT_FAST_GENERATION": "off"}),
)


def bench_decode_paths(shape: str, args) -> list[dict]:
    """Batch-1 decode of each mode through each of DECODE_PATHS (quant.compare.measure_decode: the Chat tab's path),
    and how many of the first greedy tokens each path shares with the one-GPU compiled one."""
    from quant.compare import measure_decode
    from quant.generation import start_generate
    from quant.loader import LoadRequest

    checkpoint = build_checkpoint(shape, args.work / f"llama-{shape}")
    prompt = prompts_from_text(1, 24)[0]
    rows = []
    for mode in (args.modes or "bf16").split(","):
        reference_tokens = None
        for label, device_map, split, variables in DECODE_PATHS:
            if split and torch.cuda.device_count() < 2:
                continue  # one GPU: what the segments cost without the link, against the one-GPU compiled path
            with environment({"QUANT_DECODE_SEGMENTS": None, **variables}):
                registry = ModelRegistry(max_models=1)
                row = {"shape": shape, "mode": mode, "path": label, "device_map": device_map}
                try:
                    max_memory = split_limit(str(checkpoint), Mode(mode)) if split else None
                    loaded = registry.load(LoadRequest(model=str(checkpoint), mode=mode, device_map=device_map,
                                                       max_memory=max_memory))
                    measure_decode(loaded, prompt, 8)  # warm-up
                    _, rate, compiled = measure_decode(loaded, prompt, args.new_tokens)
                    # The first 32 greedy token ids (not the text: the 8B shape's ids mostly decode to nothing)
                    encoded = loaded.tokenizer([prompt], return_tensors="pt").to(loaded.device)
                    length = encoded["input_ids"].shape[1]
                    future, _ = start_generate(loaded, dict(**encoded, max_new_tokens=32, min_new_tokens=32,
                                                            do_sample=False, temperature=None, top_p=None, top_k=None,
                                                            pad_token_id=loaded.tokenizer.pad_token_id),
                                               batch_size=1, total_tokens=length + 32)
                    tokens = future.result()[0, length:].tolist()
                    reference_tokens = reference_tokens if reference_tokens is not None else tokens
                    shared = next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b),
                                  min(len(tokens), len(reference_tokens)))
                    # Batch 1 reads every weight once a token; split, each GPU reads its own share, one after another
                    floor = args.bandwidth / loaded.report.footprint_bytes
                    row.update(max_memory=max_memory, b1_tokens_per_s=rate, compiled=compiled,
                               weight_bytes=loaded.report.footprint_bytes, floor_tokens_per_s=floor,
                               share_of_floor=rate / floor,
                               generation_path=loaded.report.generation_path,
                               compile_seconds=loaded.report.compile_seconds,
                               bytes_by_device=loaded.report.bytes_by_device, tokens_shared=shared, error=None)
                except Exception as exc:  # noqa: BLE001 - a failing path is a row of its own
                    row.update(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                finally:
                    registry.unload_all()
            print(f"[{shape}] {mode} {label}: {row.get('error') or ''} b1 {row.get('b1_tokens_per_s') or 0:.1f} "
                  f"tok/s; {row.get('generation_path', '')}", flush=True)
            rows.append(row)
        base = next((r["b1_tokens_per_s"] for r in rows if r["mode"] == mode and r["shape"] == shape
                     and r["path"] == DECODE_PATHS[0][0] and not r["error"]), None)
        for r in rows:
            if r["mode"] == mode and r["shape"] == shape and base and not r["error"]:
                r["vs_one_gpu_compiled"] = r["b1_tokens_per_s"] / base
    return rows


def decode_paths_markdown(summary: dict) -> str:
    bandwidth = summary.get("bandwidth")
    lines = [f"# Batch-1 decode: one GPU vs split, compiled vs eager ({', '.join(summary['devices'])})", "",
             f"Floor: the measured copy bandwidth of cuda:0 ({bandwidth / 1e9:,.0f} GB/s) / the weights' bytes: the "
             "rate if every weight were read once a token at that bandwidth (split over GPUs, one after another)."
             if bandwidth else "", "",
             "| shape | mode | path | b1 tok/s | vs one GPU compiled | share of floor | greedy tokens shared with the "
             "first path (of 32) | compile s | generation path |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["error"]:
            lines.append(f"| {r['shape']} | {r['mode']} | {r['path']} | failed: {r['error']} ||||||")
            continue
        share = f"{r['share_of_floor']:.0%} of {r['floor_tokens_per_s']:.0f}" if "share_of_floor" in r else ""
        lines.append(f"| {r['shape']} | {r['mode']} | {r['path']} | {r['b1_tokens_per_s']:.1f} | "
                     f"{r.get('vs_one_gpu_compiled', 0):.2f}x | {share} | {r['tokens_shared']} | "
                     f"{r['compile_seconds']:.0f} | {r['generation_path']} |")
    return "\n".join(lines)


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shapes="1b", modes=None, new_tokens=64,
                          helps={"modes": f"modes, comma-separated: of the table ({TABLE_MODES} unless given) or of "
                                          "--decode-paths (bf16 unless given)"})
    parser.add_argument("--gptq-backend", default="gptq_triton")
    parser.add_argument("--decode-paths", action="store_true",
                        help="batch-1 decode: one GPU compiled, in segments, split compiled, split eager (--modes)")
    args = parser.parse_args()
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    if torch.cuda.device_count() < 2 and not args.decode_paths:
        raise SystemExit("This benchmark needs two GPUs (--decode-paths runs its one-GPU paths on one).")
    args.out.mkdir(parents=True, exist_ok=True)
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if args.decode_paths:
        args.bandwidth = copy_bandwidth()
        rows = [row for shape in args.shapes.split(",") for row in bench_decode_paths(shape, args)]
        write_results(args.out, result_stem("multi-gpu-decode-paths", tag=args.tag),
                      {"devices": names, "bandwidth": args.bandwidth, "rows": rows}, decode_paths_markdown)
        return
    rows = [row for shape in args.shapes.split(",") for row in bench_shape(shape, args)]
    write_results(args.out, result_stem("multi-gpu", tag=args.tag), {"devices": names, "rows": rows}, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# One GPU vs two ({', '.join(summary['devices'])})", "",
             "| shape | mode | placement | max_memory | weights per device (MiB) | peak GPU MiB | b1 tok/s | b32 tok/s "
             "| path |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["error"]:
            lines.append(f"| {r['shape']} | {r['mode']} | {r['placement']} | {r['max_memory'] or ''} | "
                         f"failed: {r['error']} |||||")
            continue
        per_device = ", ".join(f"{d}: {b / MiB:,.0f}" for d, b in (r["bytes_by_device"] or {}).items())
        lines.append(f"| {r['shape']} | {r['mode']} | {r['placement']} | {r['max_memory'] or ''} | {per_device} | "
                     f"{r['peak_gpu_bytes'] / MiB:,.0f} | {r['decode_tokens_per_s']:.1f} | "
                     f"{r['batch_tokens_per_s']:,.0f} | {r['generation_path']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
