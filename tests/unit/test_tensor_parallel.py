"""Tensor parallelism on the CPU (gloo, 2 ranks): the demo Llama sharded by transformers' tp_plan generates the
same greedy tokens as one process (also streamed on rank 0), a bad request raises on rank 0 and the worker
survives, close() ends it."""

import pytest
import torch

from quant.errors import QuantError
from quant.source import resolve_location
from quant.tensor_parallel import start_group
from tests.conftest import LLAMA

PROMPTS = [[0, 5, 17, 99, 300, 42], [0, 1000, 7, 7, 7], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def path():
    return resolve_location(LLAMA)[0]


@pytest.fixture(scope="module")
def group(path):
    group = start_group(path, world_size=2, dtype="float32", backend="gloo", timeout_s=120)
    yield group
    group.close()


def _greedy(generate, ids):
    ids = torch.tensor([ids])
    return generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)


def test_tp_tokens_equal_single_process_and_survive_errors(path, group):
    from transformers import AutoModelForCausalLM

    from quant.tensor_parallel import TensorParallelGroup

    assert isinstance(group, TensorParallelGroup)
    # the model really is sharded: rank 0 holds half of each column-wise projection, as a plain tensor (localize)
    single = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    q_proj = group.model.model.layers[0].self_attn.q_proj.weight
    assert group.local_reason is None and type(q_proj) is torch.nn.Parameter
    assert q_proj.shape[0] == single.model.layers[0].self_attn.q_proj.weight.shape[0] // 2
    for ids in PROMPTS:
        assert _greedy(group.generate, ids).tolist() == _greedy(single.generate, ids).tolist()

    with pytest.raises(QuantError, match="positions"):  # refused on rank 0 before any rank sees it
        group.generate(input_ids=torch.zeros(1, 600, dtype=torch.long), max_new_tokens=8)
    with pytest.raises(QuantError, match="rank 1"):  # raised inside generate on every rank
        group.generate(input_ids=torch.tensor([PROMPTS[0]]), max_new_tokens=8, num_beams=0)
    assert all(p.is_alive() for p in group.workers)
    # a streamer stays on rank 0 (it is not sent to the workers) and sees the tokens as they are made
    from transformers.generation.streamers import BaseStreamer

    class Collect(BaseStreamer):
        def __init__(self):
            self.puts = []

        def put(self, value):
            self.puts.append(value.reshape(-1).tolist())

        def end(self):
            self.puts.append("end")

    streamer = Collect()
    ids = torch.tensor([PROMPTS[1]])
    out = group.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         streamer=streamer)
    assert out.tolist() == _greedy(single.generate, PROMPTS[1]).tolist()
    assert streamer.puts[0] == PROMPTS[1] and streamer.puts[-1] == "end"
    assert sum(streamer.puts[1:-1], []) == out[0, len(PROMPTS[1]):].tolist()


def test_second_group_refused_then_close_leaves_no_process(path, group):
    """Runs after the test above (same module-scoped group): one process holds one group."""
    import torch.distributed as dist

    with pytest.raises(QuantError, match="already holds"):
        start_group(path, world_size=2, dtype="float32", backend="gloo")
    workers = list(group.workers)
    group.close()
    assert not any(p.is_alive() for p in workers) and all(p.exitcode == 0 for p in workers)
    assert not dist.is_initialized()
    with pytest.raises(QuantError, match="closed"):
        _greedy(group.generate, PROMPTS[0])
    group.close()  # twice is fine
