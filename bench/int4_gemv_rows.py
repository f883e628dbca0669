"""quant.int4_gemv's Triton kernel against tinygemm and cuBLAS bf16 at 1-8 rows on the Llama-8B projection shapes,
GPU time of one call inside a CUDA graph (weights cycled past the L2 cache, as bench/machete_rows.py measures), and
a sweep of its blocks (ROWS, TILES, SPLIT, warps) at one row, so that the default (`int4_gemv.block_for`) can be set
from a measurement.

Why: issue 27's GPTQ-class 4-bit at batch 1 >= 2.5x bf16 (1.44x): tinygemm took 2.42 ms for a decode step's four
projections of 32 layers on an H200 against bf16's 3.93 (bench/results/machete-rows.md), reading the 4-bit weights
at 28-40% of the bandwidth. Each row also reports the kernel's largest difference from x @ the dequantized weight and
the bandwidth it reached (packed words, scales and zeros read once).

    python bench/int4_gemv_rows.py --out bench/results
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4_dequant_blocks import graph_ms  # noqa: E402
from bench.int4_matmul_rows import SHAPES  # noqa: E402
from bench.int4mm_shapes import GROUP, packed_weight  # noqa: E402

ROWS = (1, 2, 4, 8)
LAYERS = 32
"""Llama-8B's decoder layers: a decode step runs each shape once per layer."""
SWEEP = [(rows, tiles, split, warps) for rows, tiles, split, warps in
         itertools.product((16, 32, 64), (1, 2, 4), (1, 2, 4, 8), (4, 8)) if rows * tiles * 4 // warps <= 64]
"""Blocks of at most 64 weights a thread a chunk: those of 128 spilled kilobytes of registers when compiled for
sm_90a (bench/results/kernel-registers-int4-gemv.md)."""


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts, comma-separated")
    parser.add_argument("--sweep", action="store_true", help="also time every block of SWEEP at one row")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("int4_gemv_rows needs a CUDA GPU")
    from quant import int4_dequant, int4_gemv

    gemv = int4_gemv.gemv_op()
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": [], "sweep": []}
    generator = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        copies = copies_past_l2(n * k // 2)
        int4 = [packed_weight(n, k, generator) for _ in range(copies)]
        bf16 = [(torch.randn(n, k, generator=generator).to(torch.bfloat16).cuda() * 0.02,) for _ in range(copies)]
        read_bytes = int4[0][0].nbytes + int4[0][1].nbytes
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for m in (int(r) for r in args.rows.split(",")):
            block = int4_gemv.block_for(n, int4[0][0].shape[1], sms, m)
            x = (torch.randn(m, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
            expected = F.linear(x.float(), int4_dequant.dequantize_op()(*int4[0], GROUP).float())
            got = gemv(x, *int4[0], GROUP).float()
            row = {"shape": name, "rows": m, "block": block,
                   "relative_difference": ((got - expected).abs().max() / expected.abs().max()).item(),
                   "bf16_ms": graph_ms(lambda w: F.linear(x, w), bf16),
                   "tinygemm_ms": graph_ms(lambda p, s: torch.ops.aten._weight_int4pack_mm(x, p, GROUP, s), int4),
                   "gemv_ms": graph_ms(lambda p, s: gemv(x, p, s, GROUP), int4)}
            row["gemv_tb_s"] = read_bytes / row["gemv_ms"] / 1e9
            row["tinygemm_tb_s"] = read_bytes / row["tinygemm_ms"] / 1e9
            summary["rows"].append(row)
            print(f"{name} rows {m}: bf16 {row['bf16_ms']:.4f}, tinygemm {row['tinygemm_ms']:.4f}, triton gemv "
                  f"{row['gemv_ms']:.4f} ms ({row['gemv_tb_s']:.2f} TB/s), diff {row['relative_difference']:.2g}",
                  flush=True)
        if args.sweep:
            x = (torch.randn(1, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
            for blk in SWEEP:
                try:
                    ms = graph_ms(lambda p, s: int4_gemv.gemv_eagerly(x, p, s, GROUP, block=blk), int4)
                    summary["sweep"].append({"shape": name, "block": blk, "ms": ms, "tb_s": read_bytes / ms / 1e9})
                except Exception as exc:  # noqa: BLE001 - a block Triton cannot build (registers) is noted
                    summary["sweep"].append({"shape": name, "block": blk, "error": f"{type(exc).__name__}: "
                                                                                 f"{str(exc)[:200]}"})
            best = min((s for s in summary["sweep"] if s["shape"] == name and "ms" in s), key=lambda s: s["ms"])
            print(f"{name} sweep best {best}", flush=True)
    write_results(args.out, result_stem("int4-gemv-rows", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# quant.int4_gemv (Triton) against tinygemm and cuBLAS bf16 at 1-8 rows, {summary['device']}", "",
             f"torch {summary['torch']}; 4-bit, groups of {GROUP}; GPU time of one call inside a CUDA graph (weights "
             "cycled past the L2 cache), ms; TB/s: the packed weight with its scales and zeros over the time.", "",
             "| shape | rows | block (rows, tiles, split, warps) | bf16 cuBLAS | tinygemm | Triton GEMV "
             "| GEMV / tinygemm "
             "| GEMV TB/s | tinygemm TB/s | largest relative difference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['shape']} | {r['rows']} | {tuple(r['block'])} | {r['bf16_ms']:.4f} | "
                     f"{r['tinygemm_ms']:.4f} | {r['gemv_ms']:.4f} | {r['gemv_ms'] / r['tinygemm_ms']:.2f}x | "
                     f"{r['gemv_tb_s']:.2f} | {r['tinygemm_tb_s']:.2f} | {r['relative_difference']:.2g} |")
    lines += ["", f"A decode step's four projections x {LAYERS} layers, ms (bf16 / tinygemm / Triton GEMV):", ""]
    for m in sorted({r["rows"] for r in summary["rows"]}):
        rows = [r for r in summary["rows"] if r["rows"] == m]
        step = {key: LAYERS * sum(r[key] for r in rows) for key in ("bf16_ms", "tinygemm_ms", "gemv_ms")}
        lines.append(f"- {m} rows: {step['bf16_ms']:.2f} / {step['tinygemm_ms']:.2f} / {step['gemv_ms']:.2f}")
    if summary["sweep"]:
        lines += ["", "Blocks at one row, the five fastest per shape (ms, TB/s):", ""]
        for name in dict.fromkeys(s["shape"] for s in summary["sweep"]):
            timed = sorted((s for s in summary["sweep"] if s["shape"] == name and "ms" in s), key=lambda s: s["ms"])
            failed = sum(1 for s in summary["sweep"] if s["shape"] == name and "error" in s)
            best = "; ".join(f"{tuple(s['block'])} {s['ms']:.4f} ({s['tb_s']:.2f})" for s in timed[:5])
            lines.append(f"- {name}: {best}" + (f"; {failed} blocks failed" if failed else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
