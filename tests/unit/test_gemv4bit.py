"""quant.gemv4bit, the Triton batch-1 kernel for bitsandbytes 4-bit weights, run on the CPU by Triton's interpreter
(TRITON_INTERPRET=1, in a process of its own: tests/support/gemv4bit_checks.py): the kernel's sums equal bitsandbytes'
own dequantized weight times the input (nf4 and fp4, with and without double quantization, chunks of 256, 128 and 64
columns, 1-8 rows); a converted layer stays a Linear4bit with its weight untouched, uses the kernel up to MAX_ROWS
rows and bitsandbytes beyond; torch.compile traces it; a layer the kernel cannot read stays as it was, with the
reason; a CPU load asking for it is refused. On a GPU: tests/gpu/test_gpu_methods.py (compiled with it vs eager)."""

from __future__ import annotations

import pytest

from tests.support.interpreter_checks import interpreter_tests

pytest.importorskip("bitsandbytes")
pytest.importorskip("triton")

CHECKS = ["kernel nf4-nested-512x1", "kernel nf4-plain-896x3", "kernel fp4-nested-192x8", "kernel nf4-nested-320x2",
          "converted layer", "compile traces"]

results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests("tests.support.gemv4bit_checks", CHECKS)


def test_a_cpu_load_asking_for_the_kernel_is_refused_with_what_to_do():
    from quant.errors import UnsupportedModeError
    from quant.loader import LoadRequest, prepare
    from quant.methods import QuantOptions
    from tests.conftest import LLAMA

    with pytest.raises(UnsupportedModeError, match="runs on a CUDA GPU") as refused:
        prepare(LoadRequest(LLAMA, mode="nf4", device_map="cpu", options=QuantOptions(bnb4_kernel="triton")))
    assert "bitsandbytes kernel" in refused.value.hint
