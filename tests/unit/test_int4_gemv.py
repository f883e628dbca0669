"""quant.int4_gemv's Triton kernel (a few rows times tinygemm's packed int4 weight), run on the CPU by Triton's
interpreter (TRITON_INTERPRET=1, in a process of its own: tests/support/int4_gemv_checks.py) against the float64
product with the weight quant.int4pack.dequantize_cuda_packed reads: blocks that are not whole, column splits that
do not divide the tiles, groups smaller than a packing tile, 1-8 rows. tests/gpu/test_gpu_fastpath.py runs it
compiled on a GPU against tinygemm."""

from __future__ import annotations

import pytest

from quant import int4_gemv
from tests.support.interpreter_checks import interpreter_tests

pytest.importorskip("triton")

CHECKS = ["kernel, default block, one row", "kernel, split in two, 3 rows",
          "kernel, 8 rows, groups of 64 in tiles of 64",
          "kernel, groups of 32 in tiles of 32, split 4", "kernel, a split that does not divide the tiles",
          "kernel, groups of 32 in tiles of 128", "what it cannot read is refused", "the op gives the kernel's product"]

results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests("tests.support.int4_gemv_checks",
                                                                                   CHECKS)


def test_the_default_block_fills_the_gpu_by_splitting_the_columns_of_few_row_blocks():
    rows, _, split, _ = int4_gemv.block_for(4096, 32, sms=132)  # o_proj of an 8B: 128 row blocks
    assert rows == 32 and split == 4
    assert int4_gemv.block_for(28672, 32, sms=132)[2] == 1  # gate/up fused: 896 row blocks
    assert int4_gemv.block_for(4096, 2, sms=132)[2] == 1  # too few tiles to split


@pytest.mark.parametrize("m", [1, 8])
def test_the_default_block_compiles_for_hopper_without_spilling_registers(m):
    """Compiled for sm_90a here (Triton and its ptxas, no GPU): a kernel bound by the weights' bandwidth must not add
    local-memory traffic, nor exchange between threads inside its loop (it sums across threads once, at the end; the
    kernel that summed inside the loop took 112 shuffles a chunk at one row)."""
    from bench.kernel_registers import compiled

    rows, tiles, split, warps = int4_gemv.block_for(4096, 32, sms=132, m=m)
    report = compiled(rows, tiles, m, warps, split > 1)
    assert report["spill_bytes"] == 0 and report["warps_per_sm"] >= 8, report
    assert report["loop_instructions"] and report["loop_shuffles"] == 0 and report["loop_local_memory"] == 0, report
