"""On a CUDA GPU: Batch jobs forced onto transformers' continuous batching (quant.batching) give the greedy tokens of one prompt
at a time, on a model with the compiled path (whose grouped-query attention is quant.attention's packed sdpa) too,
and give their KV cache back after the job."""

from __future__ import annotations

import pytest
import torch

from quant.batching import CONTINUOUS, GPU_PADDED_FASTER, PADDED, EngineChoice, choose_engine, run_batch
from quant.generation import GenerationSettings
from quant.loader import LoadRequest
from tests.conftest import LLAMA
from tests.support.batching import RAGGED, assert_continuous_matches_one_by_one, prefilled_both_ways
from tests.support.fastpath import assert_compiled_rows_match, load
from tests.support.gpu_memory import free_per_process_caches

pytestmark = pytest.mark.gpu
GREEDY = GenerationSettings(max_new_tokens=16)


@pytest.mark.parametrize("mode", ["bf16", "nf4"])
@pytest.mark.parametrize("fast", [False, True], ids=["eager", "compiled"])
def test_continuous_batching_matches_one_by_one_on_the_gpu(mode, fast, kernel_cache):
    loaded = load(LoadRequest(model=LLAMA, mode=mode, device_map="cuda:0"), fast=fast)
    assert loaded.path.compiled == fast
    on_gpu = EngineChoice(PADDED, GPU_PADDED_FASTER)  # auto's choice on a GPU: measured faster
    assert choose_engine(loaded, GREEDY) == choose_engine(loaded, GREEDY, "auto") == on_gpu
    assert choose_engine(loaded, GREEDY, CONTINUOUS).engine == CONTINUOUS
    assert_continuous_matches_one_by_one(loaded, RAGGED, concurrency=4)

    # The job's manager thread runs on a stream of its own, and cuBLAS keeps a workspace per (handle, stream) for the
    # process's life (32 MiB on an H200: the first GPU run of this test found exactly that left): freed through
    # PyTorch's handle on them before and after, so that what is left is the job's own.
    torch.cuda.synchronize()
    free_per_process_caches()
    before = torch.cuda.memory_allocated()
    last = list(run_batch(loaded, list(enumerate(RAGGED, 1)), GREEDY, batch_size=4, engine=CONTINUOUS))[-1]
    assert last.engine.engine == CONTINUOUS and all(r.new_tokens and not r.error for r in last.rows)
    torch.cuda.synchronize()
    free_per_process_caches()
    left = torch.cuda.memory_allocated() - before
    assert left < 2**20, f"{left / 2**20:.1f} MiB still allocated after the job"  # its paged KV cache is gone with it
    loaded.path.close()


def test_a_batch_job_compiles_its_batch_size_on_demand_on_the_gpu(kernel_cache, monkeypatch):
    """QUANT_COMPILE_BATCH_ON_DEMAND=1 on a GPU: the job's batch size is compiled and captured at its start, and
    every row then gives the eager path's greedy tokens up to noise."""
    monkeypatch.setenv("QUANT_COMPILE_BATCH_ON_DEMAND", "1")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1")  # the GPU tests' default compiles 1 and 4 at load
    request = LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0")
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert fast.path.batch_sizes == (1,)
    last = list(run_batch(fast, list(enumerate(RAGGED, 1)), GREEDY, batch_size=6, engine=PADDED))[-1]
    assert "batch 6 compiled for this job" in last.totals() and all(r.new_tokens for r in last.rows), last.totals()
    assert fast.path.batch_sizes == (1, 6) and fast.path.captured
    assert_compiled_rows_match(eager, fast, RAGGED)
    fast.path.close()



def test_a_ragged_chunk_prefilled_in_groups_gives_the_whole_prefills_replies_on_the_gpu(monkeypatch):
    """quant.ragged on the GPU (eager path, fp32: no 16-bit near ties): a ragged padded chunk prefilled in groups of
    similar length gives the replies of the same chunk prefilled whole, without a forward over the padded chunk."""
    from quant import ragged

    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups
    loaded = load(LoadRequest(model=LLAMA, mode="fp32", device_map="cuda:0"), fast=False)
    prompts = RAGGED * 2
    (whole, whole_shapes), (grouped, shapes) = prefilled_both_ways(loaded, prompts, GREEDY, monkeypatch)
    width = whole_shapes[0][1]
    assert grouped == whole and shapes[0][0] < len(prompts) and all(s != (len(prompts), width) for s in shapes)


def test_a_grouped_prefill_reads_the_gpu_once_a_batch_not_once_a_group(monkeypatch):
    """quant.ragged builds each group's indices on the host and copies them from pinned memory: in a grouped prefill
    the only call of quant/ragged.py that waits for the GPU is the batch's prompt lengths, read once before the first
    group (the goal job's profile, H200, counted 128 stream syncs and 64 reads in its 21 groups before)."""
    import os
    import warnings

    from quant import ragged

    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups
    loaded = load(LoadRequest(model=LLAMA, mode="fp32", device_map="cuda:0"), fast=False)
    encoded = loaded.tokenizer(RAGGED * 2, return_tensors="pt", padding=True, padding_side="left").to("cuda:0")
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            _, groups = ragged.prefill_in_groups(loaded.model, encoded.input_ids, encoded.attention_mask)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    ours = [w for w in caught if w.filename.endswith(os.path.join("quant", "ragged.py"))]
    assert len(groups) >= 3
    assert len(ours) == 1, [f"{w.lineno}: {w.message}" for w in ours]


def test_an_eager_chat_does_not_wait_for_work_queued_on_the_default_stream():
    """A Batch job queues its kernels on the GPU's default stream (a grouped prefill queues seconds of them); an eager
    chat runs on a stream of its own (quant.generation.chat_stream), so it replies while that work is still queued,
    its prompt's copy to the GPU included. Held here by a spin kernel of about 5 s on the default stream."""
    from quant.generation import stream_chat

    loaded = load(LoadRequest(model=LLAMA, mode="bf16", device_map="cuda:0"), fast=False)
    history = [{"role": "user", "content": "What does the with statement do?"}]
    list(stream_chat(loaded, history, settings=GenerationSettings(max_new_tokens=4)))  # warm-up
    torch.cuda.synchronize()
    default = torch.cuda.default_stream()
    torch.cuda._sleep(10**10)  # GPU clock cycles: about 5 s at the H200's 1.98 GHz
    last = list(stream_chat(loaded, history, settings=GenerationSettings(max_new_tokens=8)))[-1]
    still_queued = not default.query()
    torch.cuda.synchronize()
    assert last.done and last.stats.new_tokens > 0 and last.stats.path == "eager", last.stats
    assert still_queued, "the chat waited for the work queued on the default stream"


@pytest.mark.parametrize("mode", ["bf16", "nf4", "gptq"])
def test_the_compiled_prefill_gives_the_eager_prefills_tokens_on_the_gpu(mode, gpu_gptq_llama_dir, kernel_cache,
                                                                         monkeypatch):
    """QUANT_COMPILE_PREFILL=on on the GPU (Inductor, dynamic shapes): a ragged job's groups run through one compiled
    decoder layer and each row's greedy tokens are the eager prefill's up to 16-bit noise (judged by the eager
    model's logits where they part); the path says so."""
    from quant import ragged

    monkeypatch.setattr(ragged, "GROUP_TOKENS", 200)  # several groups
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", f"1,{len(RAGGED)}")
    monkeypatch.setenv("QUANT_COMPILE_PREFILL", "on")
    model = str(gpu_gptq_llama_dir) if mode == "gptq" else LLAMA
    request = LoadRequest(model=model, mode=mode, device_map="cuda:0")
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert "batch prefill through one compiled decoder layer" in fast.path.describe(), fast.path.describe()
    assert_compiled_rows_match(eager, fast, RAGGED)
    fast.path.close()
