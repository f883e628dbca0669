"""Batch jobs on transformers' continuous batching (quant.batching): greedy replies equal one-by-one generation for
ragged prompts, results arrive as prompts finish, Stop ends a job at once and keeps what finished, the KV cache is
freed after, and jobs it cannot run go to padded batches with the reason."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from transformers.generation.continuous_batching import PagedAttentionCache

from quant.attention import use_packed_gqa_decode
from quant.batching import CONTINUOUS, PADDED, choose_engine, run_batch
from quant.generation import GenerationSettings, generate_batch, stream_chat
from quant.loader import LoadRequest, load_model
from quant.settings import SettingsError, load_settings
from tests.conftest import LLAMA, T5
from tests.support.batching import RAGGED, assert_continuous_matches_one_by_one

GREEDY = GenerationSettings(max_new_tokens=16)


@pytest.fixture(scope="module")
def fp32():
    return load_model(LoadRequest(model=LLAMA, mode="fp32"))


def test_greedy_continuous_batch_equals_one_by_one_for_ragged_prompts_fp32(fp32):
    """fp32: every reply equals generation one prompt at a time, exactly, stop tokens and all, through run_batch (3
    prompts at once out of 6, so places are refilled as prompts finish); with the chat template too."""
    one = [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]
    last = list(run_batch(fp32, list(enumerate(RAGGED, 1)), GREEDY, batch_size=3))[-1]
    assert last.engine.engine == CONTINUOUS and "continuous batching" in last.totals()
    assert [(r.output, r.new_tokens) for r in last.rows] == one
    assert all(r.seconds > 0 and not r.error for r in last.rows)

    chat = RAGGED[1::2]
    templated = [generate_batch(fp32, [p], GREEDY, use_chat_template=True, system_prompt="Be brief.")[0] for p in chat]
    last = list(run_batch(fp32, list(enumerate(chat, 1)), GREEDY, use_chat_template=True,
                          system_prompt="Be brief."))[-1]
    assert last.engine.engine == CONTINUOUS and [(r.output, r.new_tokens) for r in last.rows] == templated


@pytest.mark.parametrize("mode", ["bf16", "nf4"])
def test_greedy_continuous_batch_equals_one_by_one_in_16_bit_and_nf4(mode):
    """bf16 arithmetic (bf16 weights; nf4 computes in bf16) may differ in its last bits between a packed batch and one
    prompt alone, as a padded batch's does: equal tokens, or a first difference at a near tie (all six replies are
    equal whole on the machine this was written on)."""
    loaded = load_model(LoadRequest(model=LLAMA, mode=mode))
    assert choose_engine(loaded, GREEDY).engine == CONTINUOUS
    assert assert_continuous_matches_one_by_one(loaded, RAGGED, concurrency=4) >= len(RAGGED) // 2


def test_the_compiled_paths_packed_attention_serves_continuous_batching():
    """On a GPU the compiled path gives grouped-query models `packed_gqa_sdpa` (quant.attention): continuous batching
    runs on it (its paged-cache calls go to transformers' sdpa) and leaves it in place for the other sessions."""
    packed = load_model(LoadRequest(model=LLAMA, mode="fp32"))
    assert use_packed_gqa_decode(packed.model)[0]
    name = packed.model.config._attn_implementation
    assert choose_engine(packed, GREEDY).engine == CONTINUOUS
    assert assert_continuous_matches_one_by_one(packed, RAGGED, concurrency=6) == len(RAGGED)
    assert packed.model.config._attn_implementation == name


def test_results_arrive_as_prompts_finish(fp32):
    """A short prompt that ends at its first token comes back before a long one still generating, in its own row."""
    prompts = [(1, RAGGED[2]), (2, "x")]  # 435 tokens and 16 new; "x" is answered by a stop token
    filled = [[bool(r.output or r.new_tokens) for r in p.rows]
              for p in run_batch(fp32, prompts, GREEDY, batch_size=2, engine=CONTINUOUS)]
    assert filled[0] == [False, True] and filled[-1] == [True, True]


@pytest.fixture
def collector_off():
    """No garbage collection meanwhile: what is freed is freed by reference counting (the engine's teardown relies
    on it, quant.batching._collecting_only_new_objects)."""
    gc.disable()
    yield
    gc.enable()


def test_a_job_leaves_the_shared_model_as_other_sessions_see_it(fp32):
    """Other sessions generate on the same model meanwhile: two continuous jobs must not change what a chat computes
    (transformers writes a call's `is_causal` into the shared config for the call; with False there, other threads'
    masks turned bidirectional, and the config could stay so)."""
    history = [{"role": "user", "content": "What does the with statement do?"}]
    alone = list(stream_chat(fp32, history, settings=GREEDY))[-1].text
    before = fp32.model.config.to_dict()
    jobs = [threading.Thread(target=lambda: list(run_batch(fp32, list(enumerate(RAGGED * 2, 1)), GREEDY,
                                                           batch_size=3, engine=CONTINUOUS))) for _ in range(2)]
    for job in jobs:
        job.start()
    seen = {getattr(fp32.model.config, "is_causal", None)}
    during = list(stream_chat(fp32, history, settings=GREEDY))[-1].text
    while any(job.is_alive() for job in jobs):
        seen.add(getattr(fp32.model.config, "is_causal", None))
        time.sleep(0.0005)  # a look every half millisecond: a forward step of the demo model takes several
    assert seen == {before.get("is_causal")} and during == alone
    assert fp32.model.config.to_dict() == before


def live_caches() -> int:
    """Paged caches still in memory, garbage included (gc.get_objects lists unreachable objects not yet collected)."""
    return sum(isinstance(o, PagedAttentionCache) for o in gc.get_objects())


def test_stop_ends_the_job_at_once_keeps_what_finished_and_frees_the_cache(fp32, collector_off):
    prompts = [(1, "x")] + [(i, f"Explain Python statement number {i} in detail.") for i in range(2, 40)]
    stop = threading.Event()
    jobs = run_batch(fp32, prompts, GenerationSettings(max_new_tokens=200), batch_size=4, stop=stop,
                     engine=CONTINUOUS)
    first = next(jobs)
    assert first.done >= 1 and first.rows[0].new_tokens >= 1 and live_caches() == 1
    stop.set()
    stopped_at = time.perf_counter()
    last = list(jobs)[-1]
    assert time.perf_counter() - stopped_at < 3  # a step and the manager's teardown, not 39 x 200 tokens
    assert last.stopped and last.totals().endswith("· stopped") and last.done < len(prompts)
    done = [r for r in last.rows if r.output or r.new_tokens]
    assert len(done) == last.done and all(r.new_tokens >= 1 for r in done)
    assert not any(t.is_alive() and "_run_generation_loop" in t.name for t in threading.enumerate())
    assert live_caches() == 0


def test_padded_batches_give_each_reply_as_it_ends_not_when_its_batch_does(fp32):
    """One padded batch of chat prompts where one reply ends at its stop token long before the others run to the
    limit: the table has that reply first, alone, and every reply equals the batch's own all-at-once result."""
    prompts = ["Hello!", "What is a list in Python?", "Write a for loop.", "Who are you?"]
    settings = GenerationSettings(max_new_tokens=64)
    whole = generate_batch(fp32, prompts, settings, use_chat_template=True)
    assert sorted(count for _, count in whole)[0] < 64 <= sorted(count for _, count in whole)[-1], whole  # the case
    seen = []  # which rows had replies at each table (the table's rows are updated in place as the job goes)
    for last in run_batch(fp32, list(enumerate(prompts, 1)), settings, batch_size=4, use_chat_template=True,
                          engine=PADDED):
        seen.append([i for i, row in enumerate(last.rows) if row.new_tokens])
    early = [i for i, (_, count) in enumerate(whole) if count < 64]
    assert seen == [early, list(range(len(prompts)))]
    assert [(r.output, r.new_tokens) for r in last.rows] == whole
    late = [r.seconds for i, r in enumerate(last.rows) if i not in early]
    assert all(last.rows[i].seconds < min(late) for i in early)  # each row's own time, not its batch's


def test_a_seq2seq_model_takes_padded_batches_with_the_reason():
    t5 = load_model(LoadRequest(model=T5, mode="fp32"))
    choice = choose_engine(t5, GREEDY)
    assert choice.engine == PADDED and choice.reason.startswith("seq2seq")
    forced = choose_engine(t5, GREEDY, CONTINUOUS)
    assert forced.engine == PADDED and forced.reason.startswith("QUANT_BATCH_ENGINE=continuous, but seq2seq")
    last = list(run_batch(t5, [(1, "reverse: a b c"), (2, "reverse: one two three four")], GREEDY))[-1]
    assert last.engine == choice and "padded batches (seq2seq" in last.totals()
    assert all(r.output for r in last.rows)


def test_settings_and_attention_it_cannot_serve_go_to_padded_batches(fp32, monkeypatch):
    penalty = choose_engine(fp32, GenerationSettings(repetition_penalty=1.3))
    assert penalty.engine == PADDED and "RepetitionPenaltyLogitsProcessor" in penalty.reason
    ngrams = choose_engine(fp32, GenerationSettings(no_repeat_ngram_size=3))
    assert ngrams.engine == PADDED and "NoRepeatNGramLogitsProcessor" in ngrams.reason
    sampled = GenerationSettings(do_sample=True, temperature=0.8, top_p=0.9, top_k=20, seed=3)
    assert choose_engine(fp32, sampled).engine == CONTINUOUS  # temperature, top-k, top-p: applied per prompt
    eager = load_model(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="eager"))
    refused = choose_engine(eager, GREEDY)
    assert refused.engine == PADDED and refused.reason.startswith("eager attention")
    assert eager.model.config._attn_implementation == "eager"

    monkeypatch.setenv("QUANT_BATCH_ENGINE", "padded")
    assert choose_engine(fp32, GREEDY) == choose_engine(fp32, GREEDY, PADDED)
    assert choose_engine(fp32, GREEDY).reason == "QUANT_BATCH_ENGINE=padded"
    monkeypatch.setenv("QUANT_BATCH_ENGINE", "fastest")
    with pytest.raises(SettingsError, match="QUANT_BATCH_ENGINE='fastest' is not one of auto, continuous, padded"):
        load_settings()


def test_the_continuous_step_setting_reaches_transformers(fp32, monkeypatch):
    """QUANT_CONTINUOUS_STEP=graphs asks transformers for CUDA graphs and async batching: on the CPU the library
    refuses async batching, so the job runs on padded batches with its reason (on a GPU it runs: the 8B bench)."""
    prompts = [(1, "def main():"), (2, "import os")]
    monkeypatch.setenv("QUANT_CONTINUOUS_STEP", "graphs")
    last = list(run_batch(fp32, prompts, GREEDY, batch_size=2, engine=CONTINUOUS))[-1]
    assert last.engine.engine == PADDED and "Async batching requires a device type" in last.engine.reason
    monkeypatch.setenv("QUANT_CONTINUOUS_STEP", "library")
    again = list(run_batch(fp32, prompts, GREEDY, batch_size=2, engine=CONTINUOUS))[-1]
    assert again.engine.engine == CONTINUOUS and [r.output for r in again.rows] == [r.output for r in last.rows]
    monkeypatch.setenv("QUANT_CONTINUOUS_STEP", "fast")
    with pytest.raises(SettingsError, match="QUANT_CONTINUOUS_STEP='fast' is not one of library, graphs"):
        load_settings()


def test_a_continuous_job_that_cannot_start_runs_on_padded_batches_with_the_reason(fp32, monkeypatch):
    """transformers' manager failing to set up (a paged cache that does not fit, say): the whole job runs on padded
    batches, the same replies, and the table says why."""
    from transformers.generation.continuous_batching import ContinuousBatchingManager

    def no_room(self):
        raise RuntimeError("not enough memory for 12 blocks")

    monkeypatch.setattr(ContinuousBatchingManager, "warmup", no_room)
    one = [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]
    last = list(run_batch(fp32, list(enumerate(RAGGED, 1)), GREEDY, batch_size=3))[-1]
    assert last.engine.engine == PADDED
    assert last.engine.reason == ("continuous batching: its paged KV cache could not be set up: not enough memory for "
                                  "12 blocks; the rest ran on padded batches")
    assert [(r.output, r.new_tokens) for r in last.rows] == one and not any(r.error for r in last.rows)


def test_a_continuous_job_that_fails_midway_keeps_what_finished_and_runs_the_rest_padded(fp32, monkeypatch):
    """The generation loop failing after some prompts finished: those keep their replies, the unfinished ones run
    on padded batches, every reply equals one-by-one's (fp32), and the reason names the failure."""
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchProcessor

    step = ContinuousBatchProcessor._generation_step
    calls = []

    def failing_step(self, model):
        calls.append(1)
        if len(calls) == 20:  # of about 32 steps: some prompts finished, some not
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return step(self, model)

    monkeypatch.setattr(ContinuousBatchProcessor, "_generation_step", failing_step)
    one = [generate_batch(fp32, [p], GREEDY)[0] for p in RAGGED]
    progress = list(run_batch(fp32, list(enumerate(RAGGED, 1)), GREEDY, batch_size=3))
    last = progress[-1]
    assert len(calls) >= 20 and last.engine.engine == PADDED
    assert last.engine.reason.startswith("continuous batching: it failed: CUDA error: an illegal memory access")
    assert [(r.output, r.new_tokens) for r in last.rows] == one and not any(r.error for r in last.rows)
    finished_before = [p for p in progress if p.engine.engine == CONTINUOUS and p.done]
    assert finished_before and finished_before[-1].done < len(RAGGED)  # some finished on the continuous engine first
