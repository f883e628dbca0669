"""How long quantizing a Llama shape takes with one method, through quant's own code: the Quantize tab's step for a
method that writes checkpoints (AWQ, GPTQ, bitsandbytes: `quant.quantize.quantize`, its `seconds` are the method's
quantize step; the load check of the saved folder is timed apart), the load for a method that quantizes while the
model loads (HQQ: `quant.loader.load_weights`, the HQQ share of the load from the report).

Issue 24's goals, on one H100/H200: HQQ 4-bit of the 8B shape under 2 minutes, AWQ of the 8B shape under 10 minutes
with 32 calibration samples. On the device machine:

    python bench/quantize_time.py --method hqq --shape 8b --out bench/results
    python bench/quantize_time.py --method awq --shape 8b --samples 32 --seq-len 512 --out bench/results

and on a CPU, as a check that the script runs (a small shape, few samples):

    python bench/quantize_time.py --method hqq --model demo:tiny-llama-chat --device cpu --out /tmp/qt
    python bench/quantize_time.py --method awq --model demo:tiny-llama-chat --device cpu --samples 8 --seq-len 64 \
        --out /tmp/qt

(The 1B shape's 4 layers take minutes on a small CPU: HQQ 3 min, AWQ with 4 samples of 64 tokens over 10 min, on 2
busy cores.)

The weights are random (bench/llama_shapes.py): the time depends on the shapes, not on the values; calibration text
is the built-in CPython reference, tokenized with the demo tokenizer the shapes carry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.llama_shapes import build_checkpoint  # noqa: E402
from bench.common import write_results  # noqa: E402
from quant.access import ANY_FOLDER  # noqa: E402
from quant.gptq import GPTQRecipe  # noqa: E402
from quant.loader import LoadRequest, loaded_for_measuring  # noqa: E402
from quant.methods import METHODS, QuantOptions  # noqa: E402

GiB = 2**30


def _peak_gpu() -> float | None:
    return torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else None


def time_load_quantization(checkpoint: Path, method: str, options: QuantOptions, device: str) -> dict:
    """A method that quantizes while the model loads: the whole load, and the method's own share of it."""
    request = LoadRequest(model=str(checkpoint), mode=method, device_map=device, options=options, folders=ANY_FOLDER)
    started = time.perf_counter()
    with loaded_for_measuring(request) as loaded:
        load_seconds = time.perf_counter() - started
        report = loaded.report
        quantization = report.quantization or {}
        return {"quantize_seconds": quantization.get("quantize_seconds"), "load_seconds": load_seconds,
                "footprint_gib": report.footprint_bytes / GiB, "linear_layers": report.linear_layers,
                "quantization": quantization, "peak_gpu_gib": _peak_gpu(), "warnings": report.warnings}


def time_quantize_step(checkpoint: Path, method: str, recipe: GPTQRecipe, out_dir: Path) -> dict:
    """A method that writes checkpoints: the Quantize tab's pipeline without the perplexity measurements."""
    from quant.quantize import quantize

    started = time.perf_counter()
    result = quantize(str(checkpoint), method=method, recipe=recipe, out_dir=out_dir, evaluate=False,
                      folders=ANY_FOLDER)
    return {"quantize_seconds": result.seconds, "total_seconds": time.perf_counter() - started,
            "check_load_seconds": time.perf_counter() - started - result.seconds, "recipe": result.recipe,
            "calibration": result.calibration, "original_gib": result.original_bytes / GiB,
            "quantized_gib": result.quantized_bytes / GiB, "kernel": result.kernel, "peak_gpu_gib": _peak_gpu(),
            "warnings": result.warnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=[n for n, m in METHODS.items() if m.quantizes_weights])
    parser.add_argument("--shape", default="8b", help="a shape of bench/llama_shapes.py (random weights)")
    parser.add_argument("--model", help="a model instead of a shape: demo:<name> or a folder (the CPU check)")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bits", type=int, default=4, help="calibrated methods' bits (AWQ: 4)")
    parser.add_argument("--group-size", type=int, default=128, help="calibrated methods' group size")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample")
    parser.add_argument("--hqq-bits", type=int, default=4)
    parser.add_argument("--hqq-group-size", type=int, default=64)
    parser.add_argument("--hqq-backend", default=None)
    parser.add_argument("--gpu-memory-cap", type=float, default=None, metavar="GIB",
                        help="let this process use at most GIB of the GPU (torch.cuda.set_per_process_memory_fraction):"
                             " a model larger than the cap stands for one larger than the GPU (issue 29: GPTQ of a "
                             "model that does not fit one GPU, layer by layer)")
    args = parser.parse_args()

    on_cuda = args.device.startswith("cuda")
    if args.model:
        from quant.source import resolve_location

        checkpoint, args.shape = Path(resolve_location(args.model)[0]), args.model.removeprefix("demo:")
    else:
        checkpoint = build_checkpoint(args.shape, args.work / f"llama-{args.shape}",
                                      device="cuda" if on_cuda else "cpu")
    method = METHODS[args.method]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if args.gpu_memory_cap:
        torch.cuda.empty_cache()  # what building the checkpoint left cached would otherwise not count against it
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.gpu_memory_cap * GiB / total))
    if method.quantize_label:
        recipe = GPTQRecipe(bits=args.bits, group_size=args.group_size, num_samples=args.samples,
                            seq_len=args.seq_len)
        label = f"{args.method}-{args.bits}bit-g{args.group_size}-{args.samples}x{args.seq_len}"
        measured = time_quantize_step(checkpoint, args.method, recipe, args.work / f"llama-{args.shape}-{label}")
    else:
        options = QuantOptions(hqq_bits=args.hqq_bits, hqq_group_size=args.hqq_group_size,
                               hqq_backend=args.hqq_backend)
        label = f"{args.method}-{args.hqq_bits}bit-g{args.hqq_group_size}"
        measured = time_load_quantization(checkpoint, args.method, options, args.device)
    device = torch.cuda.get_device_name() if on_cuda else "CPU"
    if args.gpu_memory_cap:
        label += f"-cap{args.gpu_memory_cap:g}GiB"
    data = {"method": args.method, "label": label, "shape": args.shape, "device": device,
            "torch": torch.__version__, "gpu_memory_cap_gib": args.gpu_memory_cap, **measured}
    rows = [f"| quantize step (s) | {measured['quantize_seconds']:.1f} |"]
    if args.gpu_memory_cap:
        rows.append(f"| GPU memory cap (GiB) | {args.gpu_memory_cap:g} |")
    for key in ("load_seconds", "check_load_seconds", "total_seconds"):
        if key in measured:
            rows.append(f"| {key.replace('_', ' ').replace(' seconds', '')} (s) | {measured[key]:.1f} |")
    for key in ("footprint_gib", "original_gib", "quantized_gib", "peak_gpu_gib"):
        if measured.get(key) is not None:
            rows.append(f"| {key.replace('_gib', '').replace('_', ' ')} (GiB) | {measured[key]:.3f} |")
    markdown = "\n".join([f"# Quantization time: {label}, Llama {args.shape} shape, {device}", "",
                          "| | |", "|---|---|", *rows, ""])
    stem = f"quantize-time-{label}-{args.shape}-{'cuda' if on_cuda else 'cpu'}"
    write_results(args.out, stem, data, markdown)


if __name__ == "__main__":
    main()
