"""Where a generated token's time goes: the model's forward, or HF `generate`'s own work around it.

At batch 1 the compiled path's decode rate sits far below the bandwidth floor (H100, Llama-1B shape, bf16: 204 tok/s,
4.9 ms a token, against 0.8 ms to read the weights). This splits each decode step of the app's own path
(`quant.generation.start_generate`, greedy, fixed length) into time inside the model's forward (the compiled call
that `generate` makes, or the eager forward) and the rest (`generate`'s Python per step: input preparation, logits
processors, stopping criteria, cache bookkeeping). On a GPU the forward is timed with a device synchronisation on
each side, so its queued kernels are counted where they run.

    python bench/generate_overhead.py --out bench/results                                   # CPU, demo model
    python bench/generate_overhead.py --model /tmp/bench/llama-1b --mode bf16 --device-map cuda:0 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant.generation import start_generate  # noqa: E402
from quant.loader import LoadRequest, load_model  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward_calls(model, device: torch.device, compiled: bool, durations: list[float]) -> None:
    """Record the wall time of every forward `generate` makes. Compiled: the prefill's eager call (a forward hook) and
    each decode step's compiled call (a wrapper around the callable `generate` asks for). Eager: a forward hook."""
    real_compiled_call = model.get_compiled_call

    def timed_compiled_call(compile_config):
        call = real_compiled_call(compile_config)

        def timed(*args, **kwargs):
            synchronize(device)
            started = time.perf_counter()
            out = call(*args, **kwargs)
            synchronize(device)
            durations.append(time.perf_counter() - started)
            return out
        return timed

    model.get_compiled_call = timed_compiled_call
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


def measure(loaded, prompt: str, new_tokens: int, repeats: int) -> dict:
    tokenizer, device = loaded.tokenizer, loaded.device
    durations: list[float] = []
    time_forward_calls(loaded.model, torch.device(device), loaded.path.compiled, durations)
    encoded = tokenizer([prompt], return_tensors="pt").to(device)
    kwargs = dict(**encoded, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                  top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    total_tokens = encoded["input_ids"].shape[1] + new_tokens
    runs = []
    for index in range(repeats + 1):  # the first run is a warm-up
        durations.clear()
        synchronize(torch.device(device))
        started = time.perf_counter()
        future, compiled = start_generate(loaded, kwargs, batch_size=1, total_tokens=total_tokens)
        future.result()
        synchronize(torch.device(device))
        wall = time.perf_counter() - started
        if index == 0:
            continue
        # The first forward is the prefill; the rest are the decode steps, one per new token after the first.
        decode_forward = sum(durations[1:])
        steps = len(durations) - 1
        runs.append({"compiled": compiled, "wall_s": wall, "prefill_s": durations[0], "decode_steps": steps,
                     "decode_forward_s": decode_forward})
    best = min(runs, key=lambda r: r["wall_s"])
    steps = best["decode_steps"]
    outside = best["wall_s"] - best["prefill_s"] - best["decode_forward_s"]
    return {**best, "forward_ms_per_step": 1000 * best["decode_forward_s"] / steps,
            "outside_ms_per_step": 1000 * outside / steps,
            "outside_share": outside / (best["wall_s"] - best["prefill_s"]),
            "tokens_per_s": new_tokens / best["wall_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo:tiny-llama-chat")
    parser.add_argument("--mode", default="fp32")
    parser.add_argument("--device-map", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="eager,compiled")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QUANT_COMPILED_BATCH_SIZES", "1")
    prompt = "The with statement is used to wrap the execution of a block with methods defined by a context manager."
    rows = []
    for path in args.paths.split(","):
        # "all" compiles on the CPU too, so the split can be seen without a GPU.
        os.environ["QUANT_FAST_GENERATION"] = {"eager": "off", "compiled": "all"}[path]
        loaded = load_model(LoadRequest(model=args.model, mode=args.mode, device_map=args.device_map))
        row = {"path": path, "generation_path": loaded.path.describe(), **measure(loaded, prompt, args.new_tokens,
                                                                                   args.repeats)}
        rows.append(row)
        print(f"{path}: {row['tokens_per_s']:.1f} tok/s; per decode step {row['forward_ms_per_step']:.2f} ms in the "
              f"forward, {row['outside_ms_per_step']:.2f} ms around it ({row['outside_share']:.0%}); "
              f"{row['generation_path']}", flush=True)
        loaded.path.close()
        del loaded
    device = torch.cuda.get_device_name(0) if args.device_map.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    summary = {"device": device, "torch": torch.__version__, "model": args.model, "mode": args.mode,
               "new_tokens": args.new_tokens, "rows": rows}
    stem = f"generate-overhead-{Path(args.model.split(':')[-1]).name}-{args.mode}-{args.device_map.split(':')[0]}"
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# Time per decode step: forward vs. `generate` around it ({summary['device']}, torch {torch.__version__})",
             "", f"{args.model}, {args.mode}, batch 1, greedy, {args.new_tokens} new tokens, best of {args.repeats}.",
             "", "| path | tok/s | forward ms/step | around it ms/step | share around |", "|---|---|---|---|---|"]
    lines += [f"| {r['generation_path']} | {r['tokens_per_s']:.1f} | {r['forward_ms_per_step']:.2f} | "
              f"{r['outside_ms_per_step']:.2f} | {r['outside_share']:.0%} |" for r in rows]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
