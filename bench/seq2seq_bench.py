"""Seq2seq (T5) batch generation, eager against the compiled decode loop (quant/seq2seq_decode.py), per mode in one
run (issue 26): a T5-large-shaped random-weight checkpoint, a batch of --batch-size prompts, --new-tokens forced new
tokens each. Goal: bf16 compiled >= 2x its eager time; int8 and nf4 reported with the reason for their speed.

Per mode (default fp32, bf16, int8, nf4) the model loads twice through quant's ModelRegistry: eager
(QUANT_FAST_GENERATION=off) and compiled (=all, QUANT_COMPILED_BATCH_SIZES=--batch-size, QUANT_STATIC_CACHE_TOKENS=
--cache-tokens). Each runs the batch through quant.generation.start_generate (the path the Batch tab's padded engine
uses), a warm-up then the best of --repeats, and reports generated tokens per second (prefill and encoder included),
the generation path (for a mode that stays eager, why), the load and compile seconds and how many rows' greedy tokens
equal eager's. What explains a mode's speed is written next to it: the generation path, the per-step time, the
ratios to bf16 of the same path, and with --profile the GPU kernels that took a compiled step's time (one more
generation under torch.profiler, as bench/generate_overhead.py does).

T5-large (google-t5/t5-large's config.json): d_model 1024, d_ff 4096, 16 heads of 64, 24 encoder and 24 decoder
layers, ReLU feed-forward, vocabulary 32,128, tied embeddings, saved in fp32. The weights are T5's own random
initialisation (seeded); tokens come from the demo T5's tokenizer (quant/demo_models/tiny-t5: its 2,048 ids are a
subset of the vocabulary; pad 0 starts the decoder, as in T5). T5 keeps its `wo` layers in fp32 in fp16 loads and
leaves them unquantized in int8 and nf4 (the load report's "kept" line): their share of the time shows in --profile.

    # the GPU run (about 8-15 minutes on an H200 with a cold kernel cache: 4 modes x 2 loads, 3 compilations;
    # bench/device_session.sh outlives the 10-minute calls):
    bash bench/device_session.sh start "python bench/seq2seq_bench.py --profile --out /tmp/sess/seq2seq"
    bash bench/device_session.sh wait 560       # again until steps.log says done; results in sess.tgz
    # a CPU check (a minute): 2 layers of width 128, the step traced but not compiled by Inductor:
    python bench/seq2seq_bench.py --scale tiny --compile-backend eager --batch-size 8 --modes fp32,bf16 --out /tmp/s2s

Random weights: speed and agreement only, no quality.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import WORK, bench_parser, result_stem, write_results  # noqa: E402

DEMO_T5 = ROOT / "quant" / "demo_models" / "tiny-t5"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
SEED = 0
GOAL = 2.0
"""Issue 26: bf16 compiled batch generation at >= 2x its eager rate (T5-large shape, batch 128, 16 new tokens)."""
T5_LARGE = {"d_model": 1024, "d_ff": 4096, "d_kv": 64, "num_heads": 16, "num_layers": 24, "num_decoder_layers": 24,
            "vocab_size": 32128, "feed_forward_proj": "relu", "dense_act_fn": "relu", "is_gated_act": False,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "n_positions": 512,
            "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "initializer_factor": 1.0, "tie_word_embeddings": True,
            "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
TINY = {"d_model": 128, "d_ff": 256, "d_kv": 32, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}


def build_checkpoint(folder: Path, scale: str) -> dict:
    """A random-weight T5 of T5-large's config (or its tiny version) in fp32, with the demo T5's tokenizer; reused when
    built alike."""
    import torch
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    values = {**T5_LARGE, **(TINY if scale == "tiny" else {})}
    wanted = {"scale": scale, "seed": SEED, "config": values}
    marker = folder / "BUILD.json"
    if marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted:
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(T5Config(**values)).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(DEMO_T5 / name, folder / name)
    built = {**wanted, "parameters": sum(p.numel() for p in model.parameters()),
             "build_seconds": time.perf_counter() - started}
    marker.write_text(json.dumps(built, indent=1))
    return built


def _load(request, compiled: bool):
    """Load through a registry of its own: the request's key does not say which path."""
    from quant.registry import ModelRegistry

    os.environ["QUANT_FAST_GENERATION"] = "all" if compiled else "off"
    try:
        registry = ModelRegistry(max_models=1)
        return registry, registry.load(request)
    finally:
        os.environ.pop("QUANT_FAST_GENERATION", None)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_batch(loaded, prompts: list[str], new_tokens: int, profile: bool = False):
    """One greedy batch through start_generate: (new token ids per row, seconds, whether it ran compiled[, profile])."""
    from quant.generation import cache_tokens, start_generate

    encoded = loaded.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="right").to(loaded.device)
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, num_beams=1, pad_token_id=loaded.tokenizer.pad_token_id)
    total = cache_tokens(loaded, encoded["input_ids"].shape[1], new_tokens)
    if profile:
        from bench.generate_overhead import profile_steps

        return profile_steps(loaded, kwargs, len(prompts), total, new_tokens)
    _sync()
    started = time.perf_counter()
    future, compiled = start_generate(loaded, kwargs, batch_size=len(prompts), total_tokens=total)
    out = future.result()
    _sync()
    return out[:, 1:].tolist(), time.perf_counter() - started, compiled


def measure_mode(mode, folder: Path, prompts: list[str], args) -> dict:
    from quant.loader import LoadRequest
    from quant.methods import QuantOptions, parse_mode

    request = LoadRequest(model=str(folder), mode=parse_mode(mode.method), options=QuantOptions(**mode.options),
                          device_map=args.device_map)
    row: dict = {"mode": mode.label}
    for path in ("eager", "compiled"):
        registry = None
        try:
            registry, loaded = _load(request, compiled=path == "compiled")
            report = loaded.report
            run_batch(loaded, prompts, 2)  # warm-up at this batch shape
            runs = [run_batch(loaded, prompts, args.new_tokens) for _ in range(args.repeats)]
            ids, seconds, ran_compiled = min(runs, key=lambda r: r[1])
            row[path] = {"tokens_per_s": len(prompts) * args.new_tokens / seconds, "seconds": seconds,
                         "step_ms": 1000 * seconds / args.new_tokens, "ran_compiled": ran_compiled,
                         "generation_path": report.generation_path, "load_seconds": report.load_seconds,
                         "compile_seconds": report.compile_seconds, "footprint_bytes": report.footprint_bytes,
                         "kept": report.kept,
                         "warnings": report.warnings}
            row[f"{path}_ids"] = ids
            if args.profile and path == "compiled":  # compiled where it can be; else why eager is slow
                row[path]["profile"] = run_batch(loaded, prompts, args.new_tokens, profile=True)
            print(f"[{mode.label}] {path}: {row[path]['tokens_per_s']:.0f} tok/s ({seconds:.3f} s), load "
                  f"{report.load_seconds:.1f} s, compile {report.compile_seconds or 0:.1f} s, {report.generation_path}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - one mode's failure is its row's
            row["error"] = f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"[{mode.label}] {row['error']}", flush=True)
            break
        finally:
            if registry is not None:
                registry.unload_all()
            gc.collect()
    if "eager" in row and "compiled" in row:
        row["ratio"] = row["compiled"]["tokens_per_s"] / row["eager"]["tokens_per_s"]
        pairs = list(zip(row.pop("eager_ids"), row.pop("compiled_ids")))
        row["rows_equal"] = sum(a == b for a, b in pairs)
        row["rows"] = len(pairs)
    row.pop("eager_ids", None)
    row.pop("compiled_ids", None)
    return row


def explain(rows: list[dict], on_gpu: bool) -> None:
    """The verdict per mode: bf16 against the goal; every mode's path and its rates against bf16's."""
    bf16 = next((r for r in rows if r["mode"] == "bf16" and "ratio" in r), None)
    for row in rows:
        if "ratio" not in row:
            row["verdict"] = f"failed ({row.get('error', '?')})"
            continue
        compiled = row["compiled"]
        parts = []
        if not compiled["ran_compiled"]:
            path = compiled["generation_path"]
            parts.append(f"stays eager: {path}" if path.startswith("eager") else
                         "ran eagerly: the batch does not fit the compiled loop (batch size, cache tokens)")
        elif row["mode"] == "bf16":
            parts.append(("goal met" if row["ratio"] >= GOAL else "goal NOT met") if on_gpu else
                         "goal n/a (a GPU's)")
        if bf16 and row is not bf16:
            parts.append(f"eager {row['eager']['tokens_per_s'] / bf16['eager']['tokens_per_s']:.2f}x bf16 eager, "
                         f"compiled {compiled['tokens_per_s'] / bf16['compiled']['tokens_per_s']:.2f}x bf16 compiled")
        top = (compiled.get("profile") or {}).get("tables", [{}])[0].get("top", [])
        if top:
            parts.append("top ops: " + "; ".join(f"{k['name'][:60]} {100 * k['share']:.0f}%" for k in top[:3]))
        row["verdict"] = "; ".join(parts)


def markdown(summary: dict) -> str:
    lines = [f"# Seq2seq batch generation, eager vs compiled, on {summary['device']}", "",
             f"T5-large shape ({summary['scale']} scale, {summary['parameters']:,} parameters, random weights), batch "
             f"{summary['batch_size']} of {summary['prompt_words']}-word prompts ({summary['prompt_tokens']} tokens "
             f"padded), {summary['new_tokens']} forced new tokens, greedy; static cache {summary['cache_tokens']} "
             f"tokens, compile backend {summary['compile_backend']}; tok/s = generated tokens / wall time (encoder "
             f"and first step included), best of {summary['repeats']}. Goal (issue 26): bf16 compiled >= {GOAL:g}x "
             "eager.", "",
             "| mode | eager tok/s | compiled tok/s | compiled / eager | ms per token (eager / compiled) | "
             "rows equal | load s (eager / compiled) | compile s | compiled path | why this speed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summary["modes"]:
        if "ratio" not in row:
            lines.append(f"| {row['mode']} | failed: {row.get('error', '?')} |||||||||")
            continue
        eager, compiled = row["eager"], row["compiled"]
        lines.append(f"| {row['mode']} | {eager['tokens_per_s']:,.0f} | {compiled['tokens_per_s']:,.0f} | "
                     f"{row['ratio']:.2f}x | {eager['step_ms']:.1f} / {compiled['step_ms']:.1f} | "
                     f"{row['rows_equal']}/{row['rows']} | {eager['load_seconds']:.1f} / "
                     f"{compiled['load_seconds']:.1f} | {compiled['compile_seconds'] or 0:.1f} | "
                     f"{compiled['generation_path']} | {row['verdict']} |")
    lines += ["", "Rows equal: greedy new tokens identical to eager's (16-bit arithmetic may part at near-ties).",
              "Command: `" + summary["command"] + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=None, tag="", work=WORK, modes="fp32,bf16,int8,nf4", device_map=None,
                          new_tokens=16, helps={"modes": "load modes, comma-separated, as bench/methods_bench.py "
                                                         "takes them (options in brackets)"})
    parser.add_argument("--scale", choices=("real", "tiny"), default="real",
                        help="real: T5-large's widths (a GPU); tiny: width 128, 2 layers (a CPU check)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--prompt-words", type=int, default=32)
    parser.add_argument("--cache-tokens", default=None,
                        help="QUANT_STATIC_CACHE_TOKENS (default: the longer of the padded prompt and the new tokens "
                             "+ 1, the shortest cache that holds the batch)")
    parser.add_argument("--compile-backend", default="inductor", help="QUANT_COMPILE_BACKEND (eager: trace only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="one more generation per mode on its compiled load, under torch.profiler: the kernels "
                             "that took it")
    args = parser.parse_args()
    if args.out is None:
        parser.error("--out is required")
    from bench.gpu_bench import prompts_from_text
    from bench.methods_bench import parse_modes
    from quant.methods import METHODS

    modes = parse_modes(args.modes)
    needs_checkpoint = [m.label for m in modes if METHODS[m.method].needs_quantized_checkpoint]
    if needs_checkpoint:
        parser.error(f"{', '.join(needs_checkpoint)} load(s) only quantized checkpoints: not measured here")
    import torch

    on_gpu = torch.cuda.is_available() and args.device_map != "cpu"
    args.device_map = args.device_map or ("cuda:0" if on_gpu else "cpu")
    os.environ["QUANT_COMPILE_BACKEND"] = args.compile_backend
    folder = args.work / f"t5-large-{args.scale}"
    built = build_checkpoint(folder, args.scale)
    prompts = prompts_from_text(args.batch_size, args.prompt_words)
    from transformers import AutoTokenizer

    prompt_tokens = AutoTokenizer.from_pretrained(folder)(prompts, padding=True, return_tensors="pt")["input_ids"]
    args.cache_tokens = args.cache_tokens or str(max(prompt_tokens.shape[1], args.new_tokens + 1))
    os.environ["QUANT_STATIC_CACHE_TOKENS"] = args.cache_tokens
    os.environ["QUANT_COMPILED_BATCH_SIZES"] = str(args.batch_size)
    print(f"{built['parameters'] / 1e6:.0f}M parameters -> {folder}; prompts padded to {prompt_tokens.shape[1]} "
          "tokens", flush=True)
    started = time.perf_counter()
    rows = [measure_mode(mode, folder, prompts, args) for mode in modes]
    explain(rows, on_gpu)
    summary = {"device": torch.cuda.get_device_name(0) if on_gpu else "CPU", "scale": args.scale,
               "parameters": built["parameters"], "batch_size": args.batch_size, "new_tokens": args.new_tokens,
               "prompt_words": args.prompt_words, "prompt_tokens": int(prompt_tokens.shape[1]),
               "cache_tokens": args.cache_tokens, "compile_backend": args.compile_backend, "repeats": args.repeats,
               "goal": GOAL, "seconds": time.perf_counter() - started,
               "command": "python bench/seq2seq_bench.py " + " ".join(sys.argv[1:]), "modes": rows}
    stem = result_stem("seq2seq-bench", "t5-large", args.scale, "cuda" if on_gpu else "cpu", tag=args.tag)
    write_results(args.out, stem, summary, markdown)


if __name__ == "__main__":
    main()
