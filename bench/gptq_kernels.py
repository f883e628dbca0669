"""Decode speed of the GPTQ kernels that need no build, through the app's loader: gptqmodel's torch kernel against
PyTorch's int4 kernel (quant.int4pack), on one checkpoint.

The checkpoint is a Llama shape with 1B-sized layers (4 of them on the CPU: `llama_shapes.py 1b-4layers`), quantized
to 4-bit g128 here with quant.gptq the first time. Greedy, batch 1, best of 3, through the app's generation path
(`quant.generation.start_generate`: compiled on a GPU where the load compiled it).

    python bench/gptq_kernels.py --out bench/results                       # CPU
    python bench/gptq_kernels.py --shape 1b --device-map cuda:0 --out ...  # GPU
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402
from bench.generate_overhead import generate_once  # noqa: E402 - the app's generation path, timed
from bench.llama_shapes import build_checkpoint  # noqa: E402
from quant.gptq import GPTQRecipe, builtin_textsets, quantize_gptq  # noqa: E402
from quant.loader import LoadRequest, load_model, release_memory  # noqa: E402
from quant.methods import QuantOptions  # noqa: E402


def measure(folder: Path, backend: str, device_map: str, new_tokens: int) -> dict:
    on_cuda = torch.cuda.is_available() and device_map.startswith("cuda")
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    loaded = load_model(LoadRequest(str(folder), mode="gptq", device_map=device_map,
                                    options=QuantOptions(gptq_backend=backend)))
    ids = loaded.tokenizer("def main():", return_tensors="pt").input_ids.to(loaded.device)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                  min_new_tokens=new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    # The app's own path (compiled on a GPU where the load compiled it), as a chat reply takes it; the first is a
    # warm-up.
    runs = [generate_once(loaded, kwargs, 1, ids.shape[1] + new_tokens) for _ in range(4)]
    compiled, seconds = runs[-1][0], min(wall for _, wall in runs[1:])
    report = loaded.report
    gpu = {"gpu_allocated_mib": torch.cuda.memory_allocated() / 2**20,
           "gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20} if on_cuda else {}
    row = {"backend": backend, "tok_s": new_tokens / seconds, "compiled": compiled, "load_s": report.load_seconds,
           "footprint_mib": report.footprint_bytes / 2**20, "dtype": report.dtype, "layers": report.linear_layers,
           "path": report.generation_path, **gpu}
    print(json.dumps(row), flush=True)
    del loaded
    release_memory()
    return row


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shape="1b-4layers", device_map="cpu",
                          new_tokens=32)
    parser.add_argument("--backends", default="gptq_torch,gptq_int4pack")
    args = parser.parse_args()

    on_cuda = args.device_map.startswith("cuda")
    checkpoint = build_checkpoint(args.shape, args.work / f"llama-{args.shape}", device="cuda" if on_cuda else "cpu")
    gptq_dir = args.work / f"llama-{args.shape}-gptq-4bit-g128"
    quantize_seconds = None
    if not (gptq_dir / "config.json").is_file():
        started = time.perf_counter()
        quantize_gptq(str(checkpoint), GPTQRecipe(bits=4, group_size=128, num_samples=8, seq_len=128),
                      [builtin_textsets()["python-reference"].read_text()], gptq_dir,
                      device="cuda:0" if on_cuda else "cpu")
        quantize_seconds = time.perf_counter() - started
    rows = [measure(gptq_dir, backend, args.device_map, args.new_tokens) for backend in args.backends.split(",")]
    device = torch.cuda.get_device_name() if on_cuda else f"CPU ({os.cpu_count()} cores)"
    summary = {"device": device, "torch": torch.__version__, "shape": args.shape, "new_tokens": args.new_tokens,
               "quantize_seconds": quantize_seconds, "rows": rows}
    lines = [f"# GPTQ kernels without a build, {device}, torch {torch.__version__}", "",
             f"Llama-{args.shape} shape, 4-bit g128 GPTQ, greedy, batch 1, {args.new_tokens} new tokens, best of 3.",
             "", "| kernel | tok/s | load s | footprint MiB | GPU allocated / peak MiB | dtype | layers | path |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['tok_s']:.2f} | {r['load_s']:.1f} | {r['footprint_mib']:,.0f} | "
              + (f"{r['gpu_allocated_mib']:,.0f} / {r['gpu_peak_mib']:,.0f}" if "gpu_peak_mib" in r else "n/a")
              + f" | {r['dtype']} | {', '.join(f'{k}×{v}' for k, v in r['layers'].items())} | {r['path']} |"
              for r in rows]
    write_results(args.out, result_stem("gptq-kernels", "cuda" if on_cuda else "cpu", args.shape, tag=args.tag),
                  summary, "\n".join(lines))


if __name__ == "__main__":
    main()
