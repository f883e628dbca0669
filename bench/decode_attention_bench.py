"""One-token decode attention over a static KV cache, one layer of the Llama-8B shape (32 query heads on 8 KV heads of
128): the compiled decode step's matmuls over every slot (quant.attention.packed_gqa_sdpa) against
quant.decode_attention's Triton kernel, which reads only the slots each row may attend to, each compiled by Inductor as
the decode step compiles it. GPU time of one call inside a CUDA graph (caches cycled past the L2 cache), by rows,
cache slots and how full the rows are: "full" (every slot attended) and "ragged" (issue 26's goal job: prompts of
16-1,000 tokens, drawn uniformly, seeded, 64 tokens into their replies, left-padded as a padded batch holds them).
Also the largest difference between the two outputs (bf16).

With --sweep, the kernel's launch settings (quant.decode_attention.KernelConfig: chunk size, warps, pipeline stages,
masked or whole-chunk loads, programs per multiprocessor) are first timed at the goal's case (128 ragged rows, 1,280
slots; the op called eagerly, the same work around the kernel for every setting), the fastest few compiled over the
whole table, and the fastest of those is the table's kernel. Its `min_rows` is the fewest rows from which the kernel
takes at most 1.05x the matmuls' time everywhere in the table at that row count and above. The result is written as the
setting, `<stem>.env` (QUANT_DECODE_ATTENTION_KERNEL=...), for a plan's next step.

    python bench/decode_attention_bench.py --out bench/results [--sweep]
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4_dequant_blocks import graph_ms  # noqa: E402
from quant import decode_attention  # noqa: E402
from quant.attention import packed_gqa_sdpa  # noqa: E402

HEADS, KV_HEADS, DIM = 32, 8, 128
ROWS = (1, 32, 128)
SLOTS = (1280, 2048)
NOISE = 1.05
"""Timing differences within this ratio count as a tie (one call of 0.01 ms at one row varies by more)."""


class _Layer(torch.nn.Module):
    num_key_value_groups = HEADS // KV_HEADS


def allowed_slots(rows: int, slots: int, fill: str, seed: int = 0) -> torch.Tensor:
    """[rows, slots] bool: every slot, or each row's prompt + 64 reply tokens at the end (left padding)."""
    if fill == "full":
        return torch.ones(rows, slots, dtype=torch.bool)
    randomness = random.Random(seed)
    lengths = [min(slots, randomness.randint(16, 1000) + 64) for _ in range(rows)]
    position = torch.arange(slots)
    return torch.stack([position >= slots - length for length in lengths])


def sweep_configs() -> list[decode_attention.KernelConfig]:
    return [decode_attention.KernelConfig(block=block, warps=warps, stages=stages, masked_loads=masked,
                                          programs_per_sm=programs)
            for block in (32, 64, 128) for warps in (4, 8) for stages in (1, 2, 3, 4) for masked in (True, False)
            for programs in (2, 8, 16)]


def make_caches(rows: int, slots: int, generator) -> tuple[list, torch.Tensor, float]:
    cache_bytes = 2 * rows * KV_HEADS * slots * DIM * 2
    caches = [tuple(torch.randn(rows, KV_HEADS, slots, DIM, generator=generator).to(torch.bfloat16).cuda()
                    for _ in range(2)) for _ in range(copies_past_l2(cache_bytes))]
    query = torch.randn(rows, HEADS, 1, DIM, generator=generator).to(torch.bfloat16).cuda()
    return caches, query, cache_bytes


def sweep(generator) -> list[dict]:
    """Every launch setting at the goal's case, the op called eagerly: [{setting, ms}] fastest first."""
    caches, query, _ = make_caches(128, 1280, generator)
    allowed = allowed_slots(128, 1280, "ragged").cuda()
    folded = query.reshape(128, KV_HEADS, HEADS // KV_HEADS, DIM)
    timed = []
    for config in sweep_configs():
        try:
            ms = graph_ms(lambda k, v: decode_attention.decode_attention_eagerly(folded, k, v, allowed, DIM ** -0.5,
                                                                                 config=config), caches)
        except Exception as exc:  # noqa: BLE001  (a setting Triton cannot compile, e.g. out of shared memory)
            print(f"{config.setting()}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        timed.append({"setting": config.setting(), "ms": ms})
        print(f"{config.setting()}: {ms:.4f} ms", flush=True)
    del caches
    return sorted(timed, key=lambda row: row["ms"])


def compiled_kernel(config: decode_attention.KernelConfig):
    """The op compiled by Inductor with `config` (the op reads its setting when it is traced)."""
    os.environ[decode_attention.CONFIG_VARIABLE] = config.setting()
    torch._dynamo.reset()
    kernel = decode_attention.decode_attention_op()
    return torch.compile(lambda q, k, v, allowed: kernel(q, k, v, allowed, DIM ** -0.5), fullgraph=True,
                         dynamic=False)


def table(configs: list[decode_attention.KernelConfig], generator) -> list[dict]:
    """The matmuls and each config's compiled kernel at every rows x slots x fill."""
    layer = _Layer()
    found = []
    for slots in SLOTS:
        for rows in ROWS:
            caches, query, cache_bytes = make_caches(rows, slots, generator)
            folded = query.reshape(rows, KV_HEADS, HEADS // KV_HEADS, DIM)
            for fill in ("full", "ragged"):
                allowed = allowed_slots(rows, slots, fill).cuda()
                mask = allowed[:, None, None, :]
                torch._dynamo.reset()
                matmuls = torch.compile(lambda q, k, v, m: packed_gqa_sdpa(layer, q, k, v, m, scaling=DIM ** -0.5)[0],
                                        fullgraph=True, dynamic=False)
                want = matmuls(query, *caches[0], mask).float()
                row = {"slots": slots, "rows": rows, "fill": fill, "attended": allowed.float().mean().item(),
                       "cache_mb": cache_bytes / 1e6,
                       "matmul_ms": graph_ms(lambda k, v: matmuls(query, k, v, mask), caches), "kernels": {}}
                for config in configs:
                    kernel = compiled_kernel(config)
                    got = kernel(folded, *caches[0], allowed).reshape(rows, HEADS, 1, DIM).transpose(1, 2).float()
                    row["kernels"][config.setting()] = {
                        "ms": graph_ms(lambda k, v: kernel(folded, k, v, allowed), caches),
                        "max_difference": (got - want).abs().max().item()}
                found.append(row)
                print(f"{slots} slots, {rows} rows, {fill} ({row['attended']:.0%} attended): matmuls "
                      f"{row['matmul_ms']:.4f} ms, kernels " +
                      ", ".join(f"{v['ms']:.4f}" for v in row["kernels"].values()), flush=True)
            del caches
    return found


def min_rows(rows: list[dict], setting: str) -> int | None:
    """The fewest rows from which the kernel takes at most NOISE x the matmuls' time at every slots and fill of that
    row count and every larger one (ragged caches at batch 128 are what it is for; a full cache is the matmuls' best
    case, where the two should tie)."""
    worst = {}
    for r in rows:
        worst[r["rows"]] = max(worst.get(r["rows"], 0.0), r["kernels"][setting]["ms"] / r["matmul_ms"])
    chosen = None
    for count in sorted(worst, reverse=True):
        if worst[count] > NOISE:
            break
        chosen = count
    return chosen


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--sweep", action="store_true", help="time the kernel's launch settings first (see above)")
    parser.add_argument("--finalists", type=int, default=4, help="the sweep's fastest settings compiled over the table")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_attention_bench needs a CUDA GPU")
    refusal = decode_attention.refusal()
    if refusal:
        sys.exit(f"the Triton kernel cannot run here: {refusal}")
    generator = torch.Generator().manual_seed(0)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "default": decode_attention.KernelConfig().setting()}
    configs = [decode_attention.configured()]
    if args.sweep:
        summary["sweep"] = sweep(generator)
        configs = [decode_attention.KernelConfig.parse(row["setting"]) for row in summary["sweep"][:args.finalists]]
    summary["rows"] = table(configs, generator)
    goal = [r for r in summary["rows"] if r["rows"] == ROWS[-1] and r["slots"] == SLOTS[0] and r["fill"] == "ragged"]
    best = min(goal[0]["kernels"], key=lambda setting: goal[0]["kernels"][setting]["ms"])
    summary["best"] = best
    summary["min_rows"] = min_rows(summary["rows"], best)
    stem = result_stem("decode-attention", tag=args.tag)
    write_results(args.out, stem, summary, markdown)
    if summary["min_rows"] is not None:
        chosen = dataclasses.replace(decode_attention.KernelConfig.parse(best), min_rows=summary["min_rows"])
        (args.out / f"{stem}.env").write_text(f"{decode_attention.CONFIG_VARIABLE}={chosen.setting()}\n")
        print(f"{decode_attention.CONFIG_VARIABLE}={chosen.setting()}")
    else:
        print(f"at {ROWS[-1]} rows the kernel takes more than {NOISE}x the matmuls' time somewhere: no setting written")


def markdown(summary: dict) -> str:
    best = summary["best"]
    lines = [f"# One-token decode attention, one Llama-8B layer, {summary['device']}", "",
             f"torch {summary['torch']}; {HEADS} query heads on {KV_HEADS} KV heads of {DIM}; bf16; GPU time of one "
             "call inside a CUDA graph (caches cycled past the L2 cache), ms, each compiled by Inductor. matmuls: "
             "quant.attention.packed_gqa_sdpa (reads every slot); kernel: quant.decode_attention (reads the attended "
             f"slots) with `{best}`. Bandwidth: the bytes each reads (all the cache; the attended slots) per "
             "second. " + (f"From {summary['min_rows']} rows up the kernel takes at most {NOISE}x the matmuls' time "
                           f"everywhere: min_rows={summary['min_rows']}." if summary["min_rows"] else
                           f"At {ROWS[-1]} rows the kernel takes more than {NOISE}x the matmuls' time somewhere."), "",
             "| slots | rows | fill | attended | cache MB | matmuls ms | GB/s | kernel ms | GB/s | kernel / matmuls | "
             "max difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        kernel = r["kernels"][best]
        matmul_rate = r["cache_mb"] / 1e3 / (r["matmul_ms"] / 1e3)
        kernel_rate = r["cache_mb"] * r["attended"] / 1e3 / (kernel["ms"] / 1e3)
        lines.append(f"| {r['slots']} | {r['rows']} | {r['fill']} | {r['attended']:.0%} | {r['cache_mb']:.0f} | "
                     f"{r['matmul_ms']:.4f} | {matmul_rate:,.0f} | {kernel['ms']:.4f} | {kernel_rate:,.0f} | "
                     f"{kernel['ms'] / r['matmul_ms']:.2f}x | {kernel['max_difference']:.3g} |")
    others = [setting for setting in summary["rows"][0]["kernels"] if setting != best]
    if others:
        lines += ["", "The sweep's other finalists, kernel / matmuls at each row of the table above, in its order:", ""]
        lines += [f"- `{setting}`: " + ", ".join(f"{r['kernels'][setting]['ms'] / r['matmul_ms']:.2f}x"
                                                   for r in summary["rows"]) for setting in others]
    if summary.get("sweep"):
        lines += ["", f"Sweep at 128 ragged rows, 1,280 slots (op called eagerly; {len(summary['sweep'])} settings "
                      "that compiled), the ten fastest and the slowest:", "", "| setting | ms |", "|---|---|"]
        shown = summary["sweep"][:10] + summary["sweep"][-1:]
        lines += [f"| `{row['setting']}` | {row['ms']:.4f} |" for row in shown]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
