"""Where a Batch job's prefill spends its time (issue 26): the compiled static-batch loop's prefill of the goal's ragged
prompts (quant.decode.DecodeLoop._prefill: the prompts in groups of similar length straight into the static cache,
then the last column over the batch), timed and profiled on the GPU.

Of the goal job's 4.3 s on an H200 (8B bf16, 128 prompts of 16-1,000 tokens, 128 new tokens), the prefill took about
2.9 s: it is the bulk, so this says what it is made of:

- the job's prefill as the loop runs it (median of --repeats), and each group alone: rows, padded positions, seconds
  and the TFLOPS of its linear layers (2 x parameters x positions: what a prefill must compute);
- the same with --group-tokens other than the default (`quant.ragged.GROUP_TOKENS`): larger groups, fewer forwards;
- cuBLAS alone on the layer's seven projections at 16,384 rows: the rate the linear layers could reach here;
- torch.profiler over one prefill: GPU time by kind of kernel (matmul, attention, the rest), and the GPU's busy share;
- with --compiled-layers, each decoder layer compiled with dynamic shapes (torch.compile(dynamic=True)) and the prefill
  timed again (its compile timed apart): what fusing the small ops would save.

    python bench/prefill_profile.py --shape 8b --out bench/results                      # the GPU run
    python bench/prefill_profile.py --shape 1b-4layers --device-map cpu --prompts 8 --max-prompt-tokens 200 \\
        --repeats 1 --out /tmp/prefill                                                  # a CPU check of the script
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.batch_engines import ragged_prompts  # noqa: E402
from bench.common import (REQUIRED, WORK, bench_parser, gpu_kernels, kernel_kind, result_stem,  # noqa: E402
                          write_results)
from bench.llama_shapes import build_checkpoint  # noqa: E402
from quant import ragged  # noqa: E402
from quant.decode import DecodeLoop  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.methods import QuantOptions  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def linear_parameters(model) -> int:
    """Parameters the prefill's positions go through (the decoder's linear layers; not the embedding, and the head
    runs on one position a row)."""
    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head"))


def batch_inputs(tokenizer, prompts: list[str], device: torch.device):
    """The left-padded batch and its position ids, as generate hands them to the decode loop."""
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    mask = encoded["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return encoded["input_ids"], mask, positions


def time_prefill(loop: DecodeLoop, ids, mask, positions, repeats: int) -> list[float]:
    seconds = []
    with torch.inference_mode():
        for _ in range(repeats):
            sync(loop.device)
            started = time.perf_counter()
            loop._prefill(ids, mask, positions)
            sync(loop.device)
            seconds.append(time.perf_counter() - started)
    return seconds


def time_groups(model, ids, mask, device, parameters: int) -> list[dict]:
    """Each group's forward alone (synchronized around it): its rows, positions and rate."""
    rows = []
    with torch.inference_mode():
        sync(device)
        started = time.perf_counter()
        for group, placement, parts in ragged._prefilled_groups(model, ids, mask, None):
            sync(device)
            now = time.perf_counter()
            span = parts[0].keys.shape[-2]
            positions = len(group) * span
            rows.append({"rows": len(group), "longest": span + 1, "positions": positions,
                         "real_positions": len(placement.local), "seconds": now - started,
                         "linear_tflops": 2 * parameters * positions / (now - started) / 1e12})
            started = time.perf_counter()
    return rows


def cublas_rate(model, device, rows: int = 16384) -> dict:
    """cuBLAS on one decoder layer's projections at `rows` positions, in the weights' dtype: seconds a layer, TFLOPS."""
    layer = model.model.layers[0]
    weights = [m.weight for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    if any(w.dtype not in (torch.float16, torch.bfloat16, torch.float32) for w in weights):
        return {"skipped": "quantized weights"}
    x = {w.shape[1]: torch.randn(rows, w.shape[1], device=device, dtype=w.dtype) for w in weights}
    with torch.inference_mode():
        for _ in range(3):
            for w in weights:
                torch.nn.functional.linear(x[w.shape[1]], w)
        sync(device)
        started = time.perf_counter()
        for _ in range(10):
            for w in weights:
                torch.nn.functional.linear(x[w.shape[1]], w)
        sync(device)
    seconds = (time.perf_counter() - started) / 10
    flops = 2 * rows * sum(w.numel() for w in weights)
    return {"rows": rows, "seconds_per_layer": seconds, "tflops": flops / seconds / 1e12}


def profile_prefill(loop: DecodeLoop, ids, mask, positions) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loop.device.type == "cuda" else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        sync(loop.device)
        started = time.perf_counter()
        loop._prefill(ids, mask, positions)
        sync(loop.device)
        wall = time.perf_counter() - started
    by_kind: dict[str, float] = {}
    kernels = []
    for event in gpu_kernels(prof.key_averages()) if loop.device.type == "cuda" else []:
        kind = kernel_kind(event.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + event.self_device_time_total / 1e6
        kernels.append({"kernel": event.key[:120], "kind": kind, "seconds": event.self_device_time_total / 1e6,
                        "calls": event.count})
    kernels.sort(key=lambda k: -k["seconds"])
    cpu_ops = sorted(({"op": e.key, "cpu_seconds": e.cpu_time_total / 1e6, "calls": e.count}
                      for e in prof.key_averages() if e.key.startswith("aten::")),
                     key=lambda o: -o["cpu_seconds"])[:15]
    busy = sum(by_kind.values())
    return {"wall_seconds": wall, "gpu_seconds_by_kind": by_kind, "gpu_busy_seconds": busy,
            "gpu_busy_share": busy / wall if wall else None, "top_kernels": kernels[:25], "top_cpu_ops": cpu_ops}


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, shape="8b", mode="bf16",
                          device_map="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--min-prompt-tokens", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=1000)
    parser.add_argument("--new-tokens", type=int, default=128, help="the reply length the static cache is sized for")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group-tokens", default="8192,32768,65536",
                        help="other group sizes to time the prefill with (comma-separated; the default's is always)")
    parser.add_argument("--compiled-layers", action="store_true",
                        help="also time it with each decoder layer compiled with dynamic shapes (last)")
    args = parser.parse_args()
    os.environ["QUANT_FAST_GENERATION"] = "off"  # the eager model: the loop below is built by hand
    device = "cuda" if args.device_map != "cpu" and torch.cuda.is_available() else "cpu"
    source = build_checkpoint(args.shape, args.work / f"llama-{args.shape}", device=device)
    registry = ModelRegistry(max_models=1)
    loaded = registry.load(LoadRequest(model=str(source), mode=args.mode, options=QuantOptions(),
                                       device_map=args.device_map))
    model = loaded.model
    device = next(model.parameters()).device
    prompts = ragged_prompts(loaded.tokenizer, args.prompts, args.min_prompt_tokens, args.max_prompt_tokens)
    ids, mask, positions = batch_inputs(loaded.tokenizer, prompts, device)
    cache_len = -(-(ids.shape[1] + args.new_tokens) // 256) * 256
    loop = DecodeLoop(model, batch_size=ids.shape[0], max_cache_len=cache_len, forward=model, device=device)
    with torch.inference_mode():
        loop._prefill(ids[:, :2], None, None)  # the cache's tensors exist from its first update
    parameters = linear_parameters(model)
    data = {"source": str(source), "mode": args.mode, "attn_implementation": model.config._attn_implementation,
            "prompts": len(prompts), "padded_width": ids.shape[1], "prompt_tokens": int(mask.sum()),
            "cache_tokens": cache_len, "linear_parameters": parameters,
            "default_group_tokens": ragged.GROUP_TOKENS, "grouped": loop.prefills_in_groups}
    print(f"{len(prompts)} prompts, {data['prompt_tokens']} tokens, padded to {ids.shape[1]}", flush=True)
    time_prefill(loop, ids, mask, positions, 1)  # warm-up
    data["prefill_seconds"] = time_prefill(loop, ids, mask, positions, args.repeats)
    print(f"prefill {statistics.median(data['prefill_seconds']):.3f} s", flush=True)
    data["groups"] = time_groups(model, ids, mask, device, parameters)
    with torch.inference_mode():
        sync(device)
        started = time.perf_counter()
        model(input_ids=ids[:, -1:], attention_mask=loop.mask, position_ids=positions[:, -1:],
              past_key_values=loop.cache, use_cache=True, logits_to_keep=1)
        sync(device)
    data["last_column_seconds"] = time.perf_counter() - started
    data["group_tokens"] = {}
    default = ragged.GROUP_TOKENS
    for tokens in [int(t) for t in args.group_tokens.split(",") if t]:
        ragged.GROUP_TOKENS = tokens
        time_prefill(loop, ids, mask, positions, 1)
        data["group_tokens"][tokens] = time_prefill(loop, ids, mask, positions, args.repeats)
        print(f"group tokens {tokens}: {statistics.median(data['group_tokens'][tokens]):.3f} s", flush=True)
    ragged.GROUP_TOKENS = default
    if device.type == "cuda":
        data["cublas"] = cublas_rate(model, device)
    data["profile"] = profile_prefill(loop, ids, mask, positions)
    if args.compiled_layers:
        for layer in model.model.layers:
            layer.compile(dynamic=True)
        started = time.perf_counter()
        time_prefill(loop, ids, mask, positions, 1)
        data["compiled_layers_first_seconds"] = time.perf_counter() - started
        data["compiled_layers_seconds"] = time_prefill(loop, ids, mask, positions, args.repeats)
        data["compiled_layers_profile"] = profile_prefill(loop, ids, mask, positions)
        print(f"compiled layers: {statistics.median(data['compiled_layers_seconds']):.3f} s "
              f"(first {data['compiled_layers_first_seconds']:.1f} s)", flush=True)
    write_results(args.out, result_stem("prefill-profile", args.shape, args.mode, tag=args.tag), data, markdown)


def markdown(data: dict) -> str:
    gpu = data["machine"]["gpu"] or "CPU"
    median = statistics.median(data["prefill_seconds"])
    linear = 2 * data["linear_parameters"] * data["prompt_tokens"] / 1e12
    lines = [f"# A Batch job's prefill, {data['mode']}, on {gpu} ({data['source']})", "",
             f"{data['prompts']} prompts, {data['prompt_tokens']:,} prompt tokens, padded to {data['padded_width']}; "
             f"static cache {data['cache_tokens']} tokens; attention {data['attn_implementation']}; prefilled in "
             f"groups: {data['grouped']}. The linear layers' work for the prompt tokens: {linear:,.1f} TFLOP.", "",
             f"- The loop's prefill (groups of at most {data['default_group_tokens']:,} positions, then the last "
             "column): "
             f"**{median:.3f} s** (median of {len(data['prefill_seconds'])}), {linear / median:,.1f} TFLOPS of "
             f"linear work; the last column alone {data['last_column_seconds']:.3f} s."]
    for tokens, seconds in data["group_tokens"].items():
        lines.append(f"- Groups of at most {int(tokens):,} positions: {statistics.median(seconds):.3f} s")
    if "cublas" in data and "tflops" in data["cublas"]:
        c = data["cublas"]
        lines.append(f"- cuBLAS alone, one layer's seven projections at {c['rows']:,} rows: {c['tflops']:,.0f} TFLOPS "
                     f"({c['seconds_per_layer'] * 1e3:.2f} ms a layer): the linear work at that rate takes "
                     f"{linear / c['tflops']:.3f} s.")
    if "compiled_layers_seconds" in data:
        lines.append(f"- Decoder layers compiled with dynamic shapes: "
                     f"**{statistics.median(data['compiled_layers_seconds']):.3f} s** (the first prefill, compiling, "
                     f"{data['compiled_layers_first_seconds']:.1f} s)")
    lines += ["", "Groups (each forward alone):", "", "| rows | longest | positions | real | s | linear TFLOPS |",
              "|---|---|---|---|---|---|"]
    for g in data["groups"]:
        lines.append(f"| {g['rows']} | {g['longest']} | {g['positions']:,} | {g['real_positions']:,} | "
                     f"{g['seconds']:.3f} | {g['linear_tflops']:,.1f} |")
    for key, title in (("profile", "Profile of one prefill"), ("compiled_layers_profile", "Profile, compiled layers")):
        if key not in data:
            continue
        p = data[key]
        kinds = ", ".join(f"{kind} {s:.3f} s" for kind, s in sorted(p["gpu_seconds_by_kind"].items(),
                                                                      key=lambda kv: -kv[1]))
        share = f"{p['gpu_busy_share']:.0%}" if p["gpu_busy_share"] is not None else "n/a"
        lines += ["", f"{title}: wall {p['wall_seconds']:.3f} s (profiled), GPU busy {p['gpu_busy_seconds']:.3f} s "
                  f"({share}); {kinds or 'no GPU kernels'}.", "", "| kernel | kind | s | calls |", "|---|---|---|---|"]
        for k in p["top_kernels"][:15]:
            lines.append(f"| `{k['kernel']}` | {k['kind']} | {k['seconds']:.3f} | {k['calls']} |")
        lines += ["", "| CPU op | s | calls |", "|---|---|---|"]
        for o in p["top_cpu_ops"][:10]:
            lines.append(f"| {o['op']} | {o['cpu_seconds']:.3f} | {o['calls']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
