"""Where a generated token's time goes: the model's forward, or HF `generate`'s own work around it.

At batch 1 the compiled path's decode rate sits far below the bandwidth floor (H100, Llama-1B shape, bf16: 204 tok/s,
4.9 ms a token, against 0.8 ms to read the weights). This splits each decode step of the app's own path
(`quant.generation.start_generate`, greedy, fixed length) into time inside the model's eager forward and the rest
(`generate`'s Python per step: input preparation, logits processors, stopping criteria, cache bookkeeping); the
compiled decode loop's steps are reported whole. On a GPU the forward is timed with a device synchronisation on
each side, so its queued kernels are counted where they run.

With --profile, one more generation runs under torch.profiler and the report adds, per decode step, the time the GPU
was busy in kernels (against the wall time of the step) and the kernels that took it. That says whether a slow step
is slow kernels (e.g. attention over the whole static cache) or idle gaps between them (launch or guard overhead).
--batch-size > 1 repeats the prompt (the compiled path warms that batch size); QUANT_STATIC_CACHE_TOKENS sets the
static cache's length, to see what attending over a longer cache costs.

    python bench/generate_overhead.py --out bench/results                                   # CPU, demo model
    python bench/generate_overhead.py --model /tmp/bench/llama-1b --mode bf16 --device-map cuda:0 --profile \
        --out bench/results
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, gpu_kernels, result_stem, thread_profiler, write_results  # noqa: E402
from quant.generation import start_generate  # noqa: E402
from quant.loader import LoadRequest, load_model  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_calls(model, device: torch.device, compiled: bool, durations: list[float]) -> None:
    """Record the wall time of every eager forward (a forward hook): each step of the eager path, and the prefill of
    the compiled one. The compiled decode loop's steps are graph replays or compiled calls, which run no hook: there
    the measurement reports the whole step instead."""
    starts: list[float] = []

    def before(module, args, kwargs):
        if compiled and torch.compiler.is_compiling():
            return
        synchronize(device)
        starts.append(time.perf_counter())

    def after(module, args, kwargs, output):
        if starts and not (compiled and torch.compiler.is_compiling()):
            synchronize(device)
            durations.append(time.perf_counter() - starts.pop())

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True)


def generate_once(loaded, kwargs: dict, batch_size: int, total_tokens: int) -> tuple[bool, float]:
    """One generation through the app's own path; returns whether it ran compiled and its wall time."""
    device = torch.device(loaded.device)
    synchronize(device)
    started = time.perf_counter()
    future, compiled = start_generate(loaded, kwargs, batch_size=batch_size, total_tokens=total_tokens)
    future.result()
    synchronize(device)
    return compiled, time.perf_counter() - started


def profile_steps(loaded, kwargs: dict, batch_size: int, total_tokens: int, new_tokens: int, top: int = 12) -> dict:
    """Run one generation under torch.profiler: per token, the time the GPU was busy in kernels and which kernels,
    and the host's own op time (dynamo's guard checks show as "TorchDynamo Cache Lookup")."""
    on_gpu = torch.device(loaded.device).type == "cuda"
    with thread_profiler(on_gpu) as prof:  # the generation runs on the runner thread when compiled
        _, wall = generate_once(loaded, kwargs, batch_size, total_tokens)
    events = prof.key_averages()

    def table(timeline: str, chosen: list, busy) -> dict:
        chosen = sorted(chosen, key=busy, reverse=True)
        total_us = sum(busy(e) for e in chosen)
        return {"timeline": timeline, "busy_ms_per_token": total_us / 1000 / new_tokens,
                "top": [{"name": e.key[:120], "calls": e.count, "ms_per_token": busy(e) / 1000 / new_tokens,
                         "share": busy(e) / total_us if total_us else 0.0} for e in chosen[:top]]}

    tables = []
    if on_gpu:
        tables.append(table("GPU kernels", gpu_kernels(events), lambda e: e.self_device_time_total))
    host_ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.self_cpu_time_total]
    tables.append(table("host ops (self CPU time)", host_ops, lambda e: e.self_cpu_time_total))
    return {"profiled_wall_s": wall, "wall_ms_per_token": 1000 * wall / new_tokens, "tables": tables}


def measure(loaded, prompt: str, new_tokens: int, repeats: int, batch_size: int = 1, profile: bool = False) -> dict:
    tokenizer, device = loaded.tokenizer, loaded.device
    durations: list[float] = []
    time_forward_calls(loaded.model, torch.device(device), loaded.path.compiled, durations)
    encoded = tokenizer([prompt] * batch_size, return_tensors="pt").to(device)
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    total_tokens = encoded["input_ids"].shape[1] + new_tokens
    runs = []
    for index in range(repeats + 1):  # the first run is a warm-up
        durations.clear()
        compiled, wall = generate_once(loaded, kwargs, batch_size, total_tokens)
        if index == 0:
            continue
        # The first forward is the prefill; the rest are the decode steps, one per new token after the first.
        decode_forward = sum(durations[1:])
        steps = len(durations) - 1
        runs.append({"compiled": compiled, "wall_s": wall, "prefill_s": durations[0], "decode_steps": steps,
                     "decode_forward_s": decode_forward})
    best = min(runs, key=lambda r: r["wall_s"])
    steps = best["decode_steps"]
    result = {**best, "tokens_per_s": batch_size * new_tokens / best["wall_s"]}
    if steps:
        outside = best["wall_s"] - best["prefill_s"] - best["decode_forward_s"]
        result.update(forward_ms_per_step=1000 * best["decode_forward_s"] / steps,
                      outside_ms_per_step=1000 * outside / steps,
                      outside_share=outside / (best["wall_s"] - best["prefill_s"]))
    else:
        # Decode steps replayed as CUDA graphs call no Python forward, and overlap the host's work on purpose:
        # there is no forward to time on its own. The profile (--profile) gives GPU busy time against wall time.
        result.update(forward_ms_per_step=None, outside_ms_per_step=None, outside_share=None,
                      step_ms=1000 * (best["wall_s"] - best["prefill_s"]) / max(new_tokens - 1, 1))
    if profile:
        result["profile"] = profile_steps(loaded, kwargs, batch_size, total_tokens, new_tokens)
    return result


def split(row: dict) -> str:
    if row["forward_ms_per_step"] is None:
        return f"{row['step_ms']:.2f} ms in all (the decode loop calls no Python forward to time)"
    return (f"{row['forward_ms_per_step']:.2f} ms in the forward, {row['outside_ms_per_step']:.2f} ms around it "
            f"({row['outside_share']:.0%})")


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", model="demo:tiny-llama-chat", mode="fp32", device_map="cpu",
                          new_tokens=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="eager,compiled")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="add a profiled run: device busy time and top kernels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["QUANT_COMPILED_BATCH_SIZES"] = str(args.batch_size)
    prompt = "The with statement is used to wrap the execution of a block with methods defined by a context manager."
    rows = []
    for path in args.paths.split(","):
        # "all" compiles on the CPU too, so the split can be seen without a GPU.
        os.environ["QUANT_FAST_GENERATION"] = {"eager": "off", "compiled": "all"}[path]
        loaded = load_model(LoadRequest(model=args.model, mode=args.mode, device_map=args.device_map))
        row = {"path": path, "generation_path": loaded.path.describe(),
               **measure(loaded, prompt, args.new_tokens, args.repeats, args.batch_size, args.profile)}
        rows.append(row)
        print(f"{path}: {row['tokens_per_s']:.1f} tok/s; per decode step {split(row)}; {row['generation_path']}",
              flush=True)
        for table in row.get("profile", {}).get("tables", []):
            print(f"  profiled: {table['busy_ms_per_token']:.2f} ms busy in {table['timeline']} per token, of "
                  f"{row['profile']['wall_ms_per_token']:.2f} ms wall", flush=True)
        loaded.path.close()
        del loaded
    device = torch.cuda.get_device_name(0) if args.device_map.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    summary = {"device": device, "torch": torch.__version__, "model": args.model, "mode": args.mode,
               "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "static_cache_tokens": os.environ.get("QUANT_STATIC_CACHE_TOKENS", "default"),
               "packed_gqa_decode": os.environ.get("QUANT_PACKED_GQA_DECODE", "1"), "rows": rows}
    stem = result_stem("generate-overhead", Path(args.model.split(":")[-1]).name, args.mode,
                       args.device_map.split(":")[0], f"b{args.batch_size}" if args.batch_size != 1 else "",
                       "profile" if args.profile else "", tag=args.tag)
    lines = [f"# Time per decode step: forward vs. `generate` around it ({summary['device']}, torch {torch.__version__})",
             "", f"{args.model}, {args.mode}, batch {args.batch_size}, greedy, {args.new_tokens} new tokens, best of "
             f"{args.repeats}; tok/s counts every row of the batch.",
             "", "| path | tok/s | forward ms/step | around it ms/step | share around |", "|---|---|---|---|---|"]
    lines += [f"| {r['generation_path']} | {r['tokens_per_s']:.1f} | " + (
        f"{r['forward_ms_per_step']:.2f} | {r['outside_ms_per_step']:.2f} | {r['outside_share']:.0%} |"
        if r["forward_ms_per_step"] is not None else f"{r['step_ms']:.2f} (whole decode step) | n/a | n/a |")
        for r in rows]
    for r in rows:
        if "profile" not in r:
            continue
        for table in r["profile"]["tables"]:
            lines += ["", f"## Profiled run, {r['path']}: {table['busy_ms_per_token']:.2f} ms busy in "
                          f"{table['timeline']} per token, of {r['profile']['wall_ms_per_token']:.2f} ms wall", "",
                      "| kernel / op | calls | ms per token | share of busy |", "|---|---|---|---|"]
            lines += [f"| `{k['name']}` | {k['calls']} | {k['ms_per_token']:.3f} | {k['share']:.0%} |"
                      for k in table["top"]]
    write_results(args.out, stem, summary, "\n".join(lines))


if __name__ == "__main__":
    main()
