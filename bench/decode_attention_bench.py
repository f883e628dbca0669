"""One-token decode attention over a static KV cache, one layer of the Llama-8B shape (32 query heads on 8 KV heads of
128): the compiled decode step's matmuls over every slot (quant.attention.packed_gqa_sdpa, compiled by Inductor as
the step is) against quant.decode_attention's Triton kernel, which reads only the slots each row may attend to.
GPU time of one call inside a CUDA graph (caches cycled past the L2 cache), by rows, cache slots and how full the
rows are: "full" (every slot attended) and "ragged" (issue 26's goal job: prompts of 16-1,000 tokens, drawn uniformly,
seeded, 64 tokens into their replies, left-padded as a padded batch holds them). Also the largest difference between
the two outputs (bf16).

    python bench/decode_attention_bench.py --out bench/results
"""

from __future__ import annotations

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


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_attention_bench needs a CUDA GPU")
    refusal = decode_attention.refusal()
    if refusal:
        sys.exit(f"the Triton kernel cannot run here: {refusal}")
    generator = torch.Generator().manual_seed(0)
    layer = _Layer()
    matmuls = torch.compile(lambda q, k, v, mask: packed_gqa_sdpa(layer, q, k, v, mask, scaling=DIM ** -0.5)[0],
                            fullgraph=True, dynamic=False)
    kernel = decode_attention.decode_attention_op()
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    for slots in SLOTS:
        for rows in ROWS:
            cache_bytes = 2 * rows * KV_HEADS * slots * DIM * 2
            copies = copies_past_l2(cache_bytes)
            caches = [tuple(torch.randn(rows, KV_HEADS, slots, DIM, generator=generator).to(torch.bfloat16).cuda()
                            for _ in range(2)) for _ in range(copies)]
            query = torch.randn(rows, HEADS, 1, DIM, generator=generator).to(torch.bfloat16).cuda()
            for fill in ("full", "ragged"):
                allowed = allowed_slots(rows, slots, fill).cuda()
                mask = allowed[:, None, None, :]
                folded = query.reshape(rows, KV_HEADS, HEADS // KV_HEADS, DIM)
                want = matmuls(query, *caches[0], mask).float()
                got = kernel(folded, *caches[0], allowed, DIM ** -0.5)
                got = got.reshape(rows, HEADS, 1, DIM).transpose(1, 2).float()
                attended = allowed.float().mean().item()
                row = {"slots": slots, "rows": rows, "fill": fill, "attended": attended,
                       "matmul_ms": graph_ms(lambda k, v: matmuls(query, k, v, mask), caches),
                       "kernel_ms": graph_ms(lambda k, v: kernel(folded, k, v, allowed, DIM ** -0.5), caches),
                       "max_difference": (got - want).abs().max().item(), "cache_mb": cache_bytes / 1e6}
                summary["rows"].append(row)
                print(f"{slots} slots, {rows} rows, {fill} ({attended:.0%} attended): matmuls {row['matmul_ms']:.4f} "
                      f"ms, kernel {row['kernel_ms']:.4f} ms, difference {row['max_difference']:.3g}", flush=True)
            del caches
    write_results(args.out, result_stem("decode-attention", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# One-token decode attention, one Llama-8B layer, {summary['device']}", "",
             f"torch {summary['torch']}; {HEADS} query heads on {KV_HEADS} KV heads of {DIM}; bf16; GPU time of one "
             "call inside a CUDA graph (caches cycled past the L2 cache), ms. matmuls: quant.attention.packed_gqa_sdpa "
             "compiled by Inductor (reads every slot); kernel: quant.decode_attention (reads the attended slots). "
             "Bandwidth: the bytes each reads (all the cache; the attended slots) per second.", "",
             "| slots | rows | fill | attended | cache MB | matmuls ms | GB/s | kernel ms | GB/s | kernel / matmuls | "
             "max difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        matmul_rate = r["cache_mb"] / 1e3 / (r["matmul_ms"] / 1e3)
        kernel_rate = r["cache_mb"] * r["attended"] / 1e3 / (r["kernel_ms"] / 1e3)
        lines.append(f"| {r['slots']} | {r['rows']} | {r['fill']} | {r['attended']:.0%} | {r['cache_mb']:.0f} | "
                     f"{r['matmul_ms']:.4f} | {matmul_rate:,.0f} | {r['kernel_ms']:.4f} | {kernel_rate:,.0f} | "
                     f"{r['kernel_ms'] / r['matmul_ms']:.2f}x | {r['max_difference']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
