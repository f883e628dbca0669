"""On two CUDA GPUs (nccl): quant.tensor_parallel shards the demo Llama by transformers' tp_plan and gives one GPU's
greedy tokens in fp32, eager and with a static cache (which transformers compiles on CUDA); close() ends the worker."""

from __future__ import annotations

import pytest
import torch

from quant.source import resolve_location
from tests.conftest import LLAMA

pytestmark = pytest.mark.gpu

PROMPTS = [[0, 5, 17, 99, 300, 42], [0, 1000, 7, 7, 7], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_tp_over_two_gpus_gives_one_gpus_greedy_tokens(monkeypatch):
    from transformers import AutoModelForCausalLM

    from quant.tensor_parallel import start_group

    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    path = resolve_location(LLAMA)[0]
    single = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to("cuda:1").eval()
    group = start_group(path, world_size=2, dtype="float32", backend="nccl", timeout_s=300)
    try:
        assert str(group.model.device) == "cuda:0"
        for ids in PROMPTS:
            ids = torch.tensor([ids])
            kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
            expected = single.generate(ids.to("cuda:1"), **{**kwargs, "attention_mask": kwargs["attention_mask"]
                                                            .to("cuda:1")}).cpu()
            assert group.generate(input_ids=ids, **kwargs).tolist() == expected.tolist()
            static = group.generate(input_ids=ids, cache_implementation="static", **kwargs)
            assert static.tolist() == expected.tolist()
    finally:
        workers = list(group.workers)
        group.close()
    assert not any(p.is_alive() for p in workers)
