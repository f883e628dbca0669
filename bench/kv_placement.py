"""How fast does the grouped prefill lay a group's keys and values into the batch's static cache: torch's indexing
(quant.ragged.Placement.copy's default: a gather of the group's real positions, then an index_put through transposed
views) and quant.kv_placement's kernel (QUANT_KV_PLACEMENT=triton: one program per position), against a plain copy of
the same bytes? GPU time with CUDA events, for the 8B shape's KV heads and groups like the
goal job's (issue 26: 128 prompts of 16-1,000 tokens into a 1,280-slot cache).

Why: in the bf16 goal job (3.4 s) the "copy" and "other" kernel kinds took 0.14 s and 0.17 s
(bench/results/batch-engines-8b-compiled-prefill-l2.md); each group's placement runs twice (keys, values) for every
layer, and a gather + index_put of 256-byte rows may run far below the bandwidth a contiguous copy reaches. If it
does, a kernel that copies whole head rows is worth writing; if not, the time is elsewhere.

    python bench/kv_placement.py --out bench/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402
from bench.int4mm_shapes import timed_ms  # noqa: E402 - CUDA events around each call, the median

GROUPS = ((64, 64), (16, 256), (8, 512), (4, 1000))
"""(rows, span) of a group: short prompts in wide groups, long ones in narrow ones (at most ~4,096 positions)."""


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--slots", type=int, default=1280)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("kv_placement needs a CUDA GPU")
    from quant import kv_placement
    from quant.ragged import Placement

    kernel_refusal = kv_placement.CHECK.reason()

    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(args.batch, args.heads, args.slots, args.dim, dtype=torch.bfloat16, device=device)
    rows = []
    for group_rows, span in GROUPS:
        counts = torch.randint(span // 2, span + 1, (group_rows,), generator=generator).tolist()
        counts[0] = span  # the group's longest fills it
        index = torch.randperm(args.batch, generator=generator)[:group_rows].to(device)
        placement = Placement.of(index, counts, args.slots + 1)
        # as the attention hands keys over: [rows, heads, span, dim], a transposed view of [rows, span, heads, dim]
        source = torch.randn(group_rows, span, args.heads, args.dim, generator=generator).to(
            torch.bfloat16).to(device).transpose(1, 2)
        kv_placement.torch_place(source, target, placement.local, placement.column, placement.row, placement.slot)
        moved = sum(counts) * args.heads * args.dim * 2  # bytes of the real positions
        expected = source.transpose(1, 2)[placement.local, placement.column]
        assert torch.equal(target.transpose(1, 2)[placement.row, placement.slot], expected)
        plain_source = torch.empty(moved // 2, dtype=torch.bfloat16, device=device)
        plain_target = torch.empty_like(plain_source)
        indices = (placement.local, placement.column, placement.row, placement.slot)
        placement_ms = timed_ms(lambda _: kv_placement.torch_place(source, target, *indices), 1)
        plain_ms = timed_ms(lambda _: plain_target.copy_(plain_source), 1)
        row = {"rows": group_rows, "span": span, "positions": sum(counts), "bytes": moved,
               "placement_ms": placement_ms, "plain_copy_ms": plain_ms,
               "placement_gb_s": moved * 2 / placement_ms / 1e6, "plain_gb_s": moved * 2 / plain_ms / 1e6}
        if kernel_refusal is None:
            checked = target.clone()
            kv_placement.place(source, checked, *indices)
            assert torch.equal(checked, target), "the kernel placed other values than torch's indexing"
            row["kernel_ms"] = timed_ms(lambda _: kv_placement.place(source, target, *indices), 1)
            row["kernel_gb_s"] = moved * 2 / row["kernel_ms"] / 1e6
        rows.append(row)
        print(rows[-1], flush=True)
    write_results(args.out, result_stem("kv-placement", tag=args.tag),
                  {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": args.batch,
                   "slots": args.slots, "heads": args.heads, "dim": args.dim, "kernel_refusal": kernel_refusal,
                   "rows": rows}, markdown)


def markdown(data: dict) -> str:
    lines = [f"# The grouped prefill's key/value placement against a plain copy, {data['device']}", "",
             f"torch {data['torch']}; a group's keys (or values) into a [{data['batch']}, {data['heads']}, "
             f"{data['slots']}, {data['dim']}] bf16 static cache (quant.ragged.Placement.copy's two ways), GPU time "
             "with CUDA events; GB/s = bytes read + written of the real positions over the time. The goal job places "
             "each group twice (keys, values) for each of 32 layers.", "",
             "| group rows x span | positions | torch's indexing ms | GB/s | quant.kv_placement ms | GB/s "
             "| plain copy ms | GB/s |", "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        kernel = (f"{r['kernel_ms']:.4f} | {r['kernel_gb_s']:.0f}" if "kernel_ms" in r
                  else f"{data.get('kernel_refusal') or 'n/a'} | -")
        lines.append(f"| {r['rows']} x {r['span']} | {r['positions']} | {r['placement_ms']:.4f} | "
                     f"{r['placement_gb_s']:.0f} | {kernel} | {r['plain_copy_ms']:.4f} | {r['plain_gb_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
