"""quant.int4_dequant's Triton kernel by block shape (rows x columns of a program, warps), GPU time alone.

Each (shape, block) dequantizes several copies of the Llama-8B projection's packed weight (cycled past the 50 MB L2
cache) inside one CUDA graph, replayed: the time per dequantization without Python's launch overhead, as the compiled
decode step runs it. Beside it the compiled torch version (quant.int4pack._compiled_dequantize) the same way, and the
bytes each moves per second (bf16 written, codes and scales read). Picks quant.int4_dequant.BLOCK.

    python bench/int4_dequant_blocks.py --out bench/results
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, copies_past_l2, result_stem, write_results  # noqa: E402
from bench.int4mm_shapes import GROUP, SHAPES, packed_weight  # noqa: E402
from quant import int4_dequant  # noqa: E402
from quant.int4pack import _compiled_dequantize  # noqa: E402

BLOCKS = [(rows, columns, warps) for rows in (8, 16, 32) for columns in (256, 512, 1024) for warps in (4, 8)]


def graph_ms(dequantize, inputs: list, repeats: int = 20) -> float:
    """Median GPU time of one dequantization: all copies once in a CUDA graph, replayed `repeats` times."""
    for item in inputs:
        dequantize(*item)  # compile / warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = [dequantize(*item) for item in inputs]
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(inputs))
    del outs, graph
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("int4_dequant_blocks needs a CUDA GPU")
    generator = torch.Generator().manual_seed(0)
    summary = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "default": int4_dequant.BLOCK,
               "rows": []}
    for name, (n, k) in SHAPES.items():
        copies = copies_past_l2(n * k * 2)
        weights = [packed_weight(n, k, generator) for _ in range(copies)]
        moved = n * k * 2 + weights[0][0].numel() * 4 + weights[0][1].numel() * 2
        reference = _compiled_dequantize()(*weights[0], GROUP)
        row = {"shape": name, "torch_ms": graph_ms(lambda p, s: _compiled_dequantize()(p, s, GROUP), weights),
               "bytes": moved, "blocks": {}}
        for block in BLOCKS:
            try:
                got = int4_dequant.dequantize_eagerly(*weights[0], GROUP, block=block)
                exact = bool(torch.equal(got, reference))
                ms = graph_ms(lambda p, s: int4_dequant.dequantize_eagerly(p, s, GROUP, block=block), weights)
            except Exception as exc:  # noqa: BLE001 - a block Triton cannot compile (registers, shared memory)
                row["blocks"][str(block)] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                continue
            row["blocks"][str(block)] = {"ms": ms, "gbs": moved / ms / 1e6, "exact": exact}
            print(f"{name} {block}: {ms:.4f} ms ({moved / ms / 1e6:,.0f} GB/s) exact {exact}", flush=True)
        summary["rows"].append(row)
    totals = {}
    for block in map(str, BLOCKS):
        if all("ms" in r["blocks"][block] for r in summary["rows"]):
            totals[block] = sum(r["blocks"][block]["ms"] for r in summary["rows"])
    summary["best"] = min(totals, key=totals.get) if totals else None
    write_results(args.out, result_stem("int4-dequant-blocks", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    blocks = list(summary["rows"][0]["blocks"])
    lines = [f"# quant.int4_dequant's kernel by block, {summary['device']}", "",
             f"torch {summary['torch']}; group size {GROUP}; GPU time of one dequantization inside a CUDA graph "
             "(copies cycled past the L2 cache), ms (GB/s moved: bf16 written, codes and scales read). Block = rows x "
             f"columns of a program, warps. Default when run: {tuple(summary['default'])}; fastest over the four "
             f"shapes: {summary['best']}.", "",
             "| block | " + " | ".join(r["shape"] for r in summary["rows"]) + " | sum ms |",
             "|---|" + "---|" * (len(summary["rows"]) + 1)]
    lines.append("| compiled torch | " + " | ".join(f"{r['torch_ms']:.4f} ({r['bytes'] / r['torch_ms'] / 1e6:,.0f})"
                                                    for r in summary["rows"])
                 + f" | {sum(r['torch_ms'] for r in summary['rows']):.4f} |")
    for block in blocks:
        cells = []
        for r in summary["rows"]:
            b = r["blocks"][block]
            cells.append(b["error"] if "error" in b else
                         f"{b['ms']:.4f} ({b['gbs']:,.0f}){'' if b['exact'] else ' differs'}")
        total = sum(r["blocks"][block].get("ms", math.nan) for r in summary["rows"])
        lines.append(f"| {block} | " + " | ".join(cells) + f" | {total:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
