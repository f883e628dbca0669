"""The int4pack layer's kernels by row count, GPU time inside CUDA graphs (no launch overhead, as the compiled decode
step runs them), on the Llama-8B projection shapes (q/k/v and gate/up fused, as the GPU's compiled path runs them):

- `tinygemm`: `aten._weight_int4pack_mm` (what chats' decode steps run);
- `dequant`: quant.int4_dequant's Triton kernel, then cuBLAS (what QUANT_INT4_DEQUANTIZE_ROWS rows and more run);
- `bf16`: cuBLAS on a bf16 weight of the same shape (the unquantized reference);
- `nf4`: bitsandbytes' own path for a 4-bit layer at these rows (`bnb.matmul_4bit`: its dequantization kernel, then
  cuBLAS), nf4 with double quantization as the app's nf4 mode loads it: what bounds nf4's batch jobs (issue 26's nf4
  goal, 0.6x bf16; 0.52 measured) and whether a faster dequantization, as the int4 one, would pay;
- `nf4 Triton`: the same nf4 bytes dequantized by quant.nf4_dequant's one Triton kernel, then cuBLAS (not yet wired
  into the layers: this column says whether to), with the largest difference of its weight from bitsandbytes'.

Several copies of each weight are cycled so that no call finds its weight in the L2 cache. The twelfth session's run
(bench/results/int4-matmul-rows.md) also timed a Triton matmul reading the packed weight in its main loop
(quant/int4_gemm.py, at commit 6228c3d): 3-50x slower than bf16 at every row count, removed.

    python bench/int4_matmul_rows.py --out bench/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4_dequant_blocks import graph_ms  # noqa: E402
from bench.int4mm_shapes import GROUP, packed_weight  # noqa: E402
from quant import int4_dequant, nf4_dequant  # noqa: E402


def nf4_weight(n: int, k: int, generator: torch.Generator):
    """A bitsandbytes nf4 weight (double quantization, blocks of 64) of a random [n, k] bf16 weight, on the GPU."""
    import bitsandbytes.functional as bnb_functional

    weight = (torch.randn(n, k, generator=generator) * 0.02).to(torch.bfloat16).cuda()
    return bnb_functional.quantize_4bit(weight, quant_type="nf4", compress_statistics=True, blocksize=64)


SHAPES = {"q/k/v fused 6144x4096": (6144, 4096), "o 4096x4096": (4096, 4096),
          "gate/up fused 28672x4096": (28672, 4096), "down 4096x14336": (4096, 14336)}
ROWS = (16, 32, 64, 128, 256)


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("int4_matmul_rows needs a CUDA GPU")
    import bitsandbytes as bnb

    generator = torch.Generator().manual_seed(0)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": []}
    for name, (n, k) in SHAPES.items():
        copies = copies_past_l2(n * k * 2)
        weights = [packed_weight(n, k, generator) for _ in range(copies)]
        bf16 = [torch.randn(n, k, generator=generator).to(torch.bfloat16).cuda() * 0.02 for _ in range(copies)]
        nf4 = [nf4_weight(n, k, generator) for _ in range(copies)]
        import bitsandbytes.functional as bnb_functional

        difference = (nf4_dequant.dequantize(*nf4[0]).float() - bnb_functional.dequantize_4bit(*nf4[0]).float()).abs()
        for m in ROWS:
            x = (torch.randn(m, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
            row = {"shape": name, "rows": m,
                   "tinygemm_ms": graph_ms(lambda p, s: torch.ops.aten._weight_int4pack_mm(x, p, GROUP, s), weights),
                   "dequant_ms": graph_ms(lambda p, s: F.linear(x, int4_dequant.dequantize_op()(p, s, GROUP)),
                                          weights),
                   "bf16_ms": graph_ms(lambda w: F.linear(x, w), [(w,) for w in bf16]),
                   "nf4_ms": graph_ms(lambda w, state: bnb.matmul_4bit(x, w.t(), quant_state=state), nf4),
                   "nf4_triton_ms": graph_ms(lambda w, state: F.linear(x, nf4_dequant.dequantize(w, state)), nf4),
                   "nf4_triton_max_difference": difference.max().item()}
            summary["rows"].append(row)
            print(f"{name} rows {m}: tinygemm {row['tinygemm_ms']:.4f}, dequant {row['dequant_ms']:.4f}, bf16 "
                  f"{row['bf16_ms']:.4f}, nf4 {row['nf4_ms']:.4f}, nf4 Triton {row['nf4_triton_ms']:.4f} ms",
                  flush=True)
    write_results(args.out, result_stem("int4-matmul-rows", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# 4-bit layer kernels by row count, {summary['device']}", "",
             f"torch {summary['torch']}; group size {GROUP}; GPU time of one call inside a CUDA graph (weights cycled "
             "past the L2 cache), ms.", "",
             "| shape | rows | tinygemm | Triton dequant + cuBLAS | bf16 cuBLAS | fastest int4 | dequant / bf16 | "
             "nf4 (bitsandbytes) | nf4 / bf16 | nf4 Triton dequant + cuBLAS | nf4 Triton / bf16 | its weight's "
             "largest difference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        fastest = "tinygemm" if r["tinygemm_ms"] <= r["dequant_ms"] else "dequant"
        nf4 = f"{r['nf4_ms']:.4f} | {r['nf4_ms'] / r['bf16_ms']:.2f}x" if "nf4_ms" in r else "- | -"
        triton = (f"{r['nf4_triton_ms']:.4f} | {r['nf4_triton_ms'] / r['bf16_ms']:.2f}x | "
                  f"{r['nf4_triton_max_difference']:.3g}" if "nf4_triton_ms" in r else "- | - | -")
        lines.append(f"| {r['shape']} | {r['rows']} | {r['tinygemm_ms']:.4f} | {r['dequant_ms']:.4f} | "
                     f"{r['bf16_ms']:.4f} | {fastest} | {r['dequant_ms'] / r['bf16_ms']:.2f}x | {nf4} | {triton} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
