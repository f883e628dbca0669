"""The compiled generation path on the CPU: which models get it and why not, and that it generates exactly what the
eager path does, through the same runner thread, padded batches and per-batch-size caches that a GPU uses.

On the CPU the decode step is compiled with the "eager" dynamo backend (QUANT_COMPILE_BACKEND=eager): it traces
the model and runs the static cache through torch.compile like the GPU path, without minutes of C++ compilation.
The GPU's Inductor + CUDA graphs are checked by tests/gpu/test_gpu_fastpath.py on the device machine.
"""

from __future__ import annotations

import re
import threading

import pytest
import torch

from quant.attention import PACKED_GQA_SDPA
from quant.fastpath import configure_kernel_cache, fast_path_refusal
from quant.generation import GenerationSettings, generate_batch, start_generate, stream_chat
from quant.loader import LoadRequest
from quant.methods import Mode, QuantOptions
from quant.registry import ModelRegistry
from quant.settings import load_settings
from tests.conftest import LLAMA

PROMPTS = ["def main():", "The with statement", "import os", "class A:", "x = 1"]
GREEDY = GenerationSettings(max_new_tokens=24)


@pytest.mark.parametrize(("choice", "mode", "backend", "kind", "devices", "reason"), [
    ("auto", Mode.FP16, None, "causal", {"cuda:0"}, None),
    ("auto", Mode.BF16, None, "causal", {"cuda:0"}, None),
    ("off", Mode.BF16, None, "causal", {"cuda:0"}, "QUANT_FAST_GENERATION=off"),
    ("auto", Mode.BF16, None, "causal", {"cpu"}, "CPU"),
    ("all", Mode.FP32, None, "causal", {"cpu"}, None),
    ("all", Mode.BF16, None, "seq2seq", {"cuda:0"}, None),
    ("auto", Mode.BF16, None, "seq2seq", {"cuda:0"}, None),  # passed its GPU tests on an H200 (2026-12-01)
    ("auto", Mode.NF4, None, "seq2seq", {"cuda:0"}, None),
    ("auto", Mode.BF16, None, "seq2seq", {"cpu"}, "CPU"),
    ("all", Mode.INT8, None, "seq2seq", {"cuda:0"}, "LLM.int8"),
    ("auto", Mode.BF16, None, "seq2seq", {"cuda:0", "cuda:1"}, "split over cuda:0, cuda:1: split decoding"),
    ("all", Mode.BF16, None, "causal", {"cuda:0", "cuda:1"}, None),  # decoded in segments (test_segments.py)
    ("auto", Mode.BF16, None, "causal", {"cuda:0", "cuda:1"}, None),  # passed on two H200s (2026-12-01, tenth session)
    ("auto", Mode.NF4, None, "causal", {"cuda:0", "cuda:1"}, "tested over two GPUs in 16/32-bit only"),
    ("all", Mode.NF4, None, "causal", {"cuda:0", "cuda:1"}, None),
    ("auto", Mode.BF16, None, "causal", {"cpu", "cuda:0"}, "split over cpu, cuda:0: compiled decode needs every part"),
    ("auto", Mode.BF16, None, "causal", {"cuda:0", "meta"}, "split over cuda:0, meta: compiled decode needs every part"),
    ("all", Mode.INT8, None, "causal", {"cuda:0"}, "LLM.int8"),
    ("auto", Mode.NF4, None, "causal", {"cuda:0"}, None),
    ("auto", Mode.FP4, None, "causal", {"cuda:0"}, None),
    ("auto", Mode.GPTQ, "gptq_torch", "causal", {"cuda:0"}, None),
    ("auto", Mode.GPTQ, "gptq_marlin", "causal", {"cuda:0"}, None),
    ("auto", Mode.GPTQ, "gptq_triton", "causal", {"cuda:0"}, "gptq_triton kernel does not trace"),
    ("all", Mode.GPTQ, "gptq_exllama_v2", "causal", {"cuda:0"}, "gptq_exllama_v2 kernel does not trace"),
    ("fast", Mode.BF16, None, "causal", {"cuda:0"}, "not one of auto, all, off"),
])
def test_which_models_take_the_compiled_path(monkeypatch, choice, mode, backend, kind, devices, reason):
    monkeypatch.setenv("QUANT_FAST_GENERATION", choice)
    refusal = mode.method.compile_refusal(QuantOptions(gptq_backend=backend))
    got = fast_path_refusal(method_refusal=refusal, kind=kind, devices=devices, settings=load_settings(),
                            quantized=mode.method.quantizes_weights)
    assert got == reason if reason is None else reason in got


def test_a_split_model_whose_structure_is_not_known_stays_eager_with_the_reason(monkeypatch):
    structure = "GPT2LMHeadModel keeps no decoder layers at model.layers"  # quant.segments.segment_plan's reason
    monkeypatch.setenv("QUANT_FAST_GENERATION", "auto")
    got = fast_path_refusal(method_refusal=None, kind="causal", devices={"cuda:1", "cuda:0"}, settings=load_settings(),
                            segments_refusal=structure)
    assert got == f"the model is split over cuda:0, cuda:1: {structure}"
    monkeypatch.setenv("QUANT_DECODE_SEGMENTS", "3")
    got = fast_path_refusal(method_refusal=None, kind="causal", devices={"cuda:0"}, settings=load_settings(),
                            segments_refusal=structure)
    assert got == f"QUANT_DECODE_SEGMENTS=3: {structure}"


def test_kernel_cache_goes_to_the_configured_folder(monkeypatch, tmp_path):
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "GPTQMODEL_TORCH_EXTENSIONS_DIR",
                     "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("TRITON_CACHE_DIR", "/somewhere/else")  # an operator's own setting wins
    import os

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache_dir()  # torch writes its own default into TORCHINDUCTOR_CACHE_DIR (importing bitsandbytes does this): ours wins

    assert configure_kernel_cache() == str(tmp_path / "kernels")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "kernels" / "inductor") == cache_dir()
    assert os.environ["GPTQMODEL_TORCH_EXTENSIONS_DIR"] == str(tmp_path / "kernels" / "gptqmodel")
    assert os.environ["TRITON_CACHE_DIR"] == "/somewhere/else"
    assert (tmp_path / "kernels").is_dir()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo Llama twice: eager, and compiled for batches of 1 and 4 with static caches of 64 and 256 tokens."""
    patch = pytest.MonkeyPatch()
    patch.setenv("QUANT_FAST_GENERATION", "off")
    registry = ModelRegistry(max_models=3)
    eager = registry.load(LoadRequest(model=LLAMA, mode="fp32"))
    patch.setenv("QUANT_FAST_GENERATION", "all")
    patch.setenv("QUANT_COMPILE_BACKEND", "eager")
    patch.setenv("QUANT_COMPILED_BATCH_SIZES", "1,4")
    patch.setenv("QUANT_STATIC_CACHE_TOKENS", "64,256")
    patch.setenv("QUANT_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
    fast = registry.load(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="sdpa"))
    yield registry, eager, fast
    patch.undo()
    registry.unload_all()


def test_load_warms_the_compiled_path_up_and_reports_it(models):
    _, eager, fast = models
    assert fast.path.compiled and fast.path.batch_sizes == (1, 4) and fast.path.max_cache_len == 256
    assert re.fullmatch(r"static cache \+ torch\.compile \(batch 1, 4; caches of 64, 256 tokens; "
                        r"one compiled decoder layer for all layers; grouped-query decode without repeated KV; "
                        r"batch prefill through one compiled decoder layer \(compiled and checked in \d+\.\d s\)\)",
                        fast.report.generation_path), fast.report.generation_path
    assert fast.model.config._attn_implementation == PACKED_GQA_SDPA and fast.report.attn_implementation == "sdpa"
    assert fast.report.compile_seconds > 0
    assert fast.report.static_cache_bytes > 0  # two caches allocated at load, not at the first message
    assert "compile warm-up" in fast.report.to_text()
    assert eager.report.generation_path == "eager (QUANT_FAST_GENERATION=off)"


def test_the_decoder_layers_share_one_compiled_graph_per_loop(models):
    """QUANT_COMPILE_REGIONS=layers (default): dynamo holds one entry for the layer call per decode loop (batch size x
    cache length), not one per layer: each layer gets its own view of the cache, so its layer index is not a
    constant of the graph (without the views: 4 entries per loop for the demo model's 4 layers)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from quant.segments import _call_layer

    _, _, fast = models
    assert fast.path.regional and len(fast.model.model.layers) == 4
    entries = _debug_get_cache_entry_list(_call_layer.__code__)
    assert len(entries) == len(fast.path._loops) == 3


def test_the_recompile_limit_is_raised_where_the_compiled_calls_run(models):
    """dynamo's settings are per thread (torch 2.14): the limit the fast path raises must be the runner thread's, where
    every compiled call runs (a process of a few models and batch sizes passes dynamo's default of 8 entries)."""
    import threading

    import torch

    from quant.fastpath import compiled_runner

    assert compiled_runner().submit(lambda: torch._dynamo.config.recompile_limit).result() >= 64
    elsewhere = {}
    thread = threading.Thread(target=lambda: elsewhere.update(limit=torch._dynamo.config.recompile_limit))
    thread.start()
    thread.join()
    assert elsewhere["limit"] == 8  # per thread indeed: a fresh thread has dynamo's default


def test_without_the_packed_decode_the_compiled_path_uses_transformers_sdpa_and_says_so(models, monkeypatch,
                                                                                         tmp_path):
    """A transformers that lacks what the packed grouped-query decode plugs into (5.17 lacked a helper it once
    imported) must not send the whole model to eager: it compiles with transformers' own sdpa, and the report says so."""
    import sys

    _, eager, _ = models
    monkeypatch.setenv("QUANT_FAST_GENERATION", "all")
    monkeypatch.setenv("QUANT_COMPILE_BACKEND", "eager")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "64")
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    registry = ModelRegistry(max_models=1)
    with monkeypatch.context() as failing:  # only this load: the fixture's model is compiled again at the unload
        failing.setitem(sys.modules, "transformers.integrations.sdpa_attention", None)  # the import fails
        stock = registry.load(LoadRequest(model=LLAMA, mode="fp32", attn_implementation="sdpa"))
    try:
        assert stock.path.compiled and not stock.path.packed_gqa
        assert stock.model.config._attn_implementation == "sdpa"
        assert "grouped-query decode on transformers' sdpa" in stock.report.generation_path
        assert any("transformers' sdpa" in w for w in stock.report.warnings)
        history = [{"role": "user", "content": PROMPTS[0]}]
        want = list(stream_chat(eager, history, settings=GREEDY))[-1]
        got = list(stream_chat(stock, history, settings=GREEDY))[-1]
        assert got.stats.path == "compiled" and got.text == want.text
    finally:
        registry.unload_all()


def test_chat_on_the_compiled_path_gives_the_eager_reply(models):
    _, eager, fast = models
    for prompt in PROMPTS[:2]:
        history = [{"role": "user", "content": prompt}]
        want = list(stream_chat(eager, history, settings=GREEDY))[-1]
        got = list(stream_chat(fast, history, settings=GREEDY))[-1]
        assert (want.stats.path, got.stats.path) == ("eager", "compiled")
        assert got.text == want.text and got.stats.new_tokens == want.stats.new_tokens


def test_sampled_replies_with_every_processor_match_the_eager_path(models):
    """The decode loop runs transformers' own logits processors and sampling: same seed, same settings, same reply."""
    _, eager, fast = models
    settings = GenerationSettings(max_new_tokens=24, do_sample=True, seed=7, temperature=0.9, top_k=20, top_p=0.9,
                                  repetition_penalty=1.3, no_repeat_ngram_size=3)
    history = [{"role": "user", "content": PROMPTS[1]}]
    want = list(stream_chat(eager, history, settings=settings))[-1]
    got = list(stream_chat(fast, history, settings=settings))[-1]
    other_seed = list(stream_chat(fast, history, settings=GenerationSettings(**{**settings.__dict__, "seed": 8})))[-1]
    assert got.stats.path == "compiled" and got.text == want.text and got.stats.new_tokens == want.stats.new_tokens
    assert other_seed.text != got.text, "the seed made no difference: this test would not see a wrong sampler"


def test_a_sequence_that_ends_early_gives_the_eager_tokens(models):
    """End-of-sequence before max_new_tokens: the loop stops where `generate` does (rows that finish first are padded),
    with nothing after it."""
    _, eager, fast = models
    encoded = eager.tokenizer(PROMPTS[:4], return_tensors="pt", padding=True, padding_side="left")
    base = dict(**encoded, max_new_tokens=40, do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=eager.tokenizer.pad_token_id)
    total = encoded["input_ids"].shape[1] + 40
    free, _ = start_generate(eager, base, batch_size=4, total_tokens=total)
    new = free.result()[:, encoded["input_ids"].shape[1]:]
    eos = sorted({int(row[6]) for row in new})  # a token each row makes early on: "end of sequence" there
    results = []
    for loaded in (eager, fast):
        future, compiled = start_generate(loaded, {**base, "eos_token_id": eos}, batch_size=4, total_tokens=total)
        results.append((future.result(), compiled))
    (want, _), (got, compiled) = results
    assert compiled and torch.equal(got, want)
    assert want.shape[1] < encoded["input_ids"].shape[1] + 40, "no row ended early: nothing was checked"


def test_batches_are_padded_to_a_compiled_size_and_give_the_eager_rows(models):
    _, eager, fast = models
    assert generate_batch(fast, PROMPTS[:3], GREEDY) == generate_batch(eager, PROMPTS[:3], GREEDY)  # 3 -> 4
    assert generate_batch(fast, PROMPTS[:1], GREEDY) == generate_batch(eager, PROMPTS[:1], GREEDY)
    # 5 prompts fit no compiled size: eager, same rows
    assert generate_batch(fast, PROMPTS, GREEDY) == generate_batch(eager, PROMPTS, GREEDY)


def test_a_compiled_batch_tells_each_reply_as_it_ends(models):
    """generate_batch's on_reply through the compiled loop's streamer: each reply that ends at a stop token is told
    once, as the batch returns it; a reply that runs to the limit is not told."""
    _, eager, fast = models
    prompts = ["Hello!", "What is a list in Python?", "Write a for loop.", "Who are you?"]
    settings = GenerationSettings(max_new_tokens=48)
    told: list[tuple[int, str, int]] = []
    replies = generate_batch(fast, prompts, settings, use_chat_template=True,
                             on_reply=lambda row, text, count: told.append((row, text, count)))
    assert replies == generate_batch(eager, prompts, settings, use_chat_template=True)
    assert sorted(told) == [(i, *reply) for i, reply in enumerate(replies) if reply[1] < 48]
    assert 0 < len(told) < len(prompts)


def test_a_batch_takes_the_shortest_cache_that_holds_it(models):
    """A batch size gets a decode loop per cache length and a call the shortest that holds prompt + reply; batch 1
    (the chat), which reads little cache per step, keeps only the longest."""
    _, eager, fast = models
    assert sorted(fast.path._loops) == [(1, 256), (4, 64), (4, 256)]
    for settings, used, unused in ((GenerationSettings(max_new_tokens=24), (4, 64), (4, 256)),
                                   (GenerationSettings(max_new_tokens=100), (4, 256), (4, 64))):  # > 64 slots
        for key in (used, unused):  # a loop's prefill writes the prompt's positions over this mark
            fast.path._loops[key].position.fill_(-1)
        assert generate_batch(fast, PROMPTS[:4], settings) == generate_batch(eager, PROMPTS[:4], settings)
        assert (fast.path._loops[used].position > 0).all(), f"{used} did not run"
        assert (fast.path._loops[unused].position == -1).all(), f"{unused} ran"


def test_a_reply_longer_than_the_static_cache_runs_eagerly(models):
    _, eager, fast = models
    settings = GenerationSettings(max_new_tokens=300)  # prompt + 300 > 256 cache slots
    got = list(stream_chat(fast, [{"role": "user", "content": "hi"}], settings=settings))[-1]
    want = list(stream_chat(eager, [{"role": "user", "content": "hi"}], settings=settings))[-1]
    assert got.stats.path == "eager" and got.text == want.text


def test_concurrent_sessions_take_turns_on_the_runner_and_get_their_own_replies(models):
    _, eager, fast = models
    prompts = ["What is a generator?", "Explain the with statement.", "What does import do?"]
    expected = {p: list(stream_chat(eager, [{"role": "user", "content": p}], settings=GREEDY))[-1].text
                for p in prompts}
    got: dict[str, str] = {}

    def chat(prompt: str) -> None:
        got[prompt] = list(stream_chat(fast, [{"role": "user", "content": prompt}], settings=GREEDY))[-1].text

    threads = [threading.Thread(target=chat, args=(p,)) for p in prompts * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert got == expected


def test_chats_while_the_model_is_compiled_again_get_their_replies(models):
    """Another model's unload compiles and captures every other compiled model again (see fastpath.py); sessions that
    chat with that model meanwhile are served, eagerly while its loops are rebuilt, with the same replies."""
    _, eager, fast = models
    history = [{"role": "user", "content": PROMPTS[0]}]
    want = list(stream_chat(eager, history, settings=GREEDY))[-1].text
    rebuilding = threading.Thread(target=fast.path._warm_up_again)
    replies, paths = [], set()
    rebuilding.start()
    while rebuilding.is_alive() or not replies:
        reply = list(stream_chat(fast, history, settings=GREEDY))[-1]
        replies.append(reply.text)
        paths.add(reply.stats.path)
    rebuilding.join()
    assert fast.path.compiled and fast.path._loops, fast.path.describe()
    assert len(replies) > 1 and set(replies) == {want}, (len(replies), paths)


def test_stop_ends_a_compiled_generation(models):
    _, _, fast = models
    stop = threading.Event()
    chunks = []
    for chunk in stream_chat(fast, [{"role": "user", "content": "Tell me everything."}], stop=stop,
                             settings=GenerationSettings(max_new_tokens=200)):
        chunks.append(chunk)
        if len(chunks) == 3:
            stop.set()
    assert chunks[-1].done and chunks[-1].stats.stopped and chunks[-1].stats.new_tokens < 50


def test_unload_and_reload_stay_compiled_and_free_the_model(models):
    """Unloading a compiled model drops every compiled frame and lets the model be freed; the same model loads
    compiled again (on an H100 a reload once fell back to eager: dynamo reused a frame bound to reset CUDA graphs);
    a compiled model that stays loaded is compiled again during the unload, not at its next message, and still gives
    the eager replies."""
    import gc
    import weakref

    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    from quant.segments import _call_layer

    def compiled_frames(code) -> list:
        return [entry.code for entry in _debug_get_cache_entry_list(code)]

    registry, eager, fast = models
    history = [{"role": "user", "content": "What is a generator?"}]
    want = list(stream_chat(eager, history, settings=GREEDY))[-1].text
    request = LoadRequest(model=LLAMA, mode="fp32", attn_implementation="sdpa", options=fast.request.options,
                          revision="main")
    for _ in range(2):
        loaded = registry.load(request)
        assert loaded is not fast and loaded.path.compiled, loaded.path.describe()
        got = list(stream_chat(loaded, history, settings=GREEDY))[-1]
        assert got.stats.path == "compiled" and got.text == want
        # the code torch.compile wraps: the shared layer call (QUANT_COMPILE_REGIONS=layers) or the model's forward
        forward = _call_layer.__code__ if loaded.path.regional else type(loaded.model).forward.__code__
        model = weakref.ref(loaded.model)
        before = compiled_frames(forward)
        assert before, "nothing compiled: the checks below would prove nothing"
        key = loaded.key
        del loaded, got
        registry.unload(key)
        gc.collect()
        assert model() is None, "the unloaded model is still referenced"
        after = compiled_frames(forward)
        assert not any(frame is old for frame in after for old in before), "a compiled frame outlived the unload"
        assert after and fast.path.compiled, "the model still loaded was not compiled again during the unload"
        reply = list(stream_chat(fast, history, settings=GREEDY))[-1]
        assert reply.stats.path == "compiled" and reply.text == want


def test_a_sliding_window_model_decodes_past_the_window_as_eager_does_without_compiling_again(tmp_path, monkeypatch):
    """Gemma 3: sliding-window layers (window 32 here, 512 in gemma-3-1b) and a global one. transformers' sliding-window
    cache layers branch on a Python token count, so the decode step compiled again at every token (Phi-3 and Gemma 2
    too), and once the window was full the first layer's count stopped: the decode loop marked no new slot in the mask,
    and the global layer never saw the reply (its tokens turned to 0s). The decode loop's cache keeps full-length
    layers and leaves the window to the mask."""
    from torch._dynamo.utils import counters

    from tests.support.architectures import build
    from tests.support.fastpath import assert_each_token_is_an_eager_choice, greedy_ids, load

    monkeypatch.setenv("QUANT_COMPILE_BACKEND", "eager")
    monkeypatch.setenv("QUANT_COMPILED_BATCH_SIZES", "1")
    monkeypatch.setenv("QUANT_STATIC_CACHE_TOKENS", "128")
    monkeypatch.setenv("QUANT_KERNEL_CACHE", str(tmp_path / "kernels"))
    request = LoadRequest(model=str(build("gemma3", tmp_path / "gemma3")), mode="fp32")
    eager, fast = load(request, fast=False), load(request, fast=True)
    try:
        assert fast.path.compiled, fast.path.describe()
        for prompt in ("hello world " * 10, "def main():"):  # the window filled by the prompt, while decoding
            graphs = counters["stats"]["unique_graphs"]
            encoded, [got], compiled = greedy_ids(fast, [prompt], new_tokens=40)
            assert compiled and counters["stats"]["unique_graphs"] == graphs, "the decode step compiled again"
            assert_each_token_is_an_eager_choice(eager, encoded["input_ids"][0], got)
    finally:
        fast.path.close()


def test_compiled_kernels_are_kept_on_disk_for_the_next_start(tmp_path):
    """Two processes compile the same model with Inductor: the second finds the kernels in QUANT_KERNEL_CACHE.

    (CPU here, so no CUDA graphs; the folder and the cache hits are the same on a GPU.)
    """
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import json, sys; sys.path.insert(0, '.');"
              "from quant.loader import LoadRequest, load_model;"
              f"m = load_model(LoadRequest(model='{LLAMA}', mode='fp32', attn_implementation='sdpa'));"
              "print(json.dumps([m.path.compiled, m.report.compile_seconds, m.path.reason]))")
    env = {**os.environ, "QUANT_FAST_GENERATION": "all", "QUANT_COMPILE_BACKEND": "inductor",
           "QUANT_COMPILED_BATCH_SIZES": "1", "QUANT_STATIC_CACHE_TOKENS": "128",
           "QUANT_KERNEL_CACHE": str(tmp_path / "kernels")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    (first_compiled, first, reason), (second_compiled, second, _) = runs
    assert first_compiled and second_compiled, reason
    assert any((tmp_path / "kernels" / "inductor").rglob("*.py")), "Inductor wrote nothing to the kernel cache"
    assert second < first / 2, (first, second)


def test_a_chat_during_a_compiled_batch_job_runs_eagerly_at_once_and_compiled_after(monkeypatch, tmp_path):
    """The compiled runner thread runs a batch job's chunks whole: a chat queued behind one would wait seconds for its
    first token. While batch work holds the runner, a chat runs eagerly (saying so) and its first token comes while the
    job is still generating; once the job is done, chats are compiled again."""
    from quant.batching import PADDED, run_batch
    from quant.fastpath import runner_busy_with_batches
    from quant.generation import YIELDED_TO_BATCH
    from tests.support.fastpath import load

    for key, value in {"QUANT_COMPILE_BACKEND": "eager", "QUANT_COMPILED_BATCH_SIZES": "1",
                       "QUANT_STATIC_CACHE_TOKENS": "512", "QUANT_KERNEL_CACHE": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)
    fast = load(LoadRequest(model=LLAMA, mode="fp32"), fast=True)
    # One chunk of six rows sampled hot (they rarely all meet a stop token before 400 tokens): a chunk that outlasts
    # the chat, which would wait for all of it on the runner thread
    long_job = GenerationSettings(max_new_tokens=400, do_sample=True, temperature=5.0, seed=3)
    stop, tables = threading.Event(), []
    job = threading.Thread(target=lambda: tables.extend(run_batch(
        fast, list(enumerate(PROMPTS[:3] * 2, 1)), long_job, batch_size=6, engine=PADDED, stop=stop)))
    job.start()
    try:
        for _ in range(3000):
            if runner_busy_with_batches() or not job.is_alive():
                break
            threading.Event().wait(0.01)
        assert runner_busy_with_batches(), "the job never put batch work on the runner"
        chunks = stream_chat(fast, [{"role": "user", "content": "def main():"}], settings=GREEDY)
        first = next(chunk for chunk in chunks if chunk.text)
        assert job.is_alive() and not stop.is_set(), "the chat waited for the job"  # its first token during the job
        assert first.stats.path == "eager" and YIELDED_TO_BATCH in first.notices
        *_, last = chunks
        assert last.done and last.stats.path == "eager"
    finally:
        stop.set()
        job.join(timeout=300)
    assert not job.is_alive() and "compiled for this job" in tables[-1].totals()
    assert not runner_busy_with_batches()
    *_, after = stream_chat(fast, [{"role": "user", "content": "def main():"}], settings=GREEDY)
    assert after.stats.path == "compiled" and YIELDED_TO_BATCH not in after.notices
    fast.path.close()


def test_a_batch_job_compiles_its_batch_size_on_demand_and_keeps_it(monkeypatch, tmp_path):
    """QUANT_COMPILE_BATCH_ON_DEMAND (on by default): nothing more at load; the first Batch job of a size not compiled
    compiles it with a cache of the job's length (the table says so while it does), gives the eager path's rows, and
    the next job of that size finds it compiled; a job that needs a longer cache compiles the size again in place of
    the shorter one. With the setting off the same job runs eagerly and compiles nothing."""
    from quant import fastpath
    from quant.batching import PADDED, run_batch
    from tests.support.fastpath import greedy_ids, load

    for key, value in {"QUANT_COMPILE_BACKEND": "eager", "QUANT_COMPILED_BATCH_SIZES": "1",
                       "QUANT_STATIC_CACHE_TOKENS": "64,256", "QUANT_KERNEL_CACHE": str(tmp_path),
                       "QUANT_COMPILE_BATCH_ON_DEMAND": "0"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(fastpath, "JOB_CACHE_STEP", 64)
    request = LoadRequest(model=LLAMA, mode="fp32")
    eager, fast = load(request, fast=False), load(request, fast=True)
    assert fast.path.batch_sizes == (1,)
    prompts = list(enumerate(PROMPTS[:3], 1))
    want = [r.output for r in list(run_batch(eager, prompts, GREEDY, batch_size=3, engine=PADDED))[-1].rows]
    off = list(run_batch(fast, prompts, GREEDY, batch_size=3, engine=PADDED))[-1]
    assert fast.path.batch_sizes == (1,) and [r.output for r in off.rows] == want
    assert not greedy_ids(fast, PROMPTS[:3])[2]  # batch 3: eager

    monkeypatch.delenv("QUANT_COMPILE_BATCH_ON_DEMAND")  # the default: on
    tables = list(run_batch(fast, prompts, GREEDY, batch_size=3, engine=PADDED))
    assert tables[0].done == 0 and "compiling batch 3 for this job (64 cache tokens)" in tables[0].totals()
    assert "batch 3 compiled for this job in" in tables[-1].totals() and [r.output for r in tables[-1].rows] == want
    assert fast.path.batch_sizes == (1, 3) and sorted(fast.path._loops) == [(1, 256), (3, 64)]
    assert "batch 1, 3" in fast.path.describe() and "batch 3 for a job: 64 tokens" in fast.path.describe()
    assert greedy_ids(fast, PROMPTS[:3], new_tokens=16)[2]  # batch 3: compiled now, while it fits its 64 slots
    again = list(run_batch(fast, prompts, GREEDY, batch_size=3, engine=PADDED))
    assert len(again) == 1 and "compil" not in again[-1].totals() and [r.output for r in again[-1].rows] == want
    # Longer replies: the size is compiled again with a longer cache, which replaces the shorter one
    longer = GenerationSettings(max_new_tokens=80)
    want = [r.output for r in list(run_batch(eager, prompts, longer, batch_size=3, engine=PADDED))[-1].rows]
    tables = list(run_batch(fast, prompts, longer, batch_size=3, engine=PADDED))
    assert "compiled for this job" in tables[-1].totals() and [r.output for r in tables[-1].rows] == want
    assert sorted(fast.path._loops) == [(1, 256), (3, 128)] and fast.path.batch_sizes == (1, 3)
    # A job whose replies outrun the static cache would not run compiled: nothing is compiled for it
    long = list(run_batch(fast, prompts[:2], GenerationSettings(max_new_tokens=300), batch_size=2, engine=PADDED))
    assert "past the compiled 256" in long[-1].totals() and fast.path.batch_sizes == (1, 3)
    fast.path.close()



def test_the_noise_check_judges_a_difference_at_the_first_new_token():
    """The GPU tests' comparison where two paths part at the first new token (no reply tokens to add to the prompt):
    a clear choice fails with the gap, not with embedding's dtype error (hqq_gemlite's GPU test, 2026-12-02)."""
    from tests.support.fastpath import assert_each_token_is_an_eager_choice, assert_same_up_to_noise, greedy_ids, load

    eager = load(LoadRequest(model=LLAMA, mode="fp32"), fast=False)
    encoded, [expected], _ = greedy_ids(eager, ["def main():"], new_tokens=4)
    wrong = [(expected[0] + 1) % eager.model.config.vocab_size, *expected[1:]]
    with pytest.raises(AssertionError, match="diverged at a clear choice \\(token 0"):
        assert_same_up_to_noise(eager, encoded, 0, expected, wrong)
    with pytest.raises(AssertionError, match="past noise below eager's choice"):
        assert_each_token_is_an_eager_choice(eager, encoded["input_ids"][0], wrong[:1])
    assert_each_token_is_an_eager_choice(eager, encoded["input_ids"][0], expected[:1])
