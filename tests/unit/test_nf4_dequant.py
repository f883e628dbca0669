"""quant.nf4_dequant, one Triton kernel that dequantizes bitsandbytes' 4-bit weights, run on the CPU by Triton's
interpreter (TRITON_INTERPRET=1, in a process of its own: tests/support/nf4_dequant_checks.py) against bitsandbytes'
own dequantization of the same bytes: nf4 and fp4, with and without double quantization (over more than 256 absmax
blocks, so the nested scale changes along the weight), blocks of 64 and 128, bf16 and fp16, a weight that is not a
whole number of programs, blocks longer than a program; bit for bit in float32. Not wired into the layers yet: on a GPU it is timed alone
(bench/int4_matmul_rows.py)."""

from __future__ import annotations

import pytest

from tests.support.interpreter_checks import interpreter_tests

pytest.importorskip("bitsandbytes")
pytest.importorskip("triton")

CHECKS = ["kernel nf4 nested 160x512", "kernel nf4 plain 40x100", "kernel fp4 nested 24x256 fp16",
          "kernel nf4 nested blocks of 128", "kernel nf4 plain blocks of 4096", "what it cannot read is refused",
          "converted layer gives bitsandbytes' output", "the op gives the kernel's weight"]

results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests("tests.support.nf4_dequant_checks", CHECKS)



def test_the_setting_leaves_a_cpu_model_as_bitsandbytes_made_it(monkeypatch):
    """QUANT_NF4_DEQUANTIZE_ROWS is for GPU models: a CPU load with it converts nothing and reports nothing."""
    from quant.loader import LoadRequest, load_model
    from tests.conftest import LLAMA

    monkeypatch.setenv("QUANT_NF4_DEQUANTIZE_ROWS", "32")
    loaded = load_model(LoadRequest(model=LLAMA, mode="nf4"))
    assert not any(type(m).__name__ == "Dequantizing4bitLinear" for m in loaded.model.modules())
    assert not any("NF4_DEQUANTIZE" in warning for warning in loaded.report.warnings)


def test_a_negative_row_count_is_refused_at_start(monkeypatch):
    from quant.settings import SettingsError, load_settings

    monkeypatch.setenv("QUANT_NF4_DEQUANTIZE_ROWS", "-1")
    with pytest.raises(SettingsError, match="QUANT_NF4_DEQUANTIZE_ROWS=-1 is below 0"):
        load_settings()
