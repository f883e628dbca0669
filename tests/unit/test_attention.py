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


class _GroupedAttention(torch.nn.Module):
    """What transformers' attention functions read from a Llama attention module."""

    num_key_value_groups = 4
    is_causal = True


def _decode_inputs(batch=3, kv_heads=2, groups=4, cache=64, dim=16):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(batch, kv_heads * groups, 1, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, cache, dim, generator=generator) for _ in range(2))
    mask = torch.ones(batch, 1, 1, cache, dtype=torch.bool)
    mask[0, ..., 40:] = False  # a static cache filled up to different lengths, and left padding on one row
    mask[1, ..., :5] = False
    mask[1, ..., 50:] = False
    return query, key, value, mask


def test_packed_gqa_decode_gives_the_repeated_kv_attention():
    from transformers.integrations.sdpa_attention import repeat_kv

    from quant.attention import packed_gqa_sdpa

    module = _GroupedAttention()
    query, key, value, mask = _decode_inputs()
    want = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, 4), repeat_kv(value, 4), attn_mask=mask, scale=0.25).transpose(1, 2)
    got, _ = packed_gqa_sdpa(module, query, key, value, mask, scaling=0.25)
    assert got.shape == want.shape == (3, 1, 8, 16)
    torch.testing.assert_close(got, want)


def _largest_intermediate(attention, inputs) -> int:
    """Trace `attention` as torch.compile does and return the element count of its largest intermediate tensor."""
    from torch._dynamo.testing import CompileCounterWithBackend

    largest = 0

    def backend(graph_module, example_inputs):
        nonlocal largest
        for node in graph_module.graph.nodes:
            value = node.meta.get("example_value")
            if node.op in ("call_function", "call_method") and isinstance(value, torch.Tensor):
                largest = max(largest, value.numel())
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(attention, backend=CompileCounterWithBackend(backend), fullgraph=True)
    compiled(_GroupedAttention(), *inputs, scaling=0.25)
    torch._dynamo.reset()
    return largest


def test_compiled_decode_does_not_repeat_the_kv_cache():
    """Under torch.compile transformers' sdpa copies the cache once per query head (repeat_kv); the packed one
    attends over the cache as it is: no intermediate as large as the repeated keys."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from quant.attention import packed_gqa_sdpa

    inputs = _decode_inputs()
    repeated = inputs[1].numel() * 4  # the keys, once per query head
    assert _largest_intermediate(sdpa_attention_forward, inputs) >= repeated  # what the packed function avoids
    assert _largest_intermediate(packed_gqa_sdpa, inputs) < repeated


def test_the_compiled_path_uses_packed_decode_only_for_grouped_kv_sdpa_models():
    from quant.attention import PACKED_GQA_SDPA, restore_sdpa, use_packed_gqa_decode

    sdpa = load_model(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="sdpa"))  # 4 heads, 2 KV heads
    want = greedy(sdpa, "The with statement is used to")
    assert use_packed_gqa_decode(sdpa.model) == (True, "")
    assert sdpa.model.config._attn_implementation == PACKED_GQA_SDPA
    assert greedy(sdpa, "The with statement is used to") == want
    restore_sdpa(sdpa.model)
    assert sdpa.model.config._attn_implementation == "sdpa"
    eager = load_model(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="eager"))
    assert use_packed_gqa_decode(eager.model) == (False, "") and eager.model.config._attn_implementation == "eager"
