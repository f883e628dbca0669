"""quant.decode_attention, the Triton kernel for one-token decode attention that reads only the cache slots a row may
attend to, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1, in a process of its own:
tests/support/decode_attention_checks.py) against attention computed in torch over the whole cache; and how a model
is switched to it (QUANT_DECODE_ATTENTION=triton: on a GPU in 16-bit only, with the reason elsewhere). On a GPU:
tests/gpu/test_gpu_fastpath.py (the compiled decode steps with it give the eager path's tokens)."""

from __future__ import annotations


import pytest
import torch

from quant import decode_attention
from quant.loader import LoadRequest, load_model
from tests.conftest import LLAMA
from tests.support.interpreter_checks import interpreter_tests

pytest.importorskip("triton")

VARIANTS = ["", ", chunks loaded whole", ", chunks of 16", ", chunks of 128 loaded whole"]
CHECKS = [*(f"kernel {case}{variant}" for case in ("grouped-200-slots", "ungrouped-head-80", "group-of-7")
            for variant in VARIANTS),
          *(f"refused slots weigh nothing{variant}" for variant in VARIANTS),
          "chunk bounds", "one mask row for every row", "the op gives the kernel's result"]

results, test_in_the_interpreter, test_every_check_is_run_here = interpreter_tests("tests.support.decode_attention_checks", CHECKS)


def test_what_does_not_fit_is_refused_with_its_shapes():
    query, key, value = torch.zeros(2, 2, 4, 32), torch.zeros(2, 2, 64, 32), torch.zeros(2, 2, 64, 32)
    with pytest.raises(ValueError, match="boolean mask"):
        decode_attention.decode_attention_eagerly(query, key, value, torch.zeros(2, 64), 0.1)
    with pytest.raises(ValueError, match="does not fit the query"):
        decode_attention.decode_attention_eagerly(query, key[:, :1], value[:, :1],
                                                  torch.ones(2, 64, dtype=torch.bool), 0.1)


def test_without_a_gpu_the_refusal_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert decode_attention.refusal() == "no CUDA GPU"


@pytest.mark.parametrize("setting", ["", "matmul", "triton"])
def test_a_packed_model_uses_the_kernel_only_where_asked_and_says_why_not(setting, monkeypatch):
    from quant.attention import DECODE_KERNEL_ATTRIBUTE, restore_sdpa, use_decode_kernel, use_packed_gqa_decode

    monkeypatch.setenv("QUANT_DECODE_ATTENTION", setting)
    loaded = load_model(LoadRequest(model=LLAMA, mode="bf16", attn_implementation="sdpa"))  # 4 heads, 2 KV heads
    assert use_decode_kernel(loaded.model) == (False, "")  # not on packed decode: nothing to switch
    assert use_packed_gqa_decode(loaded.model) == (True, "")
    used, why_not = use_decode_kernel(loaded.model)
    assert not used  # the CPU
    assert why_not == ("decode attention on matmuls: the Triton kernel runs on a GPU in fp16 or bf16"
                       if setting == "triton" else "")  # the default (unset) is the kernel, but says nothing here
    attention = [m for m in loaded.model.modules() if hasattr(m, "num_key_value_groups")]
    assert attention and all(getattr(m, DECODE_KERNEL_ATTRIBUTE) == 0 for m in attention)
    restore_sdpa(loaded.model)
    assert not any(hasattr(m, DECODE_KERNEL_ATTRIBUTE) for m in attention)


def test_an_unknown_setting_is_refused_by_name(monkeypatch):
    from quant.settings import SettingsError, load_settings

    monkeypatch.setenv("QUANT_DECODE_ATTENTION", "flash")
    with pytest.raises(SettingsError, match="QUANT_DECODE_ATTENTION='flash' is not one of triton, matmul"):
        load_settings()


@pytest.mark.parametrize("text, message", [
    ("block=48", "block=48 is not a power of two of at least 16"),
    ("warps=four", "warps='four' is not a whole number"),
    ("blocks=64", "'blocks' is not one of block, masked_loads, min_rows, programs_per_sm, stages, warps"),
    ("min_rows=0", "must be at least 1"),
])
def test_a_launch_setting_that_cannot_be_used_is_refused_at_start_with_the_defaults(text, message, monkeypatch):
    from quant.settings import SettingsError, load_settings

    monkeypatch.setenv("QUANT_DECODE_ATTENTION_KERNEL", text)
    with pytest.raises(SettingsError, match="QUANT_DECODE_ATTENTION_KERNEL") as refused:
        load_settings()
    assert message in str(refused.value)
    assert decode_attention.KernelConfig().setting() in str(refused.value)


def test_a_launch_setting_overrides_only_what_it_names(monkeypatch):
    monkeypatch.setenv("QUANT_DECODE_ATTENTION_KERNEL", "block=128, masked_loads=0,min_rows=32")
    config = decode_attention.configured()
    assert (config.block, config.masked_loads, config.min_rows) == (128, False, 32)
    assert config.warps == decode_attention.KernelConfig().warps
    assert decode_attention.KernelConfig.parse(config.setting()) == config  # what the bench writes reads back


def test_the_kernel_is_checked_once_per_head_size_grouping_and_dtype():
    """A model with heads of 256 (Gemma) is not attended by a kernel checked only at 128: each shape its own check."""
    from quant.attention import decode_kernel_check

    llama = decode_kernel_check(128, 4, torch.bfloat16)
    assert decode_kernel_check(128, 4, torch.bfloat16) is llama
    others = [decode_kernel_check(256, 4, torch.bfloat16), decode_kernel_check(128, 2, torch.bfloat16),
              decode_kernel_check(128, 4, torch.float16)]
    assert len({id(check) for check in [llama, *others]}) == 4
    if not torch.cuda.is_available():
        assert llama.reason() == "no CUDA GPU" and llama.decided
