"""`python -m quant ...`: the app's work without a browser. Errors print one clear line and exit with status 2."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from .errors import QuantError
from .loader import LoadRequest
from .modes import GPTQ_BACKENDS, Mode, QuantOptions


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how to load a model, shared by every subcommand that loads one."""
    parser.add_argument("model", help="Hub id (org/name), local folder, or demo:<name>")
    parser.add_argument("--mode", default="bf16", choices=[m.value for m in Mode])
    parser.add_argument("--revision", help="branch, tag or commit on the Hub")
    parser.add_argument("--device-map", default="auto", help="auto, balanced, balanced_low_0, sequential, cpu, cuda:N")
    parser.add_argument("--max-memory", help='per-device limits, e.g. "0=20GiB,cpu=30GiB"')
    parser.add_argument("--attn", dest="attn_implementation", help="attention implementation: sdpa, eager, ...")
    group = parser.add_argument_group("quantized modes")
    group.add_argument("--int8-threshold", type=float, default=6.0, help="LLM.int8 outlier threshold")
    group.add_argument("--skip-modules", default="", help="comma-separated modules kept unquantized")
    group.add_argument("--int8-cpu-offload", action="store_true", help="keep CPU-offloaded modules in fp32")
    group.add_argument("--no-double-quant", action="store_true", help="4-bit: quantize the scales too (off)")
    group.add_argument("--compute-dtype", default="bf16", choices=["fp32", "fp16", "bf16"], help="4-bit compute dtype")
    group.add_argument("--quant-storage", default="uint8", choices=["uint8", "bf16", "fp16", "fp32"])
    group.add_argument("--gptq-backend", choices=list(GPTQ_BACKENDS), help="GPTQ kernel (default: torch on CPU, triton on GPU)")


def load_request_from_args(args: argparse.Namespace) -> LoadRequest:
    return LoadRequest(
        model=args.model,
        mode=args.mode,
        revision=args.revision,
        device_map=args.device_map,
        max_memory=args.max_memory,
        attn_implementation=args.attn_implementation,
        options=QuantOptions(
            int8_threshold=args.int8_threshold,
            int8_skip_modules=tuple(m.strip() for m in args.skip_modules.split(",") if m.strip()),
            int8_cpu_offload=args.int8_cpu_offload,
            bnb4_double_quant=not args.no_double_quant,
            bnb4_compute_dtype=args.compute_dtype,
            bnb4_quant_storage=args.quant_storage,
            gptq_backend=args.gptq_backend,
        ),
    )


def _stderr_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def cmd_load(args: argparse.Namespace) -> int:
    from .loader import load_model

    loaded = load_model(load_request_from_args(args), progress=None if args.json else _stderr_progress)
    print(json.dumps(loaded.report.to_dict(), indent=2) if args.json else loaded.report.to_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quant", description="Quantization Playground, headless.")
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser("load", help="load a model in a mode and print the load report")
    add_load_arguments(load)
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(func=cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except QuantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
