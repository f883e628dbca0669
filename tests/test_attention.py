"""Attention implementations: the ones available on the CPU give eager's greedy output; others are refused."""

from __future__ import annotations

import pytest
import torch

from quant.errors import UnsupportedModeError
from quant.loader import LoadRequest, load_model
from tests.conftest import LLAMA, T5


def greedy(loaded, prompt):
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        return loaded.model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()


@pytest.mark.parametrize(("model", "prompt"), [(LLAMA, "The with statement is used to"), (T5, "reverse: a b c d")])
def test_cpu_implementations_match_eager(model, prompt):
    eager = load_model(LoadRequest(model=model, mode="fp32", attn_implementation="eager"))
    assert eager.report.attn_implementation == "eager"
    sdpa = load_model(LoadRequest(model=model, mode="fp32", attn_implementation="sdpa"))
    assert sdpa.report.attn_implementation == "sdpa"
    assert greedy(sdpa, prompt) == greedy(eager, prompt)
    default = load_model(LoadRequest(model=model, mode="fp32"))
    assert default.report.attn_implementation == "sdpa"  # transformers' default where flash-attn is absent


@pytest.mark.parametrize(
    ("model", "attn", "message"),
    [(LLAMA, "flash_attention_2", "needs the flash-attn package"),
     (T5, "flash_attention_2", "T5ForConditionalGeneration does not support flash_attention_2"),
     (LLAMA, "flex_attention", "not offered on the CPU"),
     (LLAMA, "better_transformer", "Unknown attention implementation")],
)
def test_unavailable_implementations_are_refused_before_loading(model, attn, message):
    with pytest.raises(UnsupportedModeError, match=message):
        load_model(LoadRequest(model=model, attn_implementation=attn))
