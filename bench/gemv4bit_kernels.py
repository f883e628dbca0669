"""The 4-bit batch-1 kernels alone on the 8B projection shapes (issue 27): bitsandbytes' own (`bnb.matmul_4bit`, one
row: its gemv), quant.gemv4bit's production kernel (autotuned), bf16 `F.linear` for scale, and a sweep of variants of
the Triton kernel to find where its time goes: tile rows (BLOCK_N), columns per step (BLOCK_K), split-K (SPLIT_K
programs per row block, summed with atomics), the 16-entry table read by a gather from global memory or by a select
tree in registers (LUT), and the input read as even/odd columns or contiguously and the codes interleaved (X).
Each: microseconds and the weight bytes per second (packed codes + absmax), timed by replaying the calls captured in a
CUDA graph (`triton.testing.do_bench_cudagraph`, --timing graph, the default): inside the compiled decode step the
kernels run from a graph, so Python's launch cost (tens of microseconds for a Triton kernel through its autotuner) is
not theirs. `--timing events` times plain calls (`do_bench`), launch cost included: the first run (2026-12-01) timed
that way, and its Triton rows were launch-bound.
Every variant's result is checked against bitsandbytes' dequantized weight first (a wrong one is listed as such).

    python bench/gemv4bit_kernels.py --out bench/results            # on a GPU
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402

SHAPES_8B = {"q/o_proj": (4096, 4096), "k/v_proj": (1024, 4096), "gate/up_proj": (14336, 4096),
             "down_proj": (4096, 14336)}
"""(out, in) of Llama-3 8B's projections."""


@triton.jit
def select16(q, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15):
    """c[q] for codes q in 0..15 by a tree of selects on values in registers (LUT=1), not a gather (LUT=0)."""
    low = tl.where(q < 4, tl.where(q < 2, tl.where(q < 1, c0, c1), tl.where(q < 3, c2, c3)),
                   tl.where(q < 6, tl.where(q < 5, c4, c5), tl.where(q < 7, c6, c7)))
    high = tl.where(q < 12, tl.where(q < 10, tl.where(q < 9, c8, c9), tl.where(q < 11, c10, c11)),
                    tl.where(q < 14, tl.where(q < 13, c12, c13), tl.where(q < 15, c14, c15)))
    return tl.where(q < 8, low, high)


@triton.jit
def gemv_variant(x_ptr, packed_ptr, absmax_ptr, code_ptr, out_ptr, N, K, K_PER_SPLIT,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, QBLOCK: tl.constexpr, SPLIT_K: tl.constexpr,
                 LUT: tl.constexpr, X: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    half = tl.arange(0, BLOCK_K // 2)
    cols = tl.arange(0, BLOCK_K)
    blocks = tl.arange(0, BLOCK_K // QBLOCK)
    row_bytes = rows.to(tl.int64) * (K // 2)
    row_blocks = rows.to(tl.int64) * (K // QBLOCK)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if LUT == 1:
        c0 = tl.load(code_ptr + 0)
        c1 = tl.load(code_ptr + 1)
        c2 = tl.load(code_ptr + 2)
        c3 = tl.load(code_ptr + 3)
        c4 = tl.load(code_ptr + 4)
        c5 = tl.load(code_ptr + 5)
        c6 = tl.load(code_ptr + 6)
        c7 = tl.load(code_ptr + 7)
        c8 = tl.load(code_ptr + 8)
        c9 = tl.load(code_ptr + 9)
        c10 = tl.load(code_ptr + 10)
        c11 = tl.load(code_ptr + 11)
        c12 = tl.load(code_ptr + 12)
        c13 = tl.load(code_ptr + 13)
        c14 = tl.load(code_ptr + 14)
        c15 = tl.load(code_ptr + 15)
    k_start = pid_k * K_PER_SPLIT
    for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
        byte = tl.load(packed_ptr + row_bytes[:, None] + (k0 // 2 + half)[None, :], mask=row_ok[:, None],
                       other=0).to(tl.int32)
        if X == 0:
            hi = byte >> 4
            lo = byte & 15
            if LUT == 0:
                high = tl.load(code_ptr + hi)
                low = tl.load(code_ptr + lo)
            else:
                high = select16(hi, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15)
                low = select16(lo, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15)
            x_even = tl.load(x_ptr + k0 + 2 * half).to(tl.float32)
            x_odd = tl.load(x_ptr + k0 + 2 * half + 1).to(tl.float32)
            part = high * x_even[None, :] + low * x_odd[None, :]
            per_block = tl.sum(tl.reshape(part, (BLOCK_N, BLOCK_K // QBLOCK, QBLOCK // 2)), axis=2)
        else:
            q = tl.reshape(tl.join(byte >> 4, byte & 15), (BLOCK_N, BLOCK_K))
            if LUT == 0:
                w = tl.load(code_ptr + q)
            else:
                w = select16(q, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15)
            x = tl.load(x_ptr + k0 + cols).to(tl.float32)
            per_block = tl.sum(tl.reshape(w * x[None, :], (BLOCK_N, BLOCK_K // QBLOCK, QBLOCK)), axis=2)
        scale = tl.load(absmax_ptr + row_blocks[:, None] + (k0 // QBLOCK + blocks)[None, :],
                        mask=row_ok[:, None], other=0.0)
        acc += tl.sum(per_block * scale, axis=1)
    if SPLIT_K == 1:
        tl.store(out_ptr + rows, acc, mask=row_ok)
    else:
        tl.atomic_add(out_ptr + rows, acc, mask=row_ok)


def main() -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as F
    from triton.testing import do_bench, do_bench_cudagraph

    from quant.gemv4bit import dequantized_absmax

    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--timing", choices=("graph", "events"), default="graph")
    args = parser.parse_args()
    data = {"timing": args.timing, "shapes": {}}
    for name, (n, k) in SHAPES_8B.items():
        torch.manual_seed(0)
        weight = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
        absmax, code = dequantized_absmax(state), state.code.float().contiguous()
        codes = packed.view(torch.uint8).reshape(n, k // 2)
        x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
        want = x.float() @ F.dequantize_4bit(packed, state).float().T
        weight_bytes = codes.numel() + absmax.numel() * 4
        rows = {}

        def timed(label, fn, bytes_read=weight_bytes):
            got = fn().float().reshape(1, n)
            error = float((got - want).norm() / want.norm())
            us = (do_bench_cudagraph(fn, rep=50) if args.timing == "graph" else do_bench(fn, warmup=10, rep=50)) * 1000
            rows[label] = {"us": us, "GB/s": bytes_read / us / 1e3, "error": error}

        timed("bitsandbytes gemv (matmul_4bit, 1 row)",
              lambda: bnb.matmul_4bit(x, packed.t(), quant_state=state),
              codes.numel() + state.absmax.numel() + state.state2.absmax.numel() * 4)
        timed("bf16 F.linear", lambda: torch.nn.functional.linear(x, weight), weight.numel() * 2)
        timed("quant.gemv4bit (autotuned)", lambda: torch.ops.quant.gemv_4bit(x, codes, absmax, code, n))
        for block_n, block_k, split, lut, xmode, warps in itertools.product(
                (8, 16, 32), (256, 1024), (1, 4), (0, 1), (0, 1), (4, 8)):
            if k % (block_k * split):
                continue
            out = torch.zeros(n, dtype=torch.float32, device="cuda")

            def run(block_n=block_n, block_k=block_k, split=split, lut=lut, xmode=xmode, warps=warps, out=out):
                if split > 1:
                    out.zero_()
                gemv_variant[(triton.cdiv(n, block_n), split)](
                    x, codes, absmax, code, out, n, k, k // split, BLOCK_N=block_n, BLOCK_K=block_k, QBLOCK=64,
                    SPLIT_K=split, LUT=lut, X=xmode, num_warps=warps)
                return out

            label = (f"variant N{block_n} K{block_k} split{split} lut{'-gather' if lut == 0 else '-select'} "
                     f"x{'-evenodd' if xmode == 0 else '-contiguous'} w{warps}")
            try:
                timed(label, run)
            except Exception as exc:  # noqa: BLE001 - a variant that does not compile is a row
                rows[label] = {"failed": str(exc)[:200]}
        data["shapes"][name] = {"out": n, "in": k, "rows": rows}
        best = min((r for label, r in rows.items() if label.startswith("variant") and r.get("error", 1) < 1e-2),
                   key=lambda r: r["us"], default=None)
        print(name, {label: round(r.get("us", -1), 1) for label, r in rows.items() if not label.startswith("variant")},
              "best variant", best, flush=True)
    write_results(args.out, result_stem("gemv4bit-kernels", "8b", tag=args.tag), data, markdown)


def markdown(data: dict) -> str:
    lines = [f"# 4-bit batch-1 kernels alone, Llama-3 8B projection shapes ({data['machine']['gpu']})", "",
             "nf4 weights (block 64, double quantization), one bf16 input row. GB/s: bytes of the weight as each "
             "kernel reads it per call / time (bf16: 2 bytes a weight; the Triton kernels: packed codes + float32 "
             "absmax). Error: relative to bitsandbytes' dequantized weight (float32; bf16's is its own weight, not the "
             "4-bit one). Timing: " + ("calls replayed from a CUDA graph." if data.get("timing") == "graph" else
                                       "plain calls (CUDA events around each, Python's launch cost included: a "
                                       "Triton kernel launched through its autotuner pays tens of microseconds "
                                       "that a CUDA graph does not)."), ""]
    for name, shape in data["shapes"].items():
        rows = shape["rows"]
        ok = {label: r for label, r in rows.items() if "us" in r}
        variants = sorted((label for label in ok if label.startswith("variant")), key=lambda label: ok[label]["us"])
        shown = [label for label in ok if not label.startswith("variant")] + variants[:8]
        lines += [f"## {name} ({shape['out']} x {shape['in']})", "", "| kernel | us | GB/s | error |", "|---|---|---|---|"]
        lines += [f"| {label} | {ok[label]['us']:.1f} | {ok[label]['GB/s']:,.0f} | {ok[label]['error']:.1e} |"
                  for label in shown]
        failed = [label for label, r in rows.items() if "failed" in r]
        lines += ["", f"{len(variants)} variants timed (the 8 fastest shown), {len(failed)} failed to build.", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
