"""How PyTorch's int4 kernel (tinygemm, `aten._weight_int4pack_mm`) scales with the number of rows, against bf16.

gptq_int4pack decodes one sequence at 1.8x the bf16 rate, but a padded batch of 32 ran only 1.12x faster than eager
on tinygemm alone (gpu-bench-8b-int4pack.md). A batch's time is its prefill (batch x prompt rows) plus its decode steps (batch rows).
This times each kernel alone on the Llama-8B linear shapes, for row counts from one token to a batch's prefill:

- `int4`: tinygemm on the packed weight, as `quant.int4pack.Int4PackedLinear` calls it;
- `bf16`: `F.linear` on a bf16 weight of the same shape (cuBLAS), the unquantized reference;
- `dequant`: what `quant.int4pack.Int4PackedLinear` does from `QUANT_INT4_DEQUANTIZE_ROWS` rows: the packed weight
  dequantized by one compiled kernel (`dequantize_cuda_packed` under torch.compile), then cuBLAS; also the same
  dequantization run eagerly; and how far the result is from tinygemm's;
- `triton`: the same dequantization by the Triton kernel of `quant.int4_dequant` (the one the app uses where Triton
  runs), alone (`triton dequant`, with its bytes moved per second) and then cuBLAS; `triton = torch` counts the weights
  that differ from the compiled torch version (one bfloat16 step where Triton contracts to an FMA).

Several copies of each weight are cycled so that no call finds its weight in the 50 MB L2 cache, as in a model where
each layer's weight is read once per step.

    python bench/int4mm_shapes.py --out bench/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from quant.int4_dequant import dequantize_op  # noqa: E402
from quant.int4pack import _compiled_dequantize, dequantize_cuda_packed  # noqa: E402

SHAPES = {"q/o 4096x4096": (4096, 4096), "k/v 1024x4096": (1024, 4096), "gate/up 14336x4096": (14336, 4096),
          "down 4096x14336": (4096, 14336)}
"""(out_features, in_features) of the Llama-3-8B projections."""
ROWS = (1, 8, 16, 32, 64, 128, 256, 1024, 2048)
GROUP = 128


def packed_weight(n: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.randint(0, 16, (n, k), generator=generator, dtype=torch.int32).cuda()
    as_bytes = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).contiguous()
    packed = torch.ops.aten._convert_weight_to_int4pack(as_bytes, 8)
    scales = torch.rand(k // GROUP, n, generator=generator) * 0.02 + 0.001
    zeros = torch.randn(k // GROUP, n, generator=generator) * 0.01
    return packed, torch.stack([scales, zeros], dim=-1).to(torch.bfloat16).cuda().contiguous()


def timed_ms(call, copies: int, repeats: int = 50) -> float:
    """Median time of one call, cycling over the weight copies (CUDA events)."""
    for index in range(3):
        call(index % copies)
    times = []
    for index in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call(index % copies)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bench_shape(name: str, n: int, k: int, generator: torch.Generator) -> list[dict]:
    copies = copies_past_l2(n * k * 2)
    int4 = [packed_weight(n, k, generator) for _ in range(copies)]
    bf16 = [torch.randn(n, k, generator=generator).to(torch.bfloat16).cuda() * 0.02 for _ in range(copies)]

    def eager_dequant_linear(x, packed, scales_and_zeros):
        return F.linear(x, dequantize_cuda_packed(packed, scales_and_zeros, GROUP))

    def dequant_linear(x, packed, scales_and_zeros):  # Int4PackedLinear.forward from QUANT_INT4_DEQUANTIZE_ROWS rows
        return F.linear(x, _compiled_dequantize()(packed, scales_and_zeros, GROUP))

    def triton_linear(x, packed, scales_and_zeros):
        return F.linear(x, dequantize_op()(packed, scales_and_zeros, GROUP))

    by_torch = _compiled_dequantize()(*int4[0], GROUP)
    by_triton = dequantize_op()(*int4[0], GROUP)
    differing = int((by_torch != by_triton).sum())
    steps = ((by_torch.float() - by_triton.float()).abs() / by_torch.float().abs().clamp_min(1e-30)).max().item()
    triton_ms = timed_ms(lambda i: dequantize_op()(*int4[i], GROUP), copies)
    moved = n * k * 2 + int4[0][0].numel() * 4 + int4[0][1].numel() * 2  # bf16 written, codes and scales read
    print(f"{name}: triton dequant {triton_ms:.3f} ms ({moved / triton_ms / 1e6:.0f} GB/s), {differing} of {n * k} "
          f"weights differ from torch's", flush=True)
    rows = []
    for m in ROWS:
        x = (torch.randn(m, k, generator=generator) * 0.5).to(torch.bfloat16).cuda()
        reference = torch.ops.aten._weight_int4pack_mm(x, int4[0][0], GROUP, int4[0][1]).float()
        got = dequant_linear(x, *int4[0]).float()
        error = ((got - reference).norm() / reference.norm()).item()
        row = {"shape": name, "rows": m,
               "int4_ms": timed_ms(lambda i: torch.ops.aten._weight_int4pack_mm(x, int4[i][0], GROUP, int4[i][1]),
                                   copies),
               "bf16_ms": timed_ms(lambda i: F.linear(x, bf16[i]), copies),
               "dequant_ms": timed_ms(lambda i: dequant_linear(x, *int4[i]), copies),
               "dequant_eager_ms": timed_ms(lambda i: eager_dequant_linear(x, *int4[i]), copies),
               "triton_ms": timed_ms(lambda i: triton_linear(x, *int4[i]), copies),
               "triton_dequant_ms": triton_ms, "triton_dequant_gbs": moved / triton_ms / 1e6,
               "triton_differing": differing, "triton_max_relative_difference": steps,
               "dequant_relative_error": error}
        rows.append(row)
        print(f"{name} rows {m}: int4 {row['int4_ms']:.3f} ms, bf16 {row['bf16_ms']:.3f} ms, dequant+bf16 "
              f"{row['dequant_ms']:.3f} ms, triton+bf16 {row['triton_ms']:.3f} ms, error {error:.1e}", flush=True)
    return rows


def markdown(summary: dict) -> str:
    lines = [f"# int4 kernel (tinygemm) against bf16 by row count, {summary['device']}", "",
             f"torch {summary['torch']}; group size {GROUP}; median of 50 calls, CUDA events, weights cycled past the "
             "L2 cache. `dequant` = the packed weight dequantized by one compiled kernel, then cuBLAS; `triton` = "
             "dequantized by quant.int4_dequant's Triton kernel, then cuBLAS.", "",
             "| shape | triton dequant alone ms | GB/s | weights differing from torch's | largest relative difference |",
             "|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["rows"] == summary["rows"][0]["rows"]:
            lines.append(f"| {r['shape']} | {r['triton_dequant_ms']:.3f} | {r['triton_dequant_gbs']:,.0f} | "
                         f"{r['triton_differing']:,} | {r['triton_max_relative_difference']:.1e} |")
    lines += ["", "| shape | rows | int4 (tinygemm) ms | bf16 ms | dequant + bf16 ms | same, eager | triton + bf16 ms | "
              "int4 / bf16 | fastest 4-bit | dequant error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        options = {"int4": r["int4_ms"], "dequant": r["dequant_ms"], "triton": r["triton_ms"]}
        best = min(options, key=options.get)
        lines.append(f"| {r['shape']} | {r['rows']} | {r['int4_ms']:.3f} | {r['bf16_ms']:.3f} | {r['dequant_ms']:.3f} "
                     f"| {r['dequant_eager_ms']:.3f} | {r['triton_ms']:.3f} | {r['int4_ms'] / r['bf16_ms']:.2f}x | "
                     f"{best} | {r['dequant_relative_error']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("int4mm_shapes needs a CUDA GPU (tinygemm's CUDA layout)")
    generator = torch.Generator().manual_seed(0)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "group_size": GROUP, "rows": []}
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            summary["rows"] += bench_shape(name, n, k, generator)
    write_results(args.out, result_stem("int4mm-shapes", tag=args.tag), summary, markdown)


if __name__ == "__main__":
    main()
