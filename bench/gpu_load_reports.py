"""Load a ~1B Llama-shaped checkpoint in fp16, int8, nf4 and GPTQ on the GPU through `quant` (the app's code path).

Writes the load reports as JSON and a Markdown table, plus how long GPTQ quantization took and whether unloading
gave the GPU memory back. Run on the device machine:

    python bench/gpu_load_reports.py --out bench/results
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402
from bench.llama_shapes import build_checkpoint  # noqa: E402
from quant.gptq import GPTQRecipe, builtin_textsets, quantize_gptq  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.methods import QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402

MiB = 2**20


def greedy_decode_rate(loaded, new_tokens: int = 64) -> float:
    inputs = loaded.tokenizer("The with statement is used to", return_tensors="pt").to(loaded.device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    loaded.model.generate(**inputs, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    loaded.model.generate(**inputs, **kwargs)
    torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - started)


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shape="1b")
    parser.add_argument("--gptq-backends", default="gptq_triton,gptq_exllama_v2")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    checkpoint = build_checkpoint(args.shape, args.work / f"llama-{args.shape}")
    gptq_dir = args.work / f"llama-{args.shape}-gptq-4bit-g128"
    texts = [builtin_textsets()["python-reference"].read_text()]
    result = quantize_gptq(str(checkpoint), GPTQRecipe(bits=4, group_size=128, num_samples=64, seq_len=512),
                           texts, gptq_dir, device="cuda:0")
    print(f"GPTQ 4-bit g128: {result.seconds:.0f}s on {result.samples} samples", flush=True)

    runs = [("fp16", QuantOptions(), str(checkpoint)), ("int8", QuantOptions(), str(checkpoint)),
            ("nf4", QuantOptions(bnb4_compute_dtype="fp16"), str(checkpoint))]
    runs += [("gptq", QuantOptions(gptq_backend=b), str(gptq_dir)) for b in args.gptq_backends.split(",")]

    registry = ModelRegistry(max_models=1)
    baseline = torch.cuda.memory_allocated()
    rows = []
    for mode, options, location in runs:
        label = mode if mode != "gptq" else f"gptq ({options.gptq_backend})"
        try:
            loaded = registry.load(LoadRequest(model=location, mode=mode, options=options, device_map="auto"))
        except Exception as exc:  # noqa: BLE001 - one failing mode must not hide the others
            print(f"{label}: FAILED {exc}", flush=True)
            rows.append({"label": label, "error": str(exc)})
            continue
        report = loaded.report
        tok_s = greedy_decode_rate(loaded)
        print(f"--- {label}\n{report.to_text()}\ngreedy decode b1: {tok_s:.1f} tok/s", flush=True)
        key = loaded.key
        del loaded
        registry.unload(key)
        rows.append({"label": label, "report": report.to_dict(), "decode_tok_s_b1": tok_s,
                     "allocated_after_unload_mib": (torch.cuda.memory_allocated() - baseline) / MiB})

    device = torch.cuda.get_device_name(0)
    summary = {"device": device, "torch": torch.__version__, "shape": args.shape,
               "gptq_quantize_seconds": result.seconds, "gptq_samples": result.samples, "runs": rows}
    write_results(args.out, result_stem("gpu-load-reports", args.shape, tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# Load reports: Llama-{summary['shape']} shape (random weights) on {summary['device']}", "",
             f"torch {summary['torch']}; GPTQ 4-bit g128 quantization took {summary['gptq_quantize_seconds']:.0f} s "
             f"({summary['gptq_samples']} samples x 512 tokens).", "",
             "| mode | params | footprint MiB | GPU alloc MiB | RAM before→after MiB | load s | linear layers "
             "| decode b1 tok/s | GPU MiB left after unload |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary["runs"]:
        if "error" in row:
            lines.append(f"| {row['label']} | failed: {row['error']} |||||||")
            continue
        r = row["report"]
        layers = ", ".join(f"{k}×{v}" for k, v in r["linear_layers"].items())
        lines.append(
            f"| {row['label']} | {r['parameters'] / 1e9:.2f}B | {r['footprint_bytes'] / MiB:,.0f} | "
            f"{sum(r['gpu_allocated_bytes'].values()) / MiB:,.0f} | {r['ram_before_bytes'] / MiB:,.0f}→"
            f"{r['ram_after_bytes'] / MiB:,.0f} | {r['load_seconds']:.1f} | {layers} | "
            f"{row['decode_tok_s_b1']:.1f} | {row['allocated_after_unload_mib']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
