"""gptqmodel's Machete (a Hopper 4-bit x 16-bit GEMM on CUTLASS's mixed-input mainloop, from vLLM) by row count,
beside cuBLAS on a bf16 weight and the int4pack layer's two kernels, on the Llama-8B projection shapes, GPU time of
one call inside a CUDA graph (weights cycled past the L2 cache, as bench/int4_matmul_rows.py measures):

- `bf16`: cuBLAS on a bf16 weight of the same shape (what the goal compares with);
- `tinygemm` and `dequant`: what a GPTQ layer on int4pack runs below and from QUANT_INT4_DEQUANTIZE_ROWS rows;
- `machete`: `machete_mm` on the same kind of weight (4-bit symmetric, groups of 128, bf16 scales), after
  `machete_prepack_B` as gptqmodel's MacheteLinear prepares a GPTQ checkpoint, with its output's largest relative
  difference from x @ dequantized weight.

Why: issue 26's GPTQ >= bf16 in a batch job (0.85x) is lost in the decode steps at 128 rows, where int4pack
dequantizes every weight to bf16 for cuBLAS (bench/results/batch-engines-8b-gptq-profiled.md); Marlin was no faster
there. Machete is the 4-bit kernel built for Hopper's tensor cores at large batches. Its build needs CUTLASS
(bench/make_cutlass_subset.sh; GPTQMODEL_CUTLASS_DIR) and nvcc; the build time is reported, and a build or kernel that
fails is written in the result instead of the numbers.

    GPTQMODEL_CUTLASS_DIR=/tmp/cutlass python bench/machete_rows.py --out bench/results
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4_dequant_blocks import graph_ms  # noqa: E402
from bench.int4_matmul_rows import SHAPES  # noqa: E402
from bench.int4mm_shapes import GROUP, packed_weight  # noqa: E402

ROWS = (1, 16, 32, 64, 128, 256, 1024)
LAYERS = 32
"""Llama-8B's decoder layers: a decode step runs each shape once per layer."""


def machete_weight(n: int, k: int, generator: torch.Generator):
    """A random 4-bit symmetric weight [n, k] in groups of GROUP as Machete takes it, and its dequantized bf16 copy."""
    from gptqmodel.utils.machete import machete_prepack_B, pack_quantized_values_into_int32
    from gptqmodel.utils.marlin_scalar_type import scalar_types

    codes = torch.randint(0, 16, (k, n), generator=generator, dtype=torch.int32).cuda()  # [in, out], as GPTQ's
    scales = (torch.rand(k // GROUP, n, generator=generator) * 0.02 + 0.001).to(torch.bfloat16).cuda()
    packed = pack_quantized_values_into_int32(codes, scalar_types.uint4b8, packed_dim=0)
    packed = packed.t().contiguous().t()  # column-major, as MacheteLinear.post_init hands it over
    prepacked = machete_prepack_B(packed, a_type=torch.bfloat16, b_type=scalar_types.uint4b8,
                                  group_scales_type=torch.bfloat16)
    dequantized = ((codes - 8).float() * scales.float().repeat_interleave(GROUP, dim=0)).to(torch.bfloat16)
    return prepacked, scales, dequantized.t().contiguous()  # [out, in]


def machete_call(x: torch.Tensor, prepacked: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    from gptqmodel.utils.machete import machete_mm
    from gptqmodel.utils.marlin_scalar_type import scalar_types

    return machete_mm(a=x, b_q=prepacked, b_type=scalar_types.uint4b8, b_group_scales=scales, b_group_size=GROUP)


def build_machete() -> tuple[float, str]:
    """Seconds to build (or load from gptqmodel's cache) the Machete extension, and the error if it failed."""
    began = time.perf_counter()
    try:
        from gptqmodel.utils.machete import machete_extension_error, prewarm_machete_extension

        ok = prewarm_machete_extension()
        error = "" if ok else (machete_extension_error() or "the extension did not load")
    except Exception as exc:  # noqa: BLE001 - the result says what failed
        error = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - began, error.strip()[-2000:]


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts, comma-separated")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("machete_rows needs a CUDA GPU")
    from quant import int4_dequant

    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "cutlass": os.environ.get("GPTQMODEL_CUTLASS_DIR", ""), "rows": []}
    summary["build_seconds"], summary["build_error"] = build_machete()
    print(f"Machete build/load: {summary['build_seconds']:.1f} s {summary['build_error'] or 'ok'}", flush=True)
    generator = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        copies = copies_past_l2(n * k * 2)
        int4 = [packed_weight(n, k, generator) for _ in range(copies)]
        bf16 = [(torch.randn(n, k, generator=generator).to(torch.bfloat16).cuda() * 0.02,) for _ in range(copies)]
        machete, machete_error = [], summary["build_error"]
        if not machete_error:
            try:
                machete = [machete_weight(n, k, generator) for _ in range(copies)]
            except Exception as exc:  # noqa: BLE001
                machete_error = f"prepack: {type(exc).__name__}: {exc}"
        for m in (int(r) for r in args.rows.split(",")):
            x = (torch.randn(m, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
            row = {"shape": name, "rows": m,
                   "bf16_ms": graph_ms(lambda w: F.linear(x, w), bf16),
                   "tinygemm_ms": graph_ms(lambda p, s: torch.ops.aten._weight_int4pack_mm(x, p, GROUP, s), int4),
                   "dequant_ms": graph_ms(lambda p, s: F.linear(x, int4_dequant.dequantize_op()(p, s, GROUP)), int4)}
            if machete and not machete_error:
                try:
                    got = machete_call(x, *machete[0][:2]).float()
                    expected = F.linear(x, machete[0][2]).float()
                    row["machete_relative_difference"] = ((got - expected).abs().max()
                                                          / expected.abs().max().clamp_min(1e-6)).item()
                    row["machete_ms"] = graph_ms(lambda p, s, _: machete_call(x, p, s), machete)
                except Exception as exc:  # noqa: BLE001
                    machete_error = f"rows {m}: {type(exc).__name__}: {str(exc)[:500]}"
            if machete_error:
                row["machete_error"] = machete_error
            summary["rows"].append(row)
            print(f"{name} rows {m}: bf16 {row['bf16_ms']:.4f}, tinygemm {row['tinygemm_ms']:.4f}, dequant "
                  f"{row['dequant_ms']:.4f}, machete {row.get('machete_ms', float('nan')):.4f} ms "
                  f"{row.get('machete_error', '')}", flush=True)
    write_results(args.out, result_stem("machete-rows", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# Machete against cuBLAS bf16 and int4pack by row count, {summary['device']}", "",
             f"torch {summary['torch']}; 4-bit, groups of {GROUP}; GPU time of one call inside a CUDA graph (weights "
             f"cycled past the L2 cache), ms. CUTLASS: `{summary['cutlass'] or 'gptqmodel default'}`. Machete "
             f"build or load: {summary['build_seconds']:.1f} s"
             + (f", **failed**: `{summary['build_error']}`" if summary["build_error"] else "") + ".", "",
             "| shape | rows | bf16 cuBLAS | tinygemm | dequant + cuBLAS | Machete | Machete / bf16 | best int4pack / "
             "bf16 | Machete's largest relative difference |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        best = min(r["tinygemm_ms"], r["dequant_ms"])
        machete = (f"{r['machete_ms']:.4f} | {r['machete_ms'] / r['bf16_ms']:.2f}x" if "machete_ms" in r
                   else f"{r.get('machete_error', 'n/a')[:80]} | -")
        difference = f"{r['machete_relative_difference']:.2g}" if "machete_relative_difference" in r else "-"
        lines.append(f"| {r['shape']} | {r['rows']} | {r['bf16_ms']:.4f} | {r['tinygemm_ms']:.4f} | "
                     f"{r['dequant_ms']:.4f} | {machete} | {best / r['bf16_ms']:.2f}x | {difference} |")
    lines += ["", f"A decode step's four projections x {LAYERS} layers, ms (bf16 / best int4pack / Machete):", ""]
    for m in sorted({r["rows"] for r in summary["rows"]}):
        rows = [r for r in summary["rows"] if r["rows"] == m]
        step = {key: LAYERS * sum(r[key] for r in rows) for key in ("bf16_ms",)}
        best = LAYERS * sum(min(r["tinygemm_ms"], r["dequant_ms"]) for r in rows)
        machete = (f"{LAYERS * sum(r['machete_ms'] for r in rows):.2f}" if all("machete_ms" in r for r in rows)
                   else "n/a")
        lines.append(f"- {m} rows: {step['bf16_ms']:.2f} / {best:.2f} / {machete}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
