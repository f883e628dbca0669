"""Batch-1 decode speed and memory of quantization methods against compiled bf16, on a Llama shape, in one run
(issue 24's goals: ratios to the compiled bf16 of the same run, footprints within 3% of theory).

Every mode goes through the app's own code: quant.compare with a ModelRegistry, so each is loaded, given the compiled
decode loop where its method traces (quant.fastpath; QUANT_FAST_GENERATION=all), measured and unloaded before the
next. Per mode: batch-1 decode tok/s and its ratio to bf16's, time to first token, load and compile seconds, the
footprint against the theoretical bytes (the method's bytes per weight, scales included, for the quantized linear
weights + 2 bytes for every other weight: quant.registry.estimate_footprint), the bytes a quantized weight really
takes, the linear layer classes and the generation path each row ran on.

Modes are names of quant.methods.METHODS, so every method runs through it (torchao, fp8, bitsandbytes, GPTQ, and
HQQ / AWQ once they are there). Options go in brackets (`field=value`, `;` between them); a method that loads only
its own checkpoints (GPTQ) is quantized first with the Quantize pipeline's defaults (kept in --work), or takes one
after a colon:

    bf16,torchao_int8,torchao_int4,torchao_int4[torchao_group_size=64],fp8,fp8[fp8_activation=dynamic]
    gptq[gptq_backend=gptq_marlin]              gptq:/path/to/a/gptq/checkpoint

    python bench/methods_bench.py --shapes 8b --out bench/results                              # the GPU run
    python bench/methods_bench.py --shapes 8b --modes torchao_int8 --tag=-torchao-settings --out bench/results \
        --inductor-options '{"coordinate_descent_tuning": true, "coordinate_descent_check_all_directions": true}'
    python bench/methods_bench.py --shapes tiny --device-map cpu --compile-backend eager \\
        --modes bf16,torchao_int8,torchao_int4 --out /tmp/methods-bench                        # a CPU check

Random weights (bench/llama_shapes.py): speed and memory only; quality is measured on the trained demo model (tests,
the Compare tab).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.gpu_bench import copy_bandwidth, prompts_from_text  # noqa: E402
from bench.llama_shapes import SHAPES, build_checkpoint  # noqa: E402
from bench.common import write_results  # noqa: E402
from quant.compare import ModeSpec, compare  # noqa: E402
from quant.errors import QuantError  # noqa: E402
from quant.loader import LoadRequest, prepare  # noqa: E402
from quant.methods import METHODS, QuantOptions, parse_mode  # noqa: E402
from quant.registry import ModelRegistry, estimate_footprint  # noqa: E402

MiB = 2**20
DEFAULT_MODES = "bf16,torchao_int8,torchao_int4,fp8,fp8[fp8_activation=dynamic]"
GOALS = (
    # (mode, options that must match, least ratio to compiled bf16 at batch 1): issue 24's goals
    ("fp8", {"fp8_activation": "none"}, 1.6),
    ("torchao_int8", {}, 1.6),
    ("torchao_int4", {}, 2.5),
    ("hqq", {}, 2.0),
    ("awq", {}, 2.5),
)
PATHS = {"eager": ("off", "layers"), "compiled": ("all", "layers"), "compiled-model": ("all", "model")}
"""--paths: (QUANT_FAST_GENERATION, QUANT_COMPILE_REGIONS). "compiled" is the app's default (the decoder layer
compiled once for all layers), "compiled-model" the whole forward in one graph, to measure one against the other."""
FOOTPRINT_GOAL = 0.03
"""Footprint within 3% of the theoretical bytes."""


@dataclass
class BenchMode:
    """One mode of the run: a method, its options, and the checkpoint it loads (None: the shape's own)."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    checkpoint: str | None = None


def parse_modes(text: str) -> list[BenchMode]:
    """`bf16,fp8[fp8_activation=dynamic],gptq:DIR[gptq_backend=gptq_marlin]` -> modes; options are parsed and checked
    by the method's own `Option`s, so a typo is refused before anything loads."""
    modes = []
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", text):
        item = item.strip()
        if not item:
            continue
        match = re.fullmatch(r"([^\[\]]+?)\s*(?:\[(.*)\])?", item)
        head, option_text = match[1], match[2] or ""
        name, _, checkpoint = head.partition(":")
        method = parse_mode(name).method
        by_field = {o.field: o for o in method.options}
        options = {}
        for pair in filter(None, (p.strip() for p in option_text.split(";"))):
            key, _, value = pair.partition("=")
            if key.strip() not in by_field:
                raise QuantError(f"{method.name} has no option {key.strip()!r}.",
                                 f"Its options: {', '.join(by_field) or 'none'}.")
            options[key.strip()] = by_field[key.strip()].parse(value.strip())
        if checkpoint and not method.needs_quantized_checkpoint:
            raise QuantError(f"{method.name} quantizes at load time: give it no checkpoint ({item}).")
        modes.append(BenchMode(item, method.name, options, checkpoint or None))
    return modes


def quantized_checkpoint(mode: BenchMode, source: Path, work: Path) -> tuple[str, float | None]:
    """The checkpoint a method that loads only its own checkpoints is measured on: the one given, or the shape
    quantized here with the Quantize pipeline (quant.quantize, its defaults), kept in `work` for the next run.
    Returns (folder, seconds the quantization took or None)."""
    if mode.checkpoint:
        return mode.checkpoint, None
    from quant.quantize import quantize

    folder = work / f"{source.name}-{mode.method}"
    if (folder / "config.json").is_file():
        return str(folder), None
    print(f"quantizing {source.name} with {mode.method} (the Quantize pipeline's defaults) -> {folder}", flush=True)
    result = quantize(str(source), method=mode.method, out_dir=folder, evaluate=False)
    return str(folder), result.seconds


def weight_counts(source) -> tuple[int, int]:
    """(weights of the linear layers a method quantizes, all weights), from the config on the meta device: the split
    quant.registry.estimate_footprint makes (every nn.Linear but the output head)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(source.config)
    skeleton.tie_weights()  # as quant.registry.estimate_footprint: a tied head is one tensor, not two
    head = skeleton.get_output_embeddings()
    quantized = sum(m.weight.numel() for m in skeleton.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return quantized, sum(p.numel() for p in skeleton.parameters())


def theory(request: LoadRequest) -> dict:
    """The theoretical footprint of a load and its parts, from its plan (quant.loader.prepare: the quantization config
    it would pass, the checkpoint's own for a quantized one)."""
    prepared = prepare(request)
    method = request.method
    planned = prepared.kwargs.get("quantization_config")
    quantization = prepared.source.checkpoint_quantization or (planned.to_dict() if planned is not None else None)
    quantized, total = weight_counts(prepared.source)
    per_weight = (method.loaded_bytes_per_weight(quantization, request.options) if method.quantizes_weights
                  else method.rest_bytes_per_weight)
    return {"theory_bytes": int(quantized * per_weight + (total - quantized) * method.rest_bytes_per_weight),
            "estimate_before_load_bytes": estimate_footprint(prepared.source, request.mode, planned),
            "bytes_per_weight_theory": per_weight,
            "rest_bytes_per_weight": method.rest_bytes_per_weight,
            "quantized_weights": quantized, "total_weights": total}


def goal_of(mode: BenchMode) -> float | None:
    for name, options, ratio in GOALS:
        if mode.method == name and all(mode.options.get(k, getattr(QuantOptions(), k)) == v
                                       for k, v in options.items()):
            return ratio
    return None


def bench_shape(shape: str, args, bandwidth: float | None, modes: list[BenchMode], summary: dict) -> dict:
    device = "cuda" if torch.cuda.is_available() and args.device_map != "cpu" else "cpu"
    checkpoint = build_checkpoint(shape, args.work / f"llama-{shape}", device=device)
    quantize_seconds = {}
    specs = []
    for mode in modes:
        model = str(checkpoint)
        if METHODS[mode.method].needs_quantized_checkpoint:
            try:
                model, quantize_seconds[mode.label] = quantized_checkpoint(mode, checkpoint, args.work)
            except QuantError as exc:
                print(f"[{shape}] {mode.label}: quantization failed: {exc}", flush=True)
                model = f"/quantization-failed/{mode.method}"
        specs.append(ModeSpec(mode.label, parse_mode(mode.method), model, QuantOptions(**mode.options)))
    result = {"shape": shape, "config": SHAPES[shape], "quantize_seconds": quantize_seconds, "modes": []}
    summary["shapes"].append(result)
    prompt = prompts_from_text(1, args.prompt_words)
    rows = result["modes"]
    for path in args.paths.split(","):
        os.environ["QUANT_FAST_GENERATION"] = PATHS[path][0]
        os.environ["QUANT_COMPILE_REGIONS"] = PATHS[path][1]
        registry = ModelRegistry(max_models=1)
        # --quality: the Compare tab's default measurement, next-token quality on the built-in held-out text included
        row_started = time.perf_counter()
        for mode, row in zip(modes, compare(str(checkpoint), specs, registry=registry, prompts=prompt,
                                            eval_text=None if args.quality else "",
                                            batch_size=args.batch_size, new_tokens=args.new_tokens, answer_tokens=4,
                                            device_map=args.device_map)):
            record = asdict(row)
            record.pop("answers")
            record.update(path=path, method=mode.method, options=mode.options, goal=goal_of(mode),
                          quantize_seconds=quantize_seconds.get(mode.label),
                          row_seconds=time.perf_counter() - row_started)
            spec = next(s for s in specs if s.label == mode.label)
            if not row.error:
                try:
                    record.update(theory(LoadRequest(model=spec.model, mode=spec.mode, options=spec.options,
                                                     device_map=args.device_map)))
                    rest = (record["total_weights"] - record["quantized_weights"]) * record["rest_bytes_per_weight"]
                    record["bytes_per_weight_measured"] = ((row.footprint_bytes - rest) / record["quantized_weights"]
                                                           if METHODS[mode.method].quantizes_weights else
                                                           row.footprint_bytes / record["total_weights"])
                    record["footprint_vs_theory"] = row.footprint_bytes / record["theory_bytes"] - 1
                except QuantError as exc:
                    record["theory_error"] = str(exc)
                if bandwidth:
                    record["bandwidth_floor_tok_s"] = bandwidth / row.footprint_bytes
                    record["share_of_floor"] = row.decode_tokens_per_s / record["bandwidth_floor_tok_s"]
            rows.append(record)
            print(f"[{shape}] {path} {mode.label}: {row.error or ''} b1 {row.decode_tokens_per_s or 0:.1f} tok/s, "
                  f"{(row.footprint_bytes or 0) / MiB:,.1f} MiB "
                  f"({record.get('footprint_vs_theory', 0):+.2%} vs theory), load {row.load_seconds or 0:.1f} s, "
                  f"compile {row.compile_seconds or 0:.1f} s, {row.generation_path}", flush=True)
            (args.out / f"{args.stem}.partial.json").write_text(json.dumps(summary, indent=1))  # survives a timeout
            row_started = time.perf_counter()
    os.environ.pop("QUANT_FAST_GENERATION", None)
    os.environ.pop("QUANT_COMPILE_REGIONS", None)
    bf16 = {r["path"]: r["decode_tokens_per_s"] for r in rows if r["method"] == "bf16" and not r["error"]
            and not r["options"]}
    for r in rows:
        base = bf16.get(r["path"])
        r["ratio_to_bf16"] = r["decode_tokens_per_s"] / base if base and not r["error"] else None
    return result


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(summary: dict) -> str:
    lines = [f"# Methods benchmark on {summary['device']}", "",
             f"torch {summary['versions'].get('torch')}, transformers {summary['versions'].get('transformers')}, "
             f"torchao {summary['versions'].get('torchao', 'n/a')}; "
             + (f"measured copy bandwidth {summary['bandwidth_gb_s']:.0f} GB/s; " if summary["bandwidth_gb_s"] else "")
             + f"greedy, {summary['new_tokens']} new tokens at batch 1 (batch {summary['batch_size']} for throughput), "
             f"static cache {summary['cache_tokens']} tokens, compile backend {summary['compile_backend']}"
             + (f" with Inductor settings {json.dumps(summary['inductor_options'])} for every mode"
                if summary.get("inductor_options") is not None else " with each method's Inductor settings") + "; "
             "random-weight Llama shapes, demo tokenizer. Ratio: batch-1 decode / bf16's on the same path in this run. "
             "Theory: the method's bytes per weight (scales included) for the quantized linear weights + 2 bytes for "
             "every other weight.", ""]
    for shape in summary["shapes"]:
        lines += [f"## Llama-{shape['shape']} shape", "",
                  "| mode | path | b1 tok/s | ratio to bf16 | goal | TTFT s | footprint MiB | vs theory | bytes/weight "
                  "(theory) | load s | compile s | b{0} tok/s | layers | generation | row s | ppl ratio | KL mean | "
                  "top-1 % |".format(summary["batch_size"]),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in shape["modes"]:
            if r["error"]:
                lines.append(f"| {r['label']} | {r['path']} | failed: {r['error']} |||||||||||||||")
                continue
            layers = ", ".join(f"{k}×{v}" for k, v in r["linear_layers"].items() if k != "Linear") or "Linear"
            goal = r["goal"]
            ratio = r["ratio_to_bf16"]
            verdict = "" if goal is None or ratio is None else f">= {goal}x: {'met' if ratio >= goal else 'NOT met'}"
            vs = r.get("footprint_vs_theory")
            lines.append(
                f"| {r['label']} | {r['path']} | {r['decode_tokens_per_s']:.1f} | "
                f"{f'{ratio:.2f}x' if ratio is not None else 'n/a'} | {verdict} | {r['time_to_first_token_s']:.3f} | "
                f"{r['footprint_bytes'] / MiB:,.1f} | {f'{vs:+.2%}' if vs is not None else 'n/a'} | "
                f"{r.get('bytes_per_weight_measured', 0):.4f} ({r.get('bytes_per_weight_theory', 0):.4f}) | "
                f"{r['load_seconds']:.1f} | {r['compile_seconds'] or 0:.1f} | {r['batch_tokens_per_s']:,.1f} | "
                f"{layers} | {r['generation_path']} | {r['row_seconds']:.1f} | {_number(r['perplexity_ratio'], '.3f')} | "
                f"{_number(r['kl_mean'], '.4f')} | {_number(r['top1_agreement'], '.1f')} |")
        off = [r["label"] for r in shape["modes"] if r.get("footprint_vs_theory") is not None
               and abs(r["footprint_vs_theory"]) > FOOTPRINT_GOAL]
        lines += ["", f"Footprints within {FOOTPRINT_GOAL:.0%} of theory: "
                  + ("all" if not off else f"all but {', '.join(off)}") + "."]
        for label, seconds in shape["quantize_seconds"].items():
            if seconds:
                lines.append(f"\n{label}: quantizing the shape took {seconds:.0f} s (the Quantize pipeline).")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="8b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"default {DEFAULT_MODES}")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench"), help="checkpoints (built once, kept)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device-map", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paths", default="compiled", help=f"generation paths to measure, of {', '.join(PATHS)}")
    parser.add_argument("--compile-backend", default="inductor", help="QUANT_COMPILE_BACKEND (eager: trace only)")
    parser.add_argument("--cache-tokens", default="512", help="QUANT_STATIC_CACHE_TOKENS (batch 1 uses the longest)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8, help="batch throughput (eager unless compiled)")
    parser.add_argument("--quality", action="store_true",
                        help="measure next-token quality against bf16 on the built-in held-out text, as the Compare "
                             "tab does (issue 25: its seconds per mode, the row_seconds column)")
    parser.add_argument("--inductor-options", default=None,
                        help="JSON: Inductor settings for every mode's compiled decode step instead of its method's "
                             "compile_options ('{}': Inductor's defaults), e.g. to measure torchao's whole "
                             "recommendation against the methods' own; bf16 gets them too")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    modes = parse_modes(args.modes)  # refuses an unknown mode or option before anything is built
    unknown = set(args.paths.split(",")) - set(PATHS)
    if unknown:
        parser.error(f"--paths: {', '.join(sorted(unknown))} not one of {', '.join(PATHS)}")
    override = json.loads(args.inductor_options) if args.inductor_options is not None else None
    if override is not None:
        for method in METHODS.values():  # this process only: the app's loader asks the method
            method.compile_options = lambda options, settings=override: dict(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["QUANT_COMPILE_BACKEND"] = args.compile_backend
    os.environ["QUANT_STATIC_CACHE_TOKENS"] = args.cache_tokens
    os.environ.setdefault("QUANT_COMPILED_BATCH_SIZES", "1")
    on_gpu = torch.cuda.is_available() and args.device_map != "cpu"
    versions = {}
    for name in ("torch", "transformers", "torchao", "bitsandbytes", "gptqmodel", "hqq"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    device = (f"{torch.cuda.get_device_name(0)} (compute capability "
              f"{'.'.join(map(str, torch.cuda.get_device_capability(0)))})" if on_gpu else "CPU")
    args.stem = (f"methods-bench-{args.shapes.replace(',', '-')}-{'cuda' if on_gpu else 'cpu'}{args.tag}")
    summary = {"device": device, "versions": versions, "bandwidth_gb_s": None, "new_tokens": args.new_tokens,
               "batch_size": args.batch_size, "cache_tokens": args.cache_tokens,
               "compile_backend": args.compile_backend, "inductor_options": override, "modes": args.modes,
               "quality": args.quality, "shapes": []}
    bandwidth = copy_bandwidth() if on_gpu else None
    summary["bandwidth_gb_s"] = bandwidth / 1e9 if bandwidth else None
    started = time.perf_counter()
    for shape in args.shapes.split(","):
        bench_shape(shape, args, bandwidth, modes, summary)
    summary["seconds"] = time.perf_counter() - started
    write_results(args.out, args.stem, summary, markdown(summary))
    (args.out / f"{args.stem}.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
