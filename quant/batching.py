"""Batch jobs: many prompts through a loaded model, each result handed over as soon as its prompt finishes.

Two engines run a job:

* continuous: transformers' continuous batching (`ContinuousBatchingManager`, the engine behind
  `model.generate_batch`). Its KV cache is paged; each forward packs the prompts being prefilled and the replies
  being decoded into one row of tokens, without padding, and a prompt that finishes gives its pages to the next
  waiting one at once. Ragged prompts (16 to 1,000 tokens) cost their own length, not the longest one's, and a short
  reply never waits for a long one.
* padded: `quant.generation.generate_batch` on chunks of `batch_size` prompts, each padded to its longest (left for
  decoder-only models, right for seq2seq), on the model's compiled static-batch loop where that batch size is warmed
  up. Chunks are cut from the prompts sorted by length, so that a chunk pads little.

`choose_engine` picks one per loaded model and settings and says why; QUANT_BATCH_ENGINE forces one for measuring.
On a GPU `auto` picks padded batches, measured faster there (GPU_PADDED_FASTER says by how much).
The continuous engine needs a decoder-only model (its paged cache holds no encoder states), attention that reads the
paged cache as the model is (sdpa or flash: the manager would otherwise switch the attention of a model that other
sessions generate with at the same time), one device, and settings whose logits processors it applies per prompt
(not a repetition penalty or n-gram blocking, which need each prompt's own history). Where it cannot start (its
cache does not fit) or fails mid-job, the prompts it did not finish run on padded batches, with the reason shown.
"""

from __future__ import annotations

import copy
import gc
import math
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import ContinuousBatchingManager, RequestStatus
from transformers.generation.continuous_batching.continuous_api import BackgroundThreadStatus
from transformers.generation.continuous_batching.utils import WorkloadHints
from transformers.utils.generic import is_flash_attention_requested

from .attention import PACKED_GQA_SDPA
from .generation import (
    GenerationError,
    GenerationSettings,
    batch_texts,
    cache_tokens,
    check_token_ids,
    context_length,
    generate_batch,
    stop_token_ids,
)
from .loader import LoadedModel
from .settings import load_settings

CONTINUOUS = "continuous"
PADDED = "padded"
ENGINE_LABELS = {CONTINUOUS: "continuous batching", PADDED: "padded batches"}
MAX_BATCH_TOKENS = 2048
"""Most tokens in one forward of the continuous engine (prefill pieces and decode steps together); a longer prompt is
prefilled over several steps. Its sdpa attention mask has this many rows over the whole cache."""
SAFETY_MARGIN = 0.15
"""The share of free cache below which transformers' FIFO scheduler admits no new prompt (its default)."""
CONTINUOUS_STEP_OPTIONS = {
    "library": {},
    "graphs": {"use_cuda_graph": True, "use_async_batching": True},
}
"""QUANT_CONTINUOUS_STEP's ContinuousBatchingConfig arguments (quant.settings says what each is for)."""
POLL_SECONDS = 0.05
"""How often a job checks its stop event while no prompt finishes."""
GPU_PADDED_FASTER = ("on a GPU, padded batches: they ran 2.8-4.3x continuous batching's rate on an H200 (8B shape, 128 "
                     "ragged prompts; bench/results/batch-engines-8b.md); QUANT_BATCH_ENGINE=continuous uses it")
"""Why `auto` keeps CUDA models on padded batches, measured per mode (bf16 1,836 vs 424 tok/s, nf4 1,418 vs 402, GPTQ
999 vs 356; with the library's CUDA graphs and async batching, continuous bf16 made 345: batch-engines-8b-graphs.md).
Both engines pass tests/gpu/test_gpu_batching.py. On the CPU continuous batching stays the default: it was 2.3x padded
in bf16 and level in fp32 at the 1B shape's widths (batch-engines-1b-4layers.md)."""


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a batch job, and why (empty when nothing needs saying)."""

    engine: str
    reason: str = ""

    @property
    def label(self) -> str:
        return ENGINE_LABELS[self.engine]

    def describe(self) -> str:
        return f"{self.label} ({self.reason})" if self.reason else self.label


@dataclass(frozen=True)
class PromptResult:
    """One finished prompt of a job: its position in the job's list, its reply (or why it has none)."""

    index: int
    text: str = ""
    new_tokens: int = 0
    seconds: float = 0.0
    error: str = ""
    token_ids: tuple[int, ...] = ()
    """The reply's tokens (the continuous engine; the padded one gives text only)."""


class ContinuousUnavailable(Exception):
    """The continuous engine could not start, or stopped before the job was done (the message says why)."""


# --- which engine ---------------------------------------------------------------------------------------------------


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def generation_config(loaded: LoadedModel, settings: GenerationSettings, *, ignore_eos: bool = False):
    """The model's generation config with every user setting on top, as `generate` gets them on the padded path
    (so that a checkpoint's own sampling defaults apply to neither engine)."""
    config = copy.deepcopy(loaded.model.generation_config)
    config.update(**settings.generate_kwargs(), eos_token_id=[] if ignore_eos else _stop_ids(loaded),
                  pad_token_id=loaded.tokenizer.pad_token_id, num_return_sequences=1)
    return config


def _stop_ids(loaded: LoadedModel) -> list[int]:
    """What ends a reply: the stop tokens, and the pad token, which the padded path counts as an end too."""
    pad = loaded.tokenizer.pad_token_id
    return sorted(set(stop_token_ids(loaded)) | ({pad} if pad is not None else set()))


def _attention_refusal(model) -> str | None:
    name = model.config._attn_implementation
    if name in ("sdpa", PACKED_GQA_SDPA) or is_flash_attention_requested(requested_attention_implementation=name):
        return None
    return (f"{name} attention: continuous batching reads its paged KV cache through sdpa or flash attention, and "
            "switching the attention of a model that other sessions generate with would change theirs too")


def _processors_refusal(loaded: LoadedModel, settings: GenerationSettings) -> str | None:
    """Logits processors that transformers' continuous batching does not apply per prompt (it would drop them)."""
    try:
        # The list `generate` and the continuous-batching manager both build from a generation config (a prompt
        # length is given: without one it warns that a penalty would skip the prompt).
        processors = loaded.model._get_logits_processor(generation_config(loaded, settings), input_ids_seq_length=1)
    except Exception as exc:  # noqa: BLE001 - then it cannot be told: the padded path applies them all
        return f"its logits processors could not be listed ({_first_line(exc)})"
    unsupported = sorted({type(p).__name__ for p in processors
                          if getattr(p, "supports_continuous_batching", None) is not True})
    if unsupported:
        return (f"the generation settings need {', '.join(unsupported)}, which transformers' continuous batching "
                "does not apply per prompt (a repetition penalty and n-gram blocking need each prompt's own history)")
    return None


def continuous_refusal(loaded: LoadedModel, settings: GenerationSettings) -> str | None:
    """Why transformers' continuous batching cannot run this job, or None when it can."""
    if loaded.source.kind != "causal":
        return ("seq2seq: transformers' continuous batching runs decoder-only models (its paged cache holds no "
                "encoder states)")
    if loaded.group is not None:
        return ("tensor parallel: transformers' continuous batching runs the model in one process, and every rank "
                "must run each forward pass")
    devices = sorted({str(p.device) for p in loaded.model.parameters()})
    if len(devices) != 1:
        return f"the model is split over {', '.join(devices)}: the paged KV cache lives on one device"
    return _attention_refusal(loaded.model) or _processors_refusal(loaded, settings)


def choose_engine(loaded: LoadedModel, settings: GenerationSettings, requested: str | None = None) -> EngineChoice:
    """The engine for a job: `requested` ("auto", "continuous" or "padded"; QUANT_BATCH_ENGINE when None), where it
    can run; otherwise padded batches, with the reason."""
    requested = requested or load_settings().batch_engine
    if requested == PADDED:
        return EngineChoice(PADDED, "QUANT_BATCH_ENGINE=padded")
    refusal = continuous_refusal(loaded, settings)
    if refusal:
        return EngineChoice(PADDED, refusal if requested != CONTINUOUS else
                            f"QUANT_BATCH_ENGINE=continuous, but {refusal}")
    if requested != CONTINUOUS and loaded.device.type == "cuda":
        return EngineChoice(PADDED, GPU_PADDED_FASTER)
    return EngineChoice(CONTINUOUS, "QUANT_BATCH_ENGINE=continuous" if requested == CONTINUOUS else "")


# --- the continuous engine ------------------------------------------------------------------------------------------


def cache_plan(prompt_lengths: list[int], max_new_tokens: int, concurrency: int, page_size: int) -> tuple[int, int]:
    """(KV cache blocks, tokens per forward) for a job: room for its `concurrency` longest prompts with their whole
    replies at once, past the scheduler's safety margin, instead of the library's default of most of the free
    memory (other models and sessions share it)."""
    pages = sorted((math.ceil((n + max_new_tokens) / page_size) for n in prompt_lengths), reverse=True)
    blocks = math.ceil(sum(pages[:concurrency]) / (1 - SAFETY_MARGIN)) + 1
    longest = sum(sorted(prompt_lengths, reverse=True)[:concurrency])
    return blocks, max(concurrency, min(MAX_BATCH_TOKENS, longest))


class SharedModelManager(ContinuousBatchingManager):
    """transformers' continuous-batching manager for a model that other sessions generate with at the same time."""

    def switch_to_cb_friendly_attn(self, model, auto_switch_to_flash: bool = True) -> None:
        """Leave the model's attention as it is (`_attention_refusal` admitted it): switching it would switch every
        other session's generation on this model too."""

    def _generation_step(self) -> None:
        """One forward and sampling step, calling the model without `is_causal` (see `_CalledWithoutIsCausal`)."""
        if self.batch_processor is None:
            raise RuntimeError("Tried to perform a generation step before the batch processor was initialized.")
        self.batch_processor._generation_step(_CalledWithoutIsCausal(self.model))

    def _create_batch_processor(self):
        """Where the compiled path decodes with `packed_gqa_sdpa` (quant.attention), the batch processor is made
        seeing the attention as sdpa, which that function is on a paged cache: transformers builds the masks its
        sdpa needs only for an attention of that name."""
        if self.model.config._attn_implementation != PACKED_GQA_SDPA:
            return super()._create_batch_processor()
        model, self.model = self.model, _SdpaNamed(self.model)
        try:
            return super()._create_batch_processor()
        finally:
            self.model = model


class _CalledWithoutIsCausal:
    """The model, called without the `is_causal` argument that continuous batching passes.

    transformers' `merge_with_config_defaults` writes a call's `is_causal` into the model's config for the call's
    duration, then restores it. Other sessions generate on the same model from other threads meanwhile: with
    `config.is_causal` False their masks turn bidirectional (masking_utils), and two such calls restoring out of
    order leave it False for good. The argument changes nothing for continuous batching itself: False goes with the
    4D masks it builds (which mask creation takes as they are), True with flash attention (its layers' own default).
    """

    def __init__(self, model) -> None:
        self._model = model

    def __call__(self, *args, is_causal: bool | None = None, **kwargs):
        return self._model(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


class _SdpaNamed:
    """The model as the manager's batch-processor set-up reads it (config, device, dtype), with a copy of its text
    config whose attention is named sdpa. The model itself, shared with other sessions, is left as it is."""

    def __init__(self, model) -> None:
        self._model = model
        text = copy.copy(model.config.get_text_config())
        text._attn_implementation_internal = "sdpa"  # the copy only (the property's setter recurses into sub-configs)
        self.config = _TextConfigOnly(text)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@dataclass(frozen=True)
class _TextConfigOnly:
    text: object

    def get_text_config(self):
        return self.text


def stream_continuous(loaded: LoadedModel, inputs: list[tuple[int, list[int]]], settings: GenerationSettings, *,
                      concurrency: int, stop: threading.Event, ignore_eos: bool = False,
                      max_batch_tokens: int | None = None) -> Iterator[list[PromptResult]]:
    """Run (index, token ids) pairs through a continuous-batching manager made for this job, yielding the prompts
    that finished since the last yield, in the order they finished. At most `concurrency` prompts generate at once.

    `ignore_eos`: every reply runs to max_new_tokens (a throughput measurement). Setting `stop` ends the job at the
    next step: queued and unfinished prompts are dropped, and nothing is yielded for them. When this returns (or
    is closed) the manager's thread is stopped and its KV cache freed. Raises ContinuousUnavailable when the manager
    cannot be made (its cache does not fit, say) or stops before the job is done.
    """
    seed = settings.seed if settings.do_sample else None
    page_size = ContinuousBatchingConfig().page_size
    lengths = [len(ids) for _, ids in inputs]
    blocks, batch_tokens = cache_plan(lengths, settings.max_new_tokens, concurrency, page_size)
    cb_config = ContinuousBatchingConfig(num_blocks=blocks, max_batch_tokens=max_batch_tokens or batch_tokens,
                                         max_requests_per_batch=concurrency, auto_switch_to_flash=False, seed=seed,
                                         **CONTINUOUS_STEP_OPTIONS[load_settings().continuous_step])
    hints = WorkloadHints(max_prompt_length=max(lengths), max_generated_length=settings.max_new_tokens,
                          num_requests=len(inputs))
    try:
        manager = SharedModelManager(loaded.model, generation_config(loaded, settings, ignore_eos=ignore_eos),
                                     cb_config, hints)
        manager.warmup()  # makes the paged cache here, so that a cache that does not fit fails in this thread
    except Exception as exc:  # noqa: BLE001 - the job runs on padded batches instead, with this reason
        raise ContinuousUnavailable(f"its paged KV cache could not be set up: {_first_line(exc)}") from exc
    eos = [] if ignore_eos else _stop_ids(loaded)
    try:
        manager.start()
        pending: dict[str, int] = {}
        for index, ids in inputs:
            request = manager.add_request(ids, request_id=f"prompt-{index}", max_new_tokens=settings.max_new_tokens,
                                          eos_token_id=eos)
            if request is None:
                raise ContinuousUnavailable("its generation thread refused new prompts")
            pending[request] = index
        while pending:
            finished = []
            output = manager.get_result(timeout=POLL_SECONDS)
            while output is not None:  # everything that finished meanwhile, without waiting for more
                if output.is_finished() and output.request_id in pending:
                    finished.append(output)
                output = manager.get_result(timeout=0)
            failed = [o for o in finished if o.status == RequestStatus.FAILED]
            if failed and manager.background_thread_status.fatal_error is not None:
                raise ContinuousUnavailable(f"it failed: {_first_line(failed[0].error or 'unknown error')}")
            if finished:
                yield [_result(loaded, pending.pop(o.request_id), o) for o in finished]
            elif not manager.is_running():
                raise ContinuousUnavailable("its generation thread stopped before the job was done")
            if stop.is_set():
                break
    finally:
        with _collecting_only_new_objects():
            # The stop status first, then the wake-up: a loop woken before it would go back to waiting.
            manager.background_thread_status.request_stop(BackgroundThreadStatus.HARD_STOP,
                                                          manager.distributed_helper.global_rank)
            _wake_up(manager)
            manager.stop(block=True, hard_stop=True)  # drops what is queued or unfinished, frees the KV cache
            manager.destroy()
        if seed is not None:
            torch.seed()  # the next unseeded generation (any session's) must not follow from this seed


def _wake_up(manager: ContinuousBatchingManager) -> None:
    """An idle generation loop waits up to 0.1 s for new work before it looks at its stop status again, and `stop`
    does not wake it (`add_request` and `cancel_request` do, through this event): at the end of every job, that
    would be 0.1 s more."""
    event = getattr(manager, "_wake_up_loop", None)
    if isinstance(event, threading.Event):
        event.set()


@contextmanager
def _collecting_only_new_objects() -> Iterator[None]:
    """The manager's teardown runs two full garbage collections (in its `stop` and its batch processor's `__del__`):
    about 0.5 s each over the half million objects of a process with transformers loaded (2 CPU cores), holding the
    GIL, so that every other session's generation stalls meanwhile. Its KV cache is freed by reference counting
    (tests/unit/test_batching.py checks it with the collector off), so these collections only look at objects made
    since this began: the older ones are frozen meanwhile (`gc.freeze`). Where the process froze its import-time
    objects already (quant.loader.freeze_startup_objects: the app, the CLI, the tests), that freeze does the same and
    is left as it is: unfreezing would undo it."""
    frozen_at_start_up = gc.get_freeze_count() > 0
    if not frozen_at_start_up:
        gc.freeze()
    try:
        yield
    finally:
        if not frozen_at_start_up:
            gc.unfreeze()


def _result(loaded: LoadedModel, index: int, output) -> PromptResult:
    start, end = output.lifespan
    seconds = end - start if start > 0 and end >= start else 0.0
    if output.status == RequestStatus.FAILED:
        return PromptResult(index, seconds=seconds, error=f"Generation failed: {_first_line(output.error or '')}")
    tokens = tuple(output.generated_tokens)
    return PromptResult(index, loaded.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), seconds,
                        token_ids=tokens)


def measure_continuous(loaded: LoadedModel, prompts: list[list[int]], new_tokens: int, *,
                       concurrency: int | None = None) -> float:
    """Generated tokens per second of one continuous job over `prompts` (token ids), every reply `new_tokens` long,
    from the job's start to its last reply (the manager's teardown after it is not counted): the Compare tab's
    batch column. Raises ContinuousUnavailable as `stream_continuous` does, or when a prompt fails."""
    settings = GenerationSettings(max_new_tokens=new_tokens)
    started = ended = time.perf_counter()
    generated = 0
    for results in stream_continuous(loaded, list(enumerate(prompts)), settings, stop=threading.Event(),
                                     concurrency=concurrency or len(prompts), ignore_eos=True):
        failed = [r.error for r in results if r.error]
        if failed:
            raise ContinuousUnavailable(failed[0])
        generated += sum(r.new_tokens for r in results)
        ended = time.perf_counter()  # results reach the host once their step is done: no device sync is needed
    return generated / max(ended - started, 1e-9)


# --- the padded engine ----------------------------------------------------------------------------------------------


def stream_padded(loaded: LoadedModel, prompts: list[tuple[int, str]], lengths: list[int],
                  settings: GenerationSettings, *, batch_size: int, use_chat_template: bool,
                  system_prompt: str | None, stop: threading.Event) -> Iterator[list[PromptResult]]:
    """`generate_batch` on chunks of `batch_size` of the (index, prompt) pairs, shortest prompts first (`lengths`:
    their token counts), yielding each reply as it ends at a stop token, and the chunk's other replies when the chunk
    is done. A chunk that fails (a prompt past the context, say) is retried one prompt at a time for the replies it
    had not given yet, so that only the bad prompts carry an error. Setting `stop` ends the current chunk at its next
    token and skips the rest."""
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    for first in range(0, len(order), batch_size):
        if stop.is_set():
            return
        chunk = [prompts[i] for i in order[first:first + batch_size]]
        started = time.perf_counter()
        ended: queue.Queue[PromptResult] = queue.Queue()
        given: set[int] = set()

        def on_reply(row: int, text: str, count: int, chunk=chunk, started=started, ended=ended) -> None:
            ended.put(PromptResult(chunk[row][0], text, count, time.perf_counter() - started))

        job: Future = Future()

        def run(chunk=chunk, on_reply=on_reply, job=job) -> None:
            try:
                job.set_result(generate_batch(loaded, [text for _, text in chunk], settings,
                                              use_chat_template=use_chat_template, system_prompt=system_prompt,
                                              stop=stop, on_reply=on_reply))
            except BaseException as exc:  # noqa: BLE001 - raised again below, in the job's thread
                job.set_exception(exc)

        threading.Thread(target=run, name="quant-batch-chunk", daemon=True).start()
        while True:
            try:
                results = [ended.get(timeout=POLL_SECONDS)]
            except queue.Empty:
                results = []
            while not ended.empty():
                results.append(ended.get_nowait())
            if results:
                given.update(r.index for r in results)
                yield results
            if job.done() and ended.empty():
                break
        try:
            replies = job.result()
            seconds = time.perf_counter() - started
            rest = [PromptResult(index, text, count, seconds)
                    for (index, _), (text, count) in zip(chunk, replies) if index not in given]
            if rest:
                yield rest
        except GenerationError:
            results = []
            for index, prompt in chunk:
                if index in given:
                    continue
                one_started = time.perf_counter()
                try:
                    [(text, count)] = generate_batch(loaded, [prompt], settings, use_chat_template=use_chat_template,
                                                     system_prompt=system_prompt, stop=stop)
                    results.append(PromptResult(index, text, count, time.perf_counter() - one_started))
                except GenerationError as exc:
                    results.append(PromptResult(index, seconds=time.perf_counter() - one_started, error=str(exc)))
            yield results


# --- a job ----------------------------------------------------------------------------------------------------------


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


@dataclass
class BatchRow:
    line: int
    """Where the prompt came from (line number in the file or the pasted text)."""
    prompt: str
    output: str = ""
    new_tokens: int = 0
    seconds: float = 0.0
    """The prompt's own time: from its start to its reply's end (padded: its chunk's time)."""
    error: str = ""


@dataclass
class BatchProgress:
    rows: list[BatchRow]
    done: int
    total: int
    seconds: float
    stopped: bool = False
    engine: EngineChoice | None = field(default=None)

    @property
    def generated_tokens(self) -> int:
        return sum(r.new_tokens for r in self.rows)

    def totals(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        tok_rate = self.generated_tokens / self.seconds if self.seconds else 0.0
        text = (f"{self.done}/{self.total} prompts in {self.seconds:.1f} s · {rate:.2f} prompts/s · "
                f"{tok_rate:.1f} generated tokens/s")
        text += f" · {self.engine.describe()}" if self.engine else ""
        return text + (" · stopped" if self.stopped else "")


def _too_long(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> str:
    """Why a prompt cannot run (past the context), or "" when it can."""
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        return (f"This prompt has {prompt_tokens} tokens: with {max_new_tokens} new tokens that is past the model's "
                f"context of {limit}.")
    return "" if prompt_tokens else "The prompt is empty once tokenized."


def encode_prompts(loaded: LoadedModel, prompts: list[str], use_chat_template: bool,
                   system_prompt: str | None) -> list[list[int]]:
    """Token ids of each prompt as the padded path encodes it (the chat template applied if asked; it already holds
    the BOS token)."""
    texts = batch_texts(loaded, prompts, use_chat_template, system_prompt)
    return loaded.tokenizer(texts, add_special_tokens=not use_chat_template)["input_ids"]


def _refusals(loaded: LoadedModel, encoded: list[list[int]], settings: GenerationSettings) -> list[PromptResult]:
    """The prompts that cannot run at all (past the context, token ids past the embedding table), with why."""
    limit = context_length(loaded)
    refused = []
    for index, ids in enumerate(encoded):
        reason = _too_long(len(ids), settings.max_new_tokens, limit)
        if not reason:
            try:
                check_token_ids(loaded, torch.tensor([ids]))
            except GenerationError as exc:
                reason = str(exc)
        if reason:
            refused.append(PromptResult(index, error=reason))
    return refused


def run_batch(loaded: LoadedModel, prompts: list[tuple[int, str]], settings: GenerationSettings, *,
              batch_size: int = 8, use_chat_template: bool = False, system_prompt: str | None = None,
              stop: threading.Event | None = None, engine: str | None = None) -> Iterator[BatchProgress]:
    """Generate for (line, prompt) pairs, yielding the table each time prompts finish.

    `batch_size`: the most prompts generating at once. `engine`: "auto", "continuous" or "padded"
    (QUANT_BATCH_ENGINE when None; see `choose_engine`). Setting `stop` (or closing this iterator) ends the job at
    the next token: the finished prompts keep their replies, the others stay empty, and the last table says
    "stopped".
    """
    settings.validate()
    if not prompts:
        raise GenerationError("There are no prompts to run.")
    if not 1 <= batch_size <= 256:
        raise GenerationError("Batch size must be between 1 and 256.")
    rows = [BatchRow(line, text) for line, text in prompts]
    stop = stop or threading.Event()
    started = time.perf_counter()
    choice = choose_engine(loaded, settings, engine)
    encoded = encode_prompts(loaded, [r.prompt for r in rows], use_chat_template, system_prompt)
    finished: set[int] = set()

    def progress(results: list[PromptResult]) -> BatchProgress:
        for result in results:
            row = rows[result.index]
            row.output, row.new_tokens, row.seconds, row.error = (result.text, result.new_tokens, result.seconds,
                                                                  result.error)
            finished.add(result.index)
        return BatchProgress(rows, len(finished), len(rows), time.perf_counter() - started, stop.is_set(), choice)

    try:
        if choice.engine == CONTINUOUS:
            refused = _refusals(loaded, encoded, settings)
            if refused:
                yield progress(refused)
            inputs = [(i, ids) for i, ids in enumerate(encoded) if i not in finished]
            if inputs:
                stream = stream_continuous(loaded, inputs, settings, stop=stop,
                                           concurrency=min(batch_size, len(inputs)))
                try:
                    for results in stream:
                        yield progress(results)
                except ContinuousUnavailable as exc:
                    choice = EngineChoice(PADDED, f"continuous batching: {exc}; the rest ran on padded batches")
                finally:
                    stream.close()  # its manager is torn down now, not whenever the generator is collected
        rest = [i for i in range(len(rows)) if i not in finished]
        if rest and not stop.is_set() and load_settings().compile_batch_on_demand and loaded.path.compiled:
            size, reason = min(batch_size, len(rest)), choice.reason
            needed = cache_tokens(loaded, max(len(encoded[i]) for i in rest), settings.max_new_tokens)
            too_long = loaded.path.cache_refusal(needed)
            if too_long:  # its chunks could not run compiled: nothing to compile for
                choice = EngineChoice(choice.engine, _joined(reason, f"eager: {too_long}"))
            elif loaded.path.compiled_batch_size(size, needed) != size:
                length = loaded.path.job_cache_length(needed)
                choice = EngineChoice(choice.engine, _joined(
                    reason, f"compiling batch {size} for this job ({length} cache tokens), kept for the next jobs"))
                yield progress([])  # the table says what the wait is for
                compile_started = time.perf_counter()
                refusal = loaded.path.add_batch_size(size, needed)
                choice = EngineChoice(choice.engine, _joined(
                    reason, f"batch {size} eager: {refusal}" if refusal else
                    f"batch {size} compiled for this job in {time.perf_counter() - compile_started:.1f} s "
                    f"({length} cache tokens)"))
        if rest and not stop.is_set():
            for results in stream_padded(loaded, [(i, rows[i].prompt) for i in rest], [len(encoded[i]) for i in rest],
                                         settings, batch_size=batch_size, use_chat_template=use_chat_template,
                                         system_prompt=system_prompt, stop=stop):
                yield progress(results)
        if stop.is_set() and len(finished) < len(rows):
            yield progress([])
    except GeneratorExit:  # the consumer went away (a closed tab, a cancelled job): stop generating, on every path
        stop.set()
        raise

