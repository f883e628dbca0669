"""The round-to-nearest baseline that GPTQ must beat (tests/unit/test_quantize.py) and that the quality measures are
checked on (tests/unit/test_quality.py)."""

from __future__ import annotations

import functools

import torch

from quant.gptq import builtin_textsets
from quant.loader import LoadRequest, load_model
from quant.metrics import perplexity
from tests.conftest import LLAMA

HELD_OUT = builtin_textsets()["python-reference-heldout"].read_text()


def rtn_model(bits: int, group_size: int):
    """Round-to-nearest baseline: each group of weights min-max quantized to `bits` (asymmetric), no calibration;
    the demo Llama in bf16 (the dtype the GPTQ model is evaluated in on the CPU)."""
    loaded = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    levels = 2**bits - 1
    with torch.no_grad():
        for name, module in loaded.model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
                w = module.weight.data
                groups = w.reshape(w.shape[0], -1, group_size)
                low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
                scale = (high - low).clamp(min=1e-8) / levels
                q = torch.round((groups - low) / scale).clamp(0, levels)
                module.weight.data = (q * scale + low).reshape_as(w)
    loaded.model.to(torch.bfloat16)  # evaluated in the same dtype as the GPTQ model on the CPU
    return loaded


@functools.cache
def rtn_perplexity(bits: int, group_size: int) -> float:
    """Held-out perplexity of the round-to-nearest baseline (computed once per setting for the whole session)."""
    return perplexity(rtn_model(bits, group_size), HELD_OUT, max_tokens=4096).value
