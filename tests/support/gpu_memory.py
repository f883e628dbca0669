"""GPU memory that must come back after a load, a generation and an unload (tests/gpu/). Imports without a GPU."""

from __future__ import annotations

import gc

import torch


def free_per_process_caches() -> None:
    """Free what libraries allocate once per process and keep for its life, whatever was loaded:
    - cuBLAS's workspaces, one per (handle, stream), sized by PyTorch for the GPU (32 MiB each on an H100; 96 MiB in
      all stayed after a first cycle on an H200);
    - bitsandbytes' 4-bit code tables (16 floats per quant type and device, cached at the first 4-bit matmul) and
      its 8-bit dynamic map (256 floats, cached on the device of the first blockwise quantization: nf4's double
      quantization).
    All through the libraries' own handles on them; where a future release renames one, its bytes stay and the
    check below names them (on an H200: 1,024 bytes left, the dynamic map, before it was freed here too)."""
    clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear_workspaces is not None:
        clear_workspaces()
    try:
        from bitsandbytes import functional
        from bitsandbytes.backends.utils import _code_4bit_cache
    except ImportError:
        return
    _code_4bit_cache.clear()
    functional.name2qmap.clear()


def assert_memory_returned(cycle, repeats: int = 3) -> None:
    """Run `cycle` (a load, a generation, an unload) 1 + `repeats` times; fail if GPU memory stays allocated.

    What libraries allocate once per process is freed through them (`free_per_process_caches`) before and after,
    rather than allowed for with one card's figure: every other byte must come back, and later cycles must
    allocate nothing more than the first.
    """
    gc.collect()  # what earlier tests left for the collector (a compiled model in a cycle) goes first, not mid-check
    free_per_process_caches()
    before = torch.cuda.memory_allocated()
    cycle()
    after_first = torch.cuda.memory_allocated()
    for _ in range(repeats):
        cycle()
    leaked_per_cycle = torch.cuda.memory_allocated() - after_first
    assert leaked_per_cycle == 0, f"{leaked_per_cycle / 2**20:.2f} MiB more after {repeats} more cycles"
    free_per_process_caches()
    left = torch.cuda.memory_allocated() - before
    assert left == 0, (f"{left:,} bytes still allocated after the cycles, beyond the libraries' per-process caches "
                       f"({(after_first - before) / 2**20:.1f} MiB stayed after the first cycle)")
