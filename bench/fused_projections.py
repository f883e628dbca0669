"""Issue 27: do the projections that read the same input (q/k/v, gate/up) gain from one matmul over their weights
concatenated along the output dimension, at batch 1 inside a CUDA graph? Kernels alone, before building it.

The 8B bf16 decode step was profiled at 71% of its bandwidth floor (bench/results/generate-overhead-llama-8b-bf16-
cuda-profile-b1-8b.md): cuBLAS reads gate/up and down near the copy bandwidth, but q/o (4096x4096) and k/v
(1024x4096) well below it, with split-K reduce kernels after them. A fused q/k/v matrix is 6144x4096.

For each group and kernel, `--layers` distinct copies of the weights (so nothing stays in L2, as in a real step of
32 layers) are multiplied by one row, all in one CUDA graph replayed by `triton.testing.do_bench_cudagraph`; the
time is per layer. Kernels: bf16 `F.linear` (cuBLAS) and int4pack (`aten._weight_int4pack_mm`, tinygemm, groups of
128: GPTQ's path), separate calls vs one fused call. It also checks that the fused int4pack weight can be made from
already-packed layers (packed tensors and scales concatenated) rather than from the codes.

Run: python bench/fused_projections.py --out bench/results
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402

GROUPS_8B = {"q/k/v": ((4096, 1024, 1024), 4096), "gate/up": ((14336, 14336), 4096)}
GROUP_SIZE = 128


def main() -> None:
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench_cudagraph

    from quant.int4pack import pack_int4_linear

    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--rows", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    data = {"layers": args.layers, "group_size": GROUP_SIZE, "groups": {}}
    for name, (outs, k) in GROUPS_8B.items():
        torch.manual_seed(0)
        total = sum(outs)
        group = data["groups"][name] = {"outs": list(outs), "in": k, "rows": {}}
        weights = [[torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for n in outs]
                   for _ in range(args.layers)]
        fused_weights = [torch.cat(ws) for ws in weights]
        weights = weights[0]  # the reference for the errors
        packed, fused_packed = [], []
        for _ in range(args.layers):  # codes made and packed one layer at a time: int32 codes of 32 layers are 15 GB
            layers = [(torch.randint(0, 16, (n, k), dtype=torch.int32, device="cuda"),
                       torch.rand(k // GROUP_SIZE, n, device="cuda") * 0.01,
                       torch.rand(k // GROUP_SIZE, n, device="cuda") * 0.01) for n in outs]
            packed.append([pack_int4_linear(c, s, z, group_size=GROUP_SIZE, bias=None) for c, s, z in layers])
            fused_packed.append(pack_int4_linear(
                torch.cat([c for c, _, _ in layers]), torch.cat([s for _, s, _ in layers], 1),
                torch.cat([z for _, _, z in layers], 1), group_size=GROUP_SIZE, bias=None))
        joined = (torch.cat([p.packed_weight for p in packed[0]]),
                  torch.cat([p.scales_and_zeros for p in packed[0]], dim=1))
        group["packed layers concatenate"] = bool(torch.equal(joined[0], fused_packed[0].packed_weight)
                                                  and torch.equal(joined[1], fused_packed[0].scales_and_zeros))
        bf16_bytes = total * k * 2
        int4_bytes = total * k // 2 + total * (k // GROUP_SIZE) * 4
        for m in args.rows:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")

            def run_all(fn):
                return lambda: [fn(layer) for layer in range(args.layers)]

            variants = {
                # row slices of the fused weight: contiguous matrices, as separate Linear weights are
                "bf16 separate": (run_all(lambda i: [F.linear(x, w) for w in fused_weights[i].split(outs)]),
                                  bf16_bytes),
                "bf16 fused": (run_all(lambda i: F.linear(x, fused_weights[i])), bf16_bytes),
                "int4pack separate": (run_all(lambda i: [p(x) for p in packed[i]]), int4_bytes),
                "int4pack fused": (run_all(lambda i: fused_packed[i](x)), int4_bytes),
            }
            want = torch.cat([F.linear(x.float(), w.float()) for w in weights], dim=-1)
            errors = {"bf16 fused": float((F.linear(x, fused_weights[0]).float() - want).norm() / want.norm()),
                      "int4pack fused vs separate": float(
                          (fused_packed[0](x).float() - torch.cat([p(x) for p in packed[0]], -1).float()).abs().max())}
            rows = group["rows"][str(m)] = {"errors": errors}
            for label, (fn, nbytes) in variants.items():
                us = do_bench_cudagraph(fn, rep=100) * 1000 / args.layers
                rows[label] = {"us per layer": us, "GB/s": nbytes / us / 1e3}
            print(name, m, {label: round(r["us per layer"], 2) for label, r in rows.items() if label != "errors"},
                  errors, flush=True)
        weights = fused_weights = packed = fused_packed = None
        torch.cuda.empty_cache()
    write_results(args.out, result_stem("fused-projections", "8b", tag=args.tag), data, markdown)


def markdown(data: dict) -> str:
    gpu = data["machine"]["gpu"]
    lines = [f"# Fused projections at batch 1: one matmul over concatenated weights vs one per projection ({gpu})", "",
             "`python bench/fused_projections.py` (" + __doc__.split("\n\n")[2].replace("\n", " ") + ")", "",
             "| group | rows | kernel | separate us/layer | fused us/layer | fused / separate | separate GB/s "
             "| fused GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, group in data["groups"].items():
        for m, rows in group["rows"].items():
            for kernel in ("bf16", "int4pack"):
                sep, fused = rows[f"{kernel} separate"], rows[f"{kernel} fused"]
                lines.append(f"| {name} {'+'.join(map(str, group['outs']))}x{group['in']} | {m} | {kernel} | "
                             f"{sep['us per layer']:.1f} | {fused['us per layer']:.1f} | "
                             f"{fused['us per layer'] / sep['us per layer']:.2f}x | {sep['GB/s']:.0f} | "
                             f"{fused['GB/s']:.0f} |")
    lines += ["", "Checks: " + "; ".join(
        f"{name}: packed layers concatenated = the fused packing: {group['packed layers concatenate']}, errors "
        + ", ".join(f"{k} {v:.1e}" for m, rows in group["rows"].items() for k, v in rows["errors"].items())
        for name, group in data["groups"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
