"""Continuous batching against padded batches, per mode (issue 26): the Batch tab's own path, quant.batching.run_batch,
forced to each engine through its `engine` argument, on ragged prompts.

Per mode: one load (the app's registry; the generation path as the app decides it, or --fast-generation), each engine
warmed up on a few prompts, then every engine on the same --prompts prompts of 16 to --max-prompt-tokens tokens
(lengths drawn uniformly, seeded) with up to --new-tokens new tokens each, greedy, --batch-size generating at once.
Per engine: generated tokens/s and prompts/s (to the last reply), the first reply's time, the whole job's time (the
continuous engine's teardown included), peak GPU memory during the job, the engine that really ran (a forced
continuous engine falls back to padded batches where it cannot run, and says why), and how many replies equal the
continuous engine's (greedy: they should all, but for near ties in 16-bit arithmetic), or, with --reference, an
earlier run's (two settings in two processes: `--keep-replies` on the first). `--compiled-batch-sizes 32`
gives the padded engine the compiled static-batch loop at that size (QUANT_COMPILED_BATCH_SIZES, at load). An engine
is a name and modifiers joined by "+": `padded+eager` keeps a job's batch size eager (QUANT_COMPILE_BATCH_ON_DEMAND=0,
the default until the eighth session), `padded+compiled` compiles it on demand (=1, the default since), and
`padded+padded-prefill` prefills a padded batch whole (QUANT_BATCH_PREFILL=padded), `padded+compiled-prefill` runs
its groups through one compiled decoder layer (QUANT_COMPILE_PREFILL=on); an engine that compiles on demand
has that compile timed alone before its first job, and runs after the engines that do not (a size once compiled stays
compiled for them too).

    python bench/batch_engines.py --shape 8b --modes bf16,nf4,int8,gptq --prompts 128 --new-tokens 128 \\
        --batch-size 128 --out bench/results                                                        # the GPU run
    python bench/batch_engines.py --shape 8b --modes bf16,nf4,gptq --engines padded+eager,padded --prompts 128 \\
        --new-tokens 128 --batch-size 128 --tag=-on-demand --out bench/results     # eager against the compiled loop
    python bench/batch_engines.py --model demo:tiny-llama-chat --device-map cpu --modes fp32,nf4 --prompts 12 \\
        --max-prompt-tokens 300 --new-tokens 16 --batch-size 4 --out /tmp/batch-engines              # a CPU check

`--profile` runs one more job per mode under torch.profiler and splits its wall time into the decode loop's prefill and
decode (quant.decode's profiler ranges, with the GPU time of the kernels each launched) and the rest of the job.

Random weights (bench/llama_shapes.py) for the shapes: speed and memory only; with random weights a reply seldom
meets a stop token, so most replies run to --new-tokens.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (REQUIRED, WORK, bench_parser, environment, gpu_idle, gpu_kernels,  # noqa: E402
                          kernel_kind, result_stem, thread_profiler, write_results)
from bench.llama_shapes import build_checkpoint  # noqa: E402
from bench.methods_bench import parse_modes, quantized_checkpoint  # noqa: E402
from quant.batching import CONTINUOUS, PADDED, run_batch  # noqa: E402
from quant.generation import GenerationSettings, cache_tokens  # noqa: E402
from quant.gptq import builtin_textsets  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.methods import METHODS, QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402
from quant.settings import load_settings  # noqa: E402
from quant.source import resolve_location  # noqa: E402

MiB = 2**20
MODIFIERS = {"eager": {"QUANT_COMPILE_BATCH_ON_DEMAND": "0"}, "compiled": {"QUANT_COMPILE_BATCH_ON_DEMAND": "1"},
             "padded-prefill": {"QUANT_BATCH_PREFILL": "padded"}, "graphs": {"QUANT_CONTINUOUS_STEP": "graphs"},
             "compiled-prefill": {"QUANT_COMPILE_PREFILL": "on"}, "eager-prefill": {"QUANT_COMPILE_PREFILL": "off"}}
"""What each engine modifier sets for its job (the settings it leaves out keep their defaults)."""


def engine_environment(engine: str) -> dict[str, str | None]:
    name, *modifiers = engine.split("+")
    unknown = [m for m in modifiers if m not in MODIFIERS]
    if name not in (PADDED, CONTINUOUS) or unknown:
        raise SystemExit(f"Unknown engine {engine!r}: padded or continuous, then modifiers of {', '.join(MODIFIERS)}")
    env = {"QUANT_CONTINUOUS_STEP": "library", "QUANT_COMPILE_BATCH_ON_DEMAND": None, "QUANT_BATCH_PREFILL": None,
           "QUANT_COMPILE_PREFILL": None}
    for modifier in modifiers:
        env.update(MODIFIERS[modifier])
    return env


def compiles_on_demand(engine: str) -> bool:
    """Whether this engine's job compiles its batch size on demand (padded engines, unless the setting is off)."""
    if not engine.startswith(PADDED):
        return False
    with environment(engine_environment(engine)):
        return load_settings().compile_batch_on_demand


GOALS = "bf16 >= 5,000 tok/s (8B, 128 ragged prompts x 128 new tokens); GPTQ >= bf16; nf4 >= 0.6x bf16"


def ragged_prompts(tokenizer, count: int, shortest: int, longest: int, seed: int = 0) -> list[str]:
    """`count` prompts cut from the built-in Python reference text, of `shortest` to `longest` tokens (uniformly
    drawn), each from its own place in the text."""
    ids = tokenizer(builtin_textsets()["python-reference"].read_text(), add_special_tokens=False,
                    verbose=False)["input_ids"]  # the whole text: longer than the model's context, as meant
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        length = rng.randint(shortest, longest)
        start = rng.randrange(0, max(1, len(ids) - length))
        prompts.append(tokenizer.decode(ids[start:start + length]))
    return prompts


def run_engine(loaded, prompts: list[str], settings: GenerationSettings, batch_size: int, engine: str) -> dict:
    """One job on `engine` through run_batch: its rates, times, peak GPU memory and replies. `engine` is "padded",
    "continuous", "continuous+graphs" (the continuous engine with QUANT_CONTINUOUS_STEP=graphs) or "padded+compiled"
    (padded batches with QUANT_COMPILE_BATCH_ON_DEMAND=1: the job's batch size on the compiled static-batch loop) or
    "padded+padded-prefill" (padded batches prefilled over the whole padded batch, QUANT_BATCH_PREFILL=padded: what
    quant.ragged's grouped prefill, the default, saves)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    name = engine.partition("+")[0]
    started = time.perf_counter()
    first_reply = last = None
    with environment(engine_environment(engine)):
        for last in run_batch(loaded, list(enumerate(prompts, 1)), settings, batch_size=batch_size, engine=name):
            if first_reply is None and last.done:
                first_reply = time.perf_counter() - started
    job_seconds = time.perf_counter() - started
    return {"engine": engine, "ran": last.engine.describe(), "ran_engine": last.engine.engine,
            "seconds": last.seconds, "job_seconds": job_seconds, "first_reply_seconds": first_reply,
            "prompts": last.total, "done": last.done, "generated_tokens": last.generated_tokens,
            "tokens_per_s": last.generated_tokens / last.seconds, "prompts_per_s": last.done / last.seconds,
            "errors": [r.error for r in last.rows if r.error][:3],
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "replies": [[r.output, r.new_tokens] for r in last.rows]}


def profile_job(loaded, prompts: list[str], settings: GenerationSettings, batch_size: int, engine: str,
                top: int = 40) -> dict:
    """One more job under torch.profiler (every thread: a compiled job runs on the runner thread): its wall time, the
    GPU's busy time (kernels, by kind), and the decode loop's two phases (quant.decode's profiler ranges: host wall
    and the GPU time of the kernels they launched, CUDA graphs' included); the rest of the wall is the job's own
    (tokenizing, scheduling, streaming the rows) or the GPU waiting for it."""
    from quant.decode import DECODE_RANGE, PREFILL_RANGE

    on_gpu = torch.cuda.is_available() and next(loaded.model.parameters()).is_cuda
    with thread_profiler(on_gpu) as prof:
        result = run_engine(loaded, prompts, settings, batch_size, engine)
    events = prof.key_averages()
    phases = {e.key: {"calls": e.count, "wall_s": e.cpu_time_total / 1e6, "gpu_s": e.device_time_total / 1e6}
              for e in events if e.key in (PREFILL_RANGE, DECODE_RANGE)}
    kernels = sorted(gpu_kernels(events), key=lambda e: -e.self_device_time_total)
    by_kind: dict[str, float] = {}
    for e in kernels:
        by_kind[kernel_kind(e.key)] = by_kind.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e6
    return {"engine": engine, "on_gpu": on_gpu, "job_seconds": result["job_seconds"],
            "tokens_per_s": result["tokens_per_s"],
            "gpu_busy_s": sum(by_kind.values()), "gpu_s_by_kind": by_kind, "phases": phases,
            "idle": gpu_idle(prof.events(), (PREFILL_RANGE, DECODE_RANGE)) if on_gpu else None,
            "top_kernels": [{"kernel": e.key[:120], "kind": kernel_kind(e.key), "calls": e.count,
                             "seconds": e.self_device_time_total / 1e6} for e in kernels[:top]]}


def reference_replies(engines: list[dict], earlier: list | None) -> list | None:
    """What a mode's replies are compared with: an earlier run's (--reference), else the continuous engine's, else the
    first engine's where two or more ran; None for a lone engine (compared with itself it would say nothing)."""
    if earlier is not None:
        return earlier
    continuous = next((e["replies"] for e in engines if e["ran_engine"] == CONTINUOUS), None)
    if continuous is not None:
        return continuous
    return engines[0]["replies"] if len(engines) >= 2 else None


def shared_start(replies: list, reference: list) -> float:
    """The median over prompts of how much of the reference reply a reply repeats before they part (its common
    prefix, in characters, over the reference's length; 1 where equal). Random weights leave near ties at most tokens,
    so two settings' replies part somewhere: where they part says more than how many are equal (arithmetic that
    differs by rounding parts late, at a near tie; a wrong kernel parts at the first tokens)."""
    import os
    import statistics

    shares = [len(os.path.commonprefix([a[0], b[0]])) / len(b[0]) if b[0] else float(a[0] == b[0])
              for a, b in zip(replies, reference)]
    return statistics.median(shares) if shares else 0.0


def earlier_replies(path: Path, prompts: int, shortest: int, longest: int, new_tokens: int) -> dict[str, list]:
    """Per mode, the first engine's replies of an earlier run written with --keep-replies (--reference), which must
    have run the same prompts and reply length."""
    import json

    data = json.loads(Path(path).read_text())
    replies = {row["mode"]: row["engines"][0]["replies"] for row in data["modes"]
               if row.get("engines") and "replies" in row["engines"][0]}
    if not replies:
        raise SystemExit(f"{path} holds no replies: write the reference run with --keep-replies")
    if (data.get("prompts"), data.get("shortest"), data.get("longest"), data.get("new_tokens")) != (
            prompts, shortest, longest, new_tokens):
        raise SystemExit(f"{path} ran other prompts ({data.get('prompts')} of {data.get('shortest')}-"
                         f"{data.get('longest')} tokens, {data.get('new_tokens')} new): run with the same --prompts, "
                         "--min-prompt-tokens, --max-prompt-tokens and --new-tokens")
    return replies


def bench_mode(registry: ModelRegistry, mode, model: str, args, prompts_of, earlier: dict | None = None) -> dict:
    options = QuantOptions(**mode.options)
    row = {"mode": mode.label, "model": model, "engines": []}
    try:
        loaded = registry.load(LoadRequest(model=model, mode=mode.method, options=options,
                                           device_map=args.device_map))
    except Exception as exc:  # noqa: BLE001 - a mode that does not load is a row, not the end of the run
        row["error"] = f"{type(exc).__name__}: {exc}"
        print(f"{mode.label}: load failed: {row['error']}", flush=True)
        return row
    row["generation_path"] = loaded.path.describe()
    row["attn_implementation"] = loaded.model.config._attn_implementation
    prompts = prompts_of(loaded.tokenizer)
    row["prompt_tokens"] = [len(loaded.tokenizer(p)["input_ids"]) for p in prompts]
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    engines = args.engines.split(",")
    for engine in dict.fromkeys("+".join([m for m in e.split("+") if m not in ("compiled", "eager")] + ["eager"])
                                for e in engines):
        # warm-up: kernels, allocator, the compiled loop's first calls (the 4 prompts compile nothing for themselves);
        # an on-demand compile is timed below
        run_engine(loaded, prompts[:4], GenerationSettings(max_new_tokens=4), min(4, args.batch_size), engine)
    for engine in engines:
        if compiles_on_demand(engine) and loaded.path.compiled:
            # what the first job of this size waits for, timed alone, in the engine's settings: the batch size at the
            # first such engine; a later one's compile of its own (the batch prefill of +compiled-prefill) apart
            size = min(args.batch_size, len(prompts))
            needed = cache_tokens(loaded, max(row["prompt_tokens"]), args.new_tokens)
            started = time.perf_counter()
            with environment(engine_environment(engine)):
                refusal = loaded.path.add_batch_size(size, needed)
            seconds = time.perf_counter() - started
            if "on_demand_compile_seconds" not in row:
                row["on_demand_refusal"], row["on_demand_compile_seconds"] = refusal, seconds
            else:
                row.setdefault("engine_compile_seconds", {})[engine] = seconds
            print(f"{mode.label} {engine}: compiled on demand in {seconds:.1f} s {refusal or ''}; path "
                  f"{loaded.path.describe()}", flush=True)
            row["generation_path"] = loaded.path.describe()
        result = run_engine(loaded, prompts, settings, args.batch_size, engine)
        row["engines"].append(result)
        print(f"{mode.label} {engine}: {result['tokens_per_s']:,.0f} tok/s, {result['prompts_per_s']:.2f} prompts/s, "
              f"first reply {result['first_reply_seconds'] or 0:.2f} s, job {result['job_seconds']:.1f} s, peak "
              f"{(result['peak_gpu_bytes'] or 0) / MiB:,.0f} MiB; ran {result['ran']}", flush=True)
    if args.profile and row["engines"]:
        row["profile"] = profile_job(loaded, prompts, settings, args.batch_size, row["engines"][0]["engine"])
        print(f"{mode.label}: profiled job {row['profile']['job_seconds']:.2f} s, GPU busy "
              f"{row['profile']['gpu_busy_s']:.2f} s; phases {row['profile']['phases']}", flush=True)
    reference = reference_replies(row["engines"], earlier.get(mode.label) if earlier else None)
    for result in row["engines"]:
        result["equal_to_reference"] = (sum(a == b for a, b in zip(result["replies"], reference))
                                        if reference is not None else None)
        result["shared_start"] = shared_start(result["replies"], reference) if reference is not None else None
        if not args.keep_replies:
            result.pop("replies")
    key = loaded.key
    del loaded
    registry.unload(key)
    return row


def profile_markdown(mode: str, profiled: dict) -> list[str]:
    """Where a profiled job's time went: the decode loop's phases, the GPU's busy time by kind, the top kernels."""
    wall = profiled["job_seconds"]
    busy = (f"GPU busy {profiled['gpu_busy_s']:.2f} s ({profiled['gpu_busy_s'] / wall:.0%})" if profiled["on_gpu"]
            else "on the CPU (no GPU time)")
    lines = [f"### {mode}, one more job under torch.profiler ({profiled['engine']}): {wall:.2f} s, "
             f"{profiled['tokens_per_s']:,.0f} tok/s (slower than unprofiled by the profiler's overhead), {busy}", "",
             "| part | calls | host wall s | GPU s of its kernels |", "|---|---|---|---|"]
    phases = profiled["phases"]
    for name, phase in phases.items():
        lines.append(f"| {name} | {phase['calls']} | {phase['wall_s']:.3f} | {phase['gpu_s']:.3f} |")
    outside = wall - sum(p["wall_s"] for p in phases.values())
    lines.append(f"| the rest of the job (outside the decode loop's phases) | | {outside:.3f} | |")
    lines += ["", "| GPU kernels by kind | s |", "|---|---|"]
    lines += [f"| {kind} | {seconds:.3f} |" for kind, seconds in sorted(profiled["gpu_s_by_kind"].items(),
                                                                       key=lambda kv: -kv[1])]
    lines += ["", "| kernel | kind | calls | s |", "|---|---|---|---|"]
    lines += [f"| `{k['kernel']}` | {k.get('kind', '')} | {k['calls']} | {k['seconds']:.3f} |"
              for k in profiled["top_kernels"][:20]]
    idle = profiled.get("idle")
    if idle:
        where = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in idle["idle_in"].items())
        lines += ["", f"GPU idle (bench.common.gpu_idle): {idle['lead_in_s']:.3f} s before its first kernel, "
                  f"{idle['tail_s']:.3f} s after its last; between them {idle['idle_s']:.3f} s of {idle['span_s']:.3f} "
                  f"s in {idle['gaps']} gaps of 20 us or more (longest "
                  f"{', '.join(f'{g:.1f}' for g in idle['longest_gaps_ms'])} ms): {where}.", "",
                  "| host call during the gaps | overlap s | calls |", "|---|---|---|"]
        lines += [f"| `{w['call']}` | {w['seconds']:.3f} | {w['calls']} |" for w in idle["waiting_for"]]
        lines += ["", "Calls that wait for the GPU: " + ("; ".join(
            f"`{name}` " + ", ".join(f"{where} {count}" for where, count in places.items())
            for name, places in idle["synchronizing_calls"].items()) or "none") + "."]
    return lines


def markdown(data: dict) -> str:
    lines = [f"# Batch engines: continuous batching vs padded batches ({data['source']})", "",
             f"{data['prompts']} prompts of {data['shortest']}-{data['longest']} tokens, up to {data['new_tokens']} "
             f"new tokens each (greedy), batch size {data['batch_size']} (most prompts generating at once), "
             f"QUANT_COMPILED_BATCH_SIZES={data['compiled_batch_sizes']}, "
             f"QUANT_FAST_GENERATION={data['fast_generation']}; through quant.batching.run_batch. "
             "Engines: `padded+eager`: padded batches with QUANT_COMPILE_BATCH_ON_DEMAND=0 (a job's batch size runs "
             "eagerly); `padded+compiled`: =1 (compiled once, before the first job that needs it, timed below); "
             "`padded`: the default (on since the eighth session); `+padded-prefill`: QUANT_BATCH_PREFILL=padded "
             "(one prefill over the padded batch instead of groups of similar length); `+compiled-prefill`: "
             "QUANT_COMPILE_PREFILL=on (the groups through one compiled decoder layer, dynamic shapes; the default "
             "since the nineteenth session); `+eager-prefill`: =off (the groups eager).", "",
             "| mode | engine | ran | tok/s | prompts/s | first reply s | job s | peak GPU MiB | "
             "replies = reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    reference_note = (f"Replies compared with {data['reference']}'s (the same mode's first engine)."
                      if data.get("reference") else
                      "Replies compared with the continuous engine's, else the first engine's where two or more ran "
                      "(n/a: a lone engine).")
    reference_note += (" Median shared start: how much of the reference reply a reply repeats before they part (the "
                       "median over prompts of their common prefix over the reference's length): arithmetic that "
                       "differs by rounding parts late, at a near tie; a wrong kernel parts at the first tokens.")
    for row in data["modes"]:
        if row.get("error"):
            lines.append(f"| {row['mode']} | failed: {row['error']} ||||||||")
            continue
        for e in row["engines"]:
            peak = f"{e['peak_gpu_bytes'] / MiB:,.0f}" if e["peak_gpu_bytes"] else "n/a"
            equal = ("n/a" if e.get("equal_to_reference") is None
                     else f"{e['equal_to_reference']}/{e['prompts']}"
                     + ("" if e.get("shared_start") is None else f" (median shared start {e['shared_start']:.0%})"))
            lines.append(f"| {row['mode']} | {e['engine']} | {e['ran']} | {e['tokens_per_s']:,.0f} | "
                         f"{e['prompts_per_s']:.2f} | {e['first_reply_seconds'] or 0:.2f} | {e['job_seconds']:.1f} | "
                         f"{peak} | {equal} |")
    lines += ["", reference_note, "", "Faster engine per mode (generated tok/s):", ""]
    for row in data["modes"]:
        rates = {e["engine"]: e["tokens_per_s"] for e in row.get("engines", [])
                 if e["ran_engine"] == e["engine"].partition("+")[0]}
        if len(rates) >= 2:
            best = max(rates, key=rates.get)
            others = ", ".join(f"{rates[best] / rate:.2f}x {engine}" for engine, rate in rates.items()
                               if engine != best)
            lines.append(f"- {row['mode']}: {best} ({others}); path {row['generation_path']}")
    for row in data["modes"]:
        if "on_demand_compile_seconds" in row:
            refusal = f": {row['on_demand_refusal']}" if row["on_demand_refusal"] else ""
            lines.append(f"- {row['mode']}: batch size compiled on demand before the jobs in "
                         f"{row['on_demand_compile_seconds']:.1f} s{refusal}")
        for engine, seconds in row.get("engine_compile_seconds", {}).items():
            lines.append(f"- {row['mode']}: then {seconds:.1f} s compiling for {engine} (its batch prefill)")
    for row in data["modes"]:
        if "profile" in row:
            lines += ["", *profile_markdown(row["mode"], row["profile"])]
    lines += ["", f"Goals (issue 26): {GOALS}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, model=None, shape="8b", modes="bf16,nf4,gptq",
                          device_map="cuda:0" if torch.cuda.is_available() else "cpu", new_tokens=128,
                          helps={"model": "a model instead of a random-weight shape (Hub id, folder, demo:NAME)",
                                 "new_tokens": "most new tokens per prompt (greedy; a stop token ends a reply)"})
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--min-prompt-tokens", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128, help="most prompts generating at once (1-256)")
    parser.add_argument("--engines", default="continuous,padded",
                        help="padded or continuous, each with modifiers joined by '+': eager "
                             "(QUANT_COMPILE_BATCH_ON_DEMAND=0), compiled (=1: the batch size compiled before its job, "
                             "timed), padded-prefill (QUANT_BATCH_PREFILL=padded), graphs (QUANT_CONTINUOUS_STEP=graphs), "
                             "compiled-prefill (QUANT_COMPILE_PREFILL=on), eager-prefill (=off)"
                             "; engines that compile on demand run after the others")
    parser.add_argument("--compiled-batch-sizes", default=os.environ.get("QUANT_COMPILED_BATCH_SIZES", "1"),
                        help="QUANT_COMPILED_BATCH_SIZES for the loads")
    parser.add_argument("--fast-generation", default=os.environ.get("QUANT_FAST_GENERATION", "auto"),
                        help="QUANT_FAST_GENERATION for the loads: auto, all, off")
    parser.add_argument("--keep-replies", action="store_true", help="keep every reply in the JSON")
    parser.add_argument("--profile", action="store_true",
                        help="per mode, one more job of the first engine under torch.profiler: where its time goes "
                             "(the decode loop's prefill and decode, the GPU's busy time by kind, top kernels)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="an earlier run's JSON written with --keep-replies: each mode's replies are compared with "
                             "its (the same prompts: keep --prompts, the prompt lengths and --new-tokens)")
    args = parser.parse_args()
    modes = parse_modes(args.modes)  # refused before anything is built
    earlier = (earlier_replies(args.reference, args.prompts, args.min_prompt_tokens, args.max_prompt_tokens,
                               args.new_tokens) if args.reference else None)
    os.environ["QUANT_COMPILED_BATCH_SIZES"] = args.compiled_batch_sizes
    os.environ["QUANT_FAST_GENERATION"] = args.fast_generation
    engines = args.engines.split(",")
    for engine in engines:
        engine_environment(engine)  # an unknown one is refused before anything is built
    # last: once compiled, the size stays compiled for the engines that do not compile too
    args.engines = ",".join(sorted(engines, key=compiles_on_demand))
    if args.model:
        source, name = args.model, args.model.rsplit("/", 1)[-1].replace("demo:", "")
    else:
        device = "cuda" if args.device_map != "cpu" and torch.cuda.is_available() else "cpu"
        source, name = str(build_checkpoint(args.shape, args.work / f"llama-{args.shape}", device=device)), args.shape
    data = {"source": source, "prompts": args.prompts, "shortest": args.min_prompt_tokens,
            "longest": args.max_prompt_tokens, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
            "compiled_batch_sizes": args.compiled_batch_sizes, "fast_generation": args.fast_generation,
            "reference": str(args.reference) if args.reference else None, "modes": []}

    def prompts_of(tokenizer):
        return ragged_prompts(tokenizer, args.prompts, args.min_prompt_tokens, args.max_prompt_tokens)

    registry = ModelRegistry(max_models=1)
    for mode in modes:
        model = source
        if METHODS[mode.method].needs_quantized_checkpoint:
            model, _ = quantized_checkpoint(mode, Path(resolve_location(source)[0]), args.work)
        data["modes"].append(bench_mode(registry, mode, model, args, prompts_of, earlier))
    write_results(args.out, result_stem("batch-engines", name, tag=args.tag), data, markdown)


if __name__ == "__main__":
    main()
