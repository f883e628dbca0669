"""GPU benchmark of every mode on Llama-shaped checkpoints of real sizes, through the app's own code (quant.compare,
quant.batching.run_batch, quant.gptq).

For each shape: load, footprint, peak GPU memory, time to first token, batch-1 decode tok/s, batch-32 throughput,
and the batch-1 bandwidth floor (weight bytes / measured copy bandwidth) with each mode's share of it. Also the
Batch tab's path (32 prompts through run_batch) and, with --attention, eager vs sdpa with 1k-token prompts.

    python bench/gpu_bench.py --shapes 1b --out bench/results            # on the device machine
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.llama_shapes import build_checkpoint  # noqa: E402
from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402
from quant.compare import ModeSpec, compare  # noqa: E402
from quant.batching import run_batch  # noqa: E402
from quant.generation import GenerationSettings  # noqa: E402
from quant.gptq import GPTQRecipe, builtin_textsets, quantize_gptq  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.methods import Mode, QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402

MiB = 2**20


def copy_bandwidth(gib: float = 4.0) -> float:
    """Device memory bandwidth in bytes/s: a device-to-device copy, bytes read plus bytes written."""
    n = int(gib * 2**30) // 2
    src = torch.randn(n, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    times.sort()
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 2 / times[len(times) // 2]


def prompts_from_text(count: int, words: int) -> list[str]:
    text = builtin_textsets()["python-reference"].read_text().split()
    return [" ".join(text[i * 97: i * 97 + words]) for i in range(count)]


def bench_shape(shape: str, work: Path, args, bandwidth: float) -> dict:
    checkpoint = build_checkpoint(shape, work / f"llama-{shape}")
    gptq_dir = work / f"llama-{shape}-gptq-4bit-g128"
    gptq_seconds = None
    if not (gptq_dir / "config.json").is_file():
        started = time.perf_counter()
        quantize_gptq(str(checkpoint), GPTQRecipe(bits=4, group_size=128, num_samples=args.gptq_samples, seq_len=512),
                      [builtin_textsets()["python-reference"].read_text()], gptq_dir, device="cuda:0")
        gptq_seconds = time.perf_counter() - started
        print(f"[{shape}] GPTQ 4-bit g128 quantization: {gptq_seconds:.0f} s", flush=True)
    specs = [ModeSpec("fp16", Mode.FP16, str(checkpoint)), ModeSpec("bf16", Mode.BF16, str(checkpoint)),
             ModeSpec("int8", Mode.INT8, str(checkpoint)),
             ModeSpec("nf4", Mode.NF4, str(checkpoint), QuantOptions(bnb4_compute_dtype="fp16")),
             *[ModeSpec(f"gptq ({b})", Mode.GPTQ, str(gptq_dir), QuantOptions(gptq_backend=b))
               for b in args.gptq_backends.split(",")]]
    if args.modes:
        specs = [s for s in specs if s.label.split(" ")[0] in args.modes.split(",")]
    prompts = prompts_from_text(32, 24)
    registry = ModelRegistry(max_models=1)
    rows = []
    for path in args.paths.split(","):
        # The same modes on each generation path: eager HF generate, then the compiled path the app uses by default.
        # "all": every mode that can trace is compiled here, so the bench measures what `auto` should include.
        os.environ["QUANT_FAST_GENERATION"] = {"eager": "off", "compiled": "all"}[path]
        os.environ["QUANT_COMPILED_BATCH_SIZES"] = "1,32"
        for result in compare(str(checkpoint), specs, registry=registry, prompts=prompts, eval_text="",
                              batch_size=32, new_tokens=args.new_tokens, answer_tokens=8, device_map="cuda:0"):
            row = asdict(result)
            row.pop("answers")
            row["path"] = path
            if not result.error:
                # Batch-1 decode reads every weight once per token: bytes / bandwidth is the fastest it can be.
                floor = bandwidth / result.footprint_bytes
                row["bandwidth_floor_tok_s"] = floor
                row["share_of_floor"] = result.decode_tokens_per_s / floor
            print(f"[{shape}] {path} {result.label}: {result.error or ''} "
                  f"b1 {row.get('decode_tokens_per_s') or 0:.1f} tok/s, b32 {row.get('batch_tokens_per_s') or 0:.0f} "
                  f"tok/s, {result.generation_path}", flush=True)
            rows.append(row)
    os.environ.pop("QUANT_FAST_GENERATION")

    # The Batch tab's path: 32 prompts through run_batch (left padding, stop tokens), fp16, nf4 and GPTQ.
    batch_rows = []
    for label, mode, location, options in (("fp16", Mode.FP16, checkpoint, QuantOptions()),
                                           ("nf4", Mode.NF4, checkpoint, QuantOptions(bnb4_compute_dtype="fp16")),
                                           ("gptq", Mode.GPTQ, gptq_dir,
                                            QuantOptions(gptq_backend=args.gptq_backends.split(",")[0]))
                                           ) if args.batch_tab else ():
        loaded = registry.load(LoadRequest(model=str(location), mode=mode, options=options, device_map="cuda:0"))
        settings = GenerationSettings(max_new_tokens=args.new_tokens)
        list(run_batch(loaded, list(enumerate(prompts[:4], 1)), settings, batch_size=4))  # warm-up
        progress = list(run_batch(loaded, list(enumerate(prompts, 1)), settings, batch_size=32))[-1]
        batch_rows.append({"mode": label, "prompts": progress.total, "seconds": progress.seconds,
                           "prompts_per_s": progress.done / progress.seconds,
                           "generated_tokens_per_s": progress.generated_tokens / progress.seconds})
        print(f"[{shape}] batch tab path {label}: {batch_rows[-1]}", flush=True)
        key = loaded.key
        del loaded
        registry.unload(key)
    return {"shape": shape, "gptq_quantize_seconds": gptq_seconds, "modes": rows, "batch_tab": batch_rows}


def bench_attention(work: Path, args) -> list[dict]:
    """eager vs sdpa on the 1B shape, bf16, 1k-token prompts, batch 1 and 32."""
    checkpoint = build_checkpoint("1b", work / "llama-1b")
    long_prompts = prompts_from_text(32, 700)  # about 1k tokens each with the demo tokenizer
    rows = []
    specs = [ModeSpec(f"{attn} bf16", Mode.BF16, str(checkpoint), attn_implementation=attn) for attn in ("eager", "sdpa")]
    # One pass gives both: batch-1 TTFT/decode on the first prompt, and one padded batch of 32 for throughput.
    for result in compare(str(checkpoint), specs, registry=ModelRegistry(max_models=1), prompts=long_prompts,
                          eval_text="", batch_size=32, new_tokens=32, answer_tokens=4, device_map="cuda:0"):
        row = asdict(result)
        row.pop("answers")
        rows.append(row)
        print(f"[attention] {result.label}: {result.error or ''} ttft {result.time_to_first_token_s or 0:.3f}s "
              f"b1 {result.decode_tokens_per_s or 0:.1f} b32 {result.batch_tokens_per_s or 0:.0f} tok/s "
              f"peak {(result.peak_gpu_bytes or 0) / MiB:.0f} MiB", flush=True)
    return rows


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's goals as ratios between rows of this run (compiled path unless said otherwise)."""
    def rate(label: str, path: str, key: str = "decode_tokens_per_s") -> float | None:
        row = next((r for r in rows if r["label"].startswith(label) and r["path"] == path and not r["error"]), None)
        return row[key] if row else None

    def ratio(a, b) -> str:
        return f"{a / b:.2f}x" if a and b else "n/a"

    bf16_share = next((r["share_of_floor"] for r in rows if r["label"] == "bf16" and r["path"] == "compiled"
                       and not r["error"]), None)
    lines = ["Goals (ratios within this run):", "",
             f"- bf16 compiled b1 share of the bandwidth floor: {bf16_share:.0%} (goal >= 50%)" if bf16_share
             else "- bf16 compiled: n/a"]
    for row in rows:
        if row["label"].startswith("gptq") and row["path"] == "compiled" and not row["error"]:
            lines.append(f"- {row['label']} compiled b1 / bf16 compiled b1: "
                         f"{ratio(row['decode_tokens_per_s'], rate('bf16', 'compiled'))} (goal >= 1.8x)")
    lines += [f"- nf4 compiled b1 / bf16 eager b1: {ratio(rate('nf4', 'compiled'), rate('bf16', 'eager'))} "
              "(goal >= 1.0x)",
              f"- int8 b1 (eager) / bf16 eager b1: {ratio(rate('int8', 'eager'), rate('bf16', 'eager'))} (goal >= 0.5x)"]
    for label in dict.fromkeys(r["label"] for r in rows):  # each mode and GPTQ kernel, in table order
        compiled, eager = rate(label, "compiled", "batch_tokens_per_s"), rate(label, "eager", "batch_tokens_per_s")
        if compiled and eager:
            lines.append(f"- {label} b32 compiled / eager: {ratio(compiled, eager)}" +
                         (" (goal >= 3x)" if label == "bf16" or label.startswith("gptq") else ""))
    return lines


def markdown(summary: dict) -> str:
    lines = [f"# GPU benchmark on {summary['device']}", "",
             f"torch {summary['torch']}, transformers {summary['transformers']}; measured copy bandwidth "
             f"{summary['bandwidth_gb_s']:.0f} GB/s; HF `generate` on each path (eager; compiled = the app's "
             "compiled decode loop: static cache, decode step compiled and CUDA-graphed at load), greedy, "
             f"{summary['new_tokens']} new tokens; "
             "random-weight Llama shapes, demo tokenizer.", ""]
    for shape in summary["shapes"]:
        lines += [f"## Llama-{shape['shape']} shape", "",
                  "| mode | path | footprint MiB | compile s | peak GPU MiB | TTFT s | b1 tok/s | floor tok/s | share | "
                  "b32 tok/s | layers |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in shape["modes"]:
            if r["error"]:
                lines.append(f"| {r['label']} | {r['path']} | failed: {r['error']} |||||||||")
                continue
            layers = ", ".join(f"{k}×{v}" for k, v in r["linear_layers"].items() if k != "Linear") or "Linear"
            lines.append(f"| {r['label']} | {r['generation_path']} | {r['footprint_bytes'] / MiB:,.0f} | "
                         f"{r['compile_seconds'] or 0:.0f} | {r['peak_gpu_bytes'] / MiB:,.0f} | "
                         f"{r['time_to_first_token_s']:.3f} | {r['decode_tokens_per_s']:.1f} | "
                         f"{r['bandwidth_floor_tok_s']:.0f} | {r['share_of_floor']:.0%} | "
                         f"{r['batch_tokens_per_s']:,.0f} | {layers} |")
        lines += ["", *goal_lines(shape["modes"]), ""]
        if shape.get("gptq_quantize_seconds"):
            lines.append(f"\nGPTQ 4-bit g128 quantization of this shape took {shape['gptq_quantize_seconds']:.0f} s.")
        lines += ["", "Batch tab path (32 prompts, one batch of 32, `run_batch`):", "",
                  "| mode | prompts/s | generated tok/s |", "|---|---|---|"]
        lines += [f"| {b['mode']} | {b['prompts_per_s']:.2f} | {b['generated_tokens_per_s']:,.0f} |"
                  for b in shape["batch_tab"]]
        lines.append("")
    if summary.get("attention"):
        lines += ["## Attention implementation (1B shape, bf16, ~1k-token prompts)", "",
                  "| attention | TTFT s (b1) | b1 decode tok/s | b32 tok/s | peak GPU MiB (b32) |", "|---|---|---|---|---|"]
        for r in summary["attention"]:
            if r["error"]:
                lines.append(f"| {r['label']} | failed: {r['error']} ||||")
                continue
            lines.append(f"| {r['attn_implementation']} | {r['time_to_first_token_s']:.3f} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['batch_tokens_per_s']:,.0f} | "
                         f"{r['peak_gpu_bytes'] / MiB:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shapes="1b", modes=None, new_tokens=64,
                          helps={"modes": "only these labels, e.g. fp16,int8,nf4,gptq"})
    parser.add_argument("--gptq-backends", default="gptq_torch,gptq_triton,gptq_exllama_v2")
    parser.add_argument("--gptq-samples", type=int, default=64)
    parser.add_argument("--attention", action="store_true", help="also eager vs sdpa with 1k-token prompts")
    parser.add_argument("--paths", default="eager,compiled", help="generation paths to measure: eager,compiled")
    parser.add_argument("--no-batch-tab", dest="batch_tab", action="store_false", help="skip the run_batch rows")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import transformers

    bandwidth = copy_bandwidth()
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "transformers": transformers.__version__, "bandwidth_gb_s": bandwidth / 1e9,
               "new_tokens": args.new_tokens, "shapes": [], "attention": None}
    for shape in args.shapes.split(","):
        summary["shapes"].append(bench_shape(shape, args.work, args, bandwidth))
    if args.attention:
        summary["attention"] = bench_attention(args.work, args)
    write_results(args.out, result_stem("gpu-bench", args.shapes.replace(",", "-"), tag=args.tag), summary, markdown)


if __name__ == "__main__":
    main()
