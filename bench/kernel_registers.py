"""quant.int4_gemv's kernel compiled for a Hopper GPU (sm_90a) on any machine, no GPU needed: registers a thread and
bytes spilled per block (ptxas -v, the ptxas that ships with Triton) and its main loop's machine code (nvdisasm):
instructions per weight, warp shuffles, barriers and local-memory accesses, for the default block at 1-8 rows and
every block bench/int4_gemv_rows.py sweeps at one row.

Why: a GPU session is short; a block that spills registers (local memory traffic in a kernel meant to be bound by
the weights' bandwidth) or that leaves few warps on a streaming multiprocessor can be ruled out before it. What it
cannot say: the time. Occupancy here is the register limit alone (65,536 registers and 64 warps an SM).

    python bench/kernel_registers.py --out bench/results
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402
from bench.int4_gemv_rows import SWEEP  # noqa: E402

SIGNATURE = {"x": "*bf16", "packed": "*i32", "scales_and_zeros": "*bf16", "out": "*bf16", "m_rows": "i32",
             "n_features": "i32", "k_outer": "i32", "stride_xm": "i32", "tiles_per_split": "i32",
             "WORDS": "constexpr", "GROUP": "constexpr", "M": "constexpr", "ROWS": "constexpr", "TILES": "constexpr",
             "ATOMIC": "constexpr"}


def compiled(rows: int, tiles: int, m: int, warps: int, atomic: bool) -> dict:
    """ptxas's registers and spills of one block (tinygemm's inner_k_tiles 8: 4 words a lane; groups of 128)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from quant import int4_gemv

    signature = {**SIGNATURE, "out": "*fp32" if atomic else "*bf16"}
    source = ASTSource(fn=int4_gemv._kernel(False), signature=signature,
                       constexprs={"WORDS": 4, "GROUP": 128, "M": m, "ROWS": rows, "TILES": tiles, "ATOMIC": atomic})
    began = time.perf_counter()
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    seconds = time.perf_counter() - began
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(kernel.asm["ptx"])
        run = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", os.devnull], capture_output=True,
                             text=True, check=True)
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "nvdisasm"), "-c", str(cubin)],
                              capture_output=True, text=True, check=True).stdout
    text = run.stderr + run.stdout
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    spilled = int(re.search(r"(\d+) bytes spill stores", text).group(1))
    warps_per_sm = min(64, 65536 // (registers * 32 * warps) * warps) if registers else 64
    loop = main_loop(sass)
    weights = rows * tiles * 32 * 4 // (32 * warps)  # a chunk: TILES tiles of 32 x WORDS columns of each row
    return {"rows": rows, "tiles": tiles, "m": m, "warps": warps, "atomic": atomic, "registers": registers,
            "spill_bytes": spilled, "warps_per_sm": warps_per_sm, "compile_s": round(seconds, 2),
            "loop_instructions": len(loop), "loop_shuffles": sum(op.startswith("SHFL") for op in loop),
            "loop_barriers": sum(op.startswith("BAR") for op in loop),
            "loop_local_memory": sum(op.startswith(("LDL", "STL")) for op in loop),
            "weights_a_thread": weights, "instructions_a_weight": round(len(loop) / weights, 2)}


def main_loop(sass: str) -> list[str]:
    """The opcodes of the kernel's longest loop (a backward branch to a label, and what lies between) in nvdisasm's
    listing: the chunk loop, run once per chunk of columns."""
    instructions, labels, pending = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            pending.append(label.group(1))
            continue
        found = re.search(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*)", line)
        if found:
            address = int(found.group(1), 16)
            labels.update({name: address for name in pending})
            pending = []
            instructions.append((address, found.group(2), found.group(3)))
    longest: list[str] = []
    for address, opcode, rest in instructions:
        target = re.search(r"(\.L_x_\d+)", rest) if opcode.startswith("BRA") else None
        if target and labels.get(target.group(1), address) < address:
            body = [op for at, op, _ in instructions if labels[target.group(1)] <= at <= address]
            longest = body if len(body) > len(longest) else longest
    return longest


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    args = parser.parse_args()
    from quant import int4_gemv

    summary = {"target": "sm_90a (H100/H200)", "defaults": [], "sweep": []}
    for m in (1, 2, 4, 8):
        rows, tiles, split, warps = int4_gemv.block_for(4096, 32, 132, m)  # o_proj of an 8B: a split block
        summary["defaults"].append(compiled(rows, tiles, m, warps, split > 1))
        print(summary["defaults"][-1], flush=True)
    for rows, tiles, split, warps in SWEEP:
        if split <= 2:  # the split changes the store (atomic or not), not the main loop
            summary["sweep"].append(compiled(rows, tiles, 1, warps, split > 1))
            print(summary["sweep"][-1], flush=True)
    write_results(args.out, result_stem("kernel-registers-int4-gemv", tag=args.tag), summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# quant.int4_gemv compiled for {summary['target']}: registers and spills (ptxas -v)", "",
             "No GPU needed: Triton compiles for the target and its ptxas reports each block. Warps an SM: the register "
             "limit alone (65,536 registers, 64 warps).", "",
             "| block (rows, tiles, warps) | x rows | atomic store | registers | spilled bytes | warps an SM | "
             "loop instructions | of them shuffles / barriers / local memory | weights a thread a chunk | "
             "instructions a weight |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["defaults"] + summary["sweep"]:
        lines.append(f"| ({r['rows']}, {r['tiles']}, {r['warps']}) | {r['m']} | {r['atomic']} | {r['registers']} | "
                     f"{r['spill_bytes']} | {r['warps_per_sm']} | {r['loop_instructions']} | {r['loop_shuffles']} / "
                     f"{r['loop_barriers']} / {r['loop_local_memory']} | {r['weights_a_thread']} | "
                     f"{r['instructions_a_weight']} |")
    lines.append("")
    lines.append("The first rows are the default block (`int4_gemv.block_for`) at 1, 2, 4 and 8 rows of x; the rest "
                 "the sweep's blocks at one row.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
