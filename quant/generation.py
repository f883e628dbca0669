"""Generation on a loaded model: a streamed chat turn and one padded batch of prompts, for causal and seq2seq
models (quant.batching runs whole batch jobs).

Uses the libraries' own mechanisms: `apply_chat_template` for prompts, `TextIteratorStreamer` for streaming, a
`StoppingCriteria` wired to an event so that "stop" ends the work on the server, not just the display.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers import BatchEncoding, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

from . import ragged
from .errors import QuantError
from .fastpath import runner_busy_with_batches
from .loader import LoadedModel, model_context_length
from .settings import load_settings

log = logging.getLogger(__name__)

# End-of-turn tokens of common chat templates; whichever exist in a tokenizer's vocabulary stop generation too.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")
MAX_NEW_TOKENS_LIMIT = 4096
MAX_CHARS_PER_TOKEN = 64
"""No tokenizer packs more characters than this into one token on average: longer messages cannot fit the context."""
MAX_MESSAGE_CHARS = 200_000
"""Most characters in one chat message or system prompt (about 50k tokens of English), whatever the context: the
check happens before anything is tokenized, so a pasted book costs nothing."""
SEED_MAX = 2**32 - 1
"""Seeds are 32-bit, as in most tools (torch takes 64 bits, numpy 32): one range for the UI, the CLI and the API."""


class GenerationError(QuantError):
    """Settings or prompts that cannot be generated from."""


@dataclass(frozen=True)
class GenerationSettings:
    """What `generate` is asked to do. Greedy unless `do_sample`; sampling knobs are ignored under greedy."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int | None = None

    def validate(self) -> None:
        """Refuse NaN, negative and absurd values with a message naming the setting."""
        numbers = {"max new tokens": self.max_new_tokens, "temperature": self.temperature, "top-p": self.top_p,
                   "top-k": self.top_k, "repetition penalty": self.repetition_penalty,
                   "no-repeat n-gram size": self.no_repeat_ngram_size}
        for name, value in numbers.items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                raise GenerationError(f"The {name} must be a number.")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise GenerationError(f"Max new tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}.")
        if self.do_sample and not 0 < self.temperature <= 10:
            raise GenerationError("Temperature must be above 0 and at most 10 (use greedy for 0).")
        if not 0 < self.top_p <= 1:
            raise GenerationError("Top-p must lie in (0, 1].")
        if self.top_k < 0:
            raise GenerationError("Top-k must be 0 (off) or more.")
        if not 0 < self.repetition_penalty <= 10:
            raise GenerationError("Repetition penalty must be above 0 and at most 10 (1.0 is off).")
        if self.no_repeat_ngram_size < 0:
            raise GenerationError("No-repeat n-gram size must be 0 (off) or more.")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed <= SEED_MAX):
            raise GenerationError(f"Seed must be a whole number from 0 to {SEED_MAX}, or none for a random seed.")

    def generate_kwargs(self) -> dict:
        # Every setting the user sees is passed, 0 and 1 included: `generate` would otherwise take the checkpoint's
        # own defaults (facebook/bart-large-cnn ships num_beams=4 and no_repeat_ngram_size=3).
        kwargs: dict = {"max_new_tokens": int(self.max_new_tokens), "do_sample": bool(self.do_sample),
                        "repetition_penalty": float(self.repetition_penalty), "num_beams": 1,
                        "no_repeat_ngram_size": int(self.no_repeat_ngram_size)}
        if self.do_sample:
            kwargs.update(temperature=float(self.temperature), top_p=float(self.top_p), top_k=int(self.top_k))
        else:  # keep the checkpoint's sampling defaults from leaking into greedy runs (and warnings about them)
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


def stop_token_ids(loaded: LoadedModel) -> list[int]:
    """EOS ids of the generation config and tokenizer, plus the chat template's end-of-turn tokens.

    Llama 3 checkpoints end a turn with `<|eot_id|>` while EOS is `<|end_of_text|>`: without both, a reply runs on
    into a made-up next turn.
    """
    ids: list[int] = []
    configured = loaded.model.generation_config.eos_token_id
    ids += configured if isinstance(configured, list) else [configured] if configured is not None else []
    tokenizer = loaded.tokenizer
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return sorted(set(ids))


def context_length(loaded: LoadedModel) -> int | None:
    """Tokens the model can attend to (prompt + reply), or None when it has no fixed limit."""
    return model_context_length(loaded.model, loaded.tokenizer)


class _StopOnEvent(StoppingCriteria):
    """Ends `generate` at the next token once the event is set (user pressed stop, or the client went away)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _CountingStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that also counts generated tokens and times the first one."""

    def __init__(self, tokenizer, **kwargs) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, **kwargs)
        self.generated = 0
        self.first_token_at: float | None = None
        self._seen_prompt = False

    def put(self, value) -> None:
        if self._seen_prompt:
            self.generated += value.numel()
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
        self._seen_prompt = True
        super().put(value)


def cache_tokens(loaded: LoadedModel, prompt_tokens: int, new_tokens: int) -> int:
    """The static cache length a generation needs (`start_generate`'s `total_tokens`): prompt + reply for a
    decoder-only model; for seq2seq the longer of the prompt (the cross-attention cache holds the encoder's output)
    and the reply after the decoder's start token (its self-attention cache), see quant.seq2seq_decode."""
    if loaded.source.kind == "seq2seq":
        return max(prompt_tokens, new_tokens + 1)
    return prompt_tokens + new_tokens


YIELDED_TO_BATCH = ("A Batch job is running on the compiled path: this reply runs eagerly, so that it starts now "
                    "instead of after the job's current batch (its tokens come slower).")


_chat_streams: dict[torch.device, torch.cuda.Stream] = {}


def chat_stream(loaded: LoadedModel) -> contextlib.AbstractContextManager:
    """Where an eager chat runs its GPU work: on a model whole on one GPU, a CUDA stream of its own with the highest
    priority (one per GPU, shared by every chat); elsewhere, and for a model whose kernels launch on the default
    stream whatever the current one is (`LoadedModel.default_stream_reason`: GPTQ on ExLlamaV2), the thread's current
    stream.

    Why: a Batch job (its grouped prefill, its compiled steps) runs on the GPU's default stream, PyTorch's legacy
    one. A chat there would queue behind the job's kernels, and even copying its prompt to the GPU waits for them: a
    job's prefill queues seconds of work. On a stream of its own its kernels do not wait for the job's, and at the
    highest priority the GPU runs them as soon as it has room. One stream for all chats: the allocator keeps freed
    memory per stream, so a stream per reply would scatter its cache.
    """
    device = loaded.device
    if (device.type != "cuda" or loaded.group is not None
            or len(set(loaded.report.device_map.values())) != 1 or loaded.default_stream_reason):
        return contextlib.nullcontext()
    if device not in _chat_streams:  # a lower number is a higher priority; one past the range maps to the highest
        _chat_streams.setdefault(device, torch.cuda.Stream(device, priority=-100))
    return torch.cuda.stream(_chat_streams[device])


def start_generate(loaded: LoadedModel, kwargs: dict, *, batch_size: int, total_tokens: int,
                   seed: GenerationSettings | None = None,
                   prepare_eager: Callable[[dict], dict] | None = None,
                   notices: list[str] | None = None) -> tuple[Future, bool]:
    """Run `model.generate(**kwargs)` on the model's generation path; returns its future and whether it is compiled.

    The compiled path runs it on the compiled runner thread with a warmed static cache when `batch_size` is one of the
    compiled sizes and prompt + reply (`total_tokens`, see `cache_tokens`) fit; anything else runs eagerly on a thread
    of its own. `prepare_eager(kwargs) -> kwargs`: run first on the generating thread, on the eager path only.
    `notices`: given for a chat (batch 1), which then runs eagerly while batch work holds the compiled runner thread,
    saying so there; a chat that runs eagerly runs on its own CUDA stream (`chat_stream`). Tensors in `kwargs` may
    be on the CPU: they are moved to the model's device on the generating thread (on that stream).
    """
    compiled_batch = loaded.path.compiled_batch_size(batch_size, total_tokens)
    if notices is not None and compiled_batch == 1 and runner_busy_with_batches():
        compiled_batch = None  # not queued behind a compiled chunk of a batch job (seconds) or its compile
        notices.append(YIELDED_TO_BATCH)
    if compiled_batch is not None and compiled_batch != batch_size:
        raise GenerationError(f"Internal: a batch of {batch_size} must be padded to {compiled_batch} first.")
    if compiled_batch is not None:
        prepare_eager = None
    on_chat_stream = notices is not None and compiled_batch is None

    def generate(**call_kwargs):
        check_token_ids(loaded, call_kwargs.get("input_ids"))
        seeded = seed is not None and _seed(seed)  # on the generating thread, right before it samples
        try:
            with torch.inference_mode(), chat_stream(loaded) if on_chat_stream else contextlib.nullcontext():
                call_kwargs = {key: value.to(loaded.device) if isinstance(value, torch.Tensor) else value
                               for key, value in call_kwargs.items()}
                if prepare_eager is not None:  # e.g. a ragged batch's grouped prefill (quant.ragged)
                    call_kwargs = prepare_eager(call_kwargs)
                return loaded.generate(**call_kwargs)
        finally:
            if seeded:
                torch.seed()  # the next unseeded reply (any session's) must not follow from this seed

    compiled = compiled_batch is not None or (loaded.group is not None  # every rank on its compiled path
                                              and loaded.group.compiled_for(batch_size, total_tokens))
    return loaded.path.submit(generate, kwargs, compiled_batch, total_tokens), compiled


def check_token_ids(loaded: LoadedModel, input_ids: torch.Tensor | None) -> None:
    """Refuse token ids past the model's embedding table (a tokenizer with added tokens the checkpoint never got
    rows for): the embedding lookup would fail with an IndexError, or read out of bounds in a compiled kernel."""
    if input_ids is None or input_ids.numel() == 0:
        return
    rows = loaded.model.get_input_embeddings().num_embeddings
    largest = int(input_ids.max())
    if largest >= rows:
        raise GenerationError(f"The prompt holds token id {largest}, but the model's embedding table has {rows} rows: "
                              "its tokenizer does not match the checkpoint (tokens added without resizing the "
                              "embeddings).", "Use the tokenizer saved with this model, or avoid those tokens.")


def end_stream_when_failed(future: Future, streamer: TextIteratorStreamer) -> None:
    """A `generate` that fails never ends its streamer: end it then, so that whoever reads the stream stops waiting
    (and sees the failure through the future) instead of hanging until the streamer's timeout."""
    future.add_done_callback(lambda done: None if done.cancelled() or done.exception() is None else streamer.end())


# --- chat ---------------------------------------------------------------------------------------------------------


@dataclass
class ChatPrompt:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    used_template: bool
    dropped_turns: int = 0
    """Oldest turns left out so that the prompt and reply fit in the context."""
    max_new_tokens: int = 0
    """The reply's budget: the requested one, or less when the context has no more room."""


def _plain_prompt(messages: list[dict]) -> str:
    """Fallback for tokenizers without a chat template: labelled turns, ending with an open assistant turn."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def check_message_size(loaded: LoadedModel | None, text: str | None, what: str = "The message") -> None:
    """Refuse a chat message or system prompt that cannot fit, from its length alone (before it is tokenized):
    over MAX_MESSAGE_CHARS, or over what the model's context could hold at MAX_CHARS_PER_TOKEN."""
    size = len(text or "")
    limit = context_length(loaded) if loaded is not None else None
    if size > MAX_MESSAGE_CHARS:
        raise GenerationError(f"{what} is too long: {size:,} characters; the limit is {MAX_MESSAGE_CHARS:,}.",
                              "Shorten it, or use the Batch tab for text as data.")
    if limit is not None and size > limit * MAX_CHARS_PER_TOKEN:
        raise GenerationError(f"{what} is too long for this model: {size:,} characters, far past its context of "
                              f"{limit} tokens.", "Shorten it.")


def _special_strings(tokenizer) -> list[str]:
    """The texts that a tokenizer turns into special tokens (<|eot_id|>, <|im_start|>, </s>...)."""
    strings = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    strings |= {str(token) for token in decoder.values() if getattr(token, "special", False)}
    return sorted((s for s in strings if s), key=len, reverse=True)


def _encode_as_text(tokenizer, text: str) -> list[int]:
    """Token ids of user text in which special-token strings stay text (never a real end-of-turn or role marker)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode_template_with_user_text(tokenizer, messages: list[dict]) -> torch.Tensor:
    """The chat template applied around the messages, with the messages' contents encoded as plain text.

    Each content is replaced by a unique marker, the template is rendered and encoded with its own special tokens,
    and each marker's place gets its content encoded with special tokens split (`split_special_tokens`). Used only
    when a message holds a special-token string, so ordinary prompts encode exactly as `apply_chat_template` does.
    """
    markers = [f"\ue000QUANTMSG{i}\ue001" for i in range(len(messages))]
    rendered = tokenizer.apply_chat_template(
        [{**m, "content": marker} for m, marker in zip(messages, markers)], add_generation_prompt=True,
        tokenize=False)
    ids: list[int] = []
    rest = rendered
    for marker, message in zip(markers, messages):
        before, found, rest = rest.partition(marker)
        if not found:  # a template that rewrites contents: it cannot be spliced, so encode the text as plain text
            return torch.tensor([_encode_as_text(tokenizer, rendered.replace(marker, message["content"]))])
        ids += tokenizer(before, add_special_tokens=False)["input_ids"] + _encode_as_text(tokenizer, message["content"])
    ids += tokenizer(rest, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids])


def _encode_chat(tokenizer, messages: list[dict]) -> tuple[torch.Tensor, bool]:
    specials = _special_strings(tokenizer)
    user_specials = any(s in m["content"] for m in messages for s in specials)
    if getattr(tokenizer, "chat_template", None):
        if user_specials:
            return _encode_template_with_user_text(tokenizer, messages), True
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        return encoded["input_ids"], True
    return tokenizer(_plain_prompt(messages), return_tensors="pt",
                     split_special_tokens=user_specials)["input_ids"], False


def build_chat_prompt(loaded: LoadedModel, history: list[dict], system_prompt: str | None,
                      max_new_tokens: int) -> ChatPrompt:
    """Encode system prompt + history with the model's template; drop the oldest turns if it does not fit."""
    turns = [{"role": m["role"], "content": str(m["content"])} for m in history if m.get("content")]
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise GenerationError("Type a message first.")
    system = [{"role": "system", "content": system_prompt.strip()}] if system_prompt and system_prompt.strip() else []
    if loaded.source.kind == "seq2seq" and not getattr(loaded.tokenizer, "chat_template", None):
        # A seq2seq model without a template is no chat model: it answers the latest message on its own.
        encoded = loaded.tokenizer(turns[-1]["content"], return_tensors="pt", truncation=True)
        return ChatPrompt(encoded["input_ids"], encoded["attention_mask"], False, len(turns) // 2, max_new_tokens)
    limit = context_length(loaded)
    # Refused before tokenizing: a pasted book would otherwise be encoded (slowly) only to be refused after.
    check_message_size(loaded, turns[-1]["content"], "The message")
    check_message_size(loaded, system_prompt, "The system prompt")
    dropped = 0
    while True:
        input_ids, used_template = _encode_chat(loaded.tokenizer, system + turns)
        if limit is None or input_ids.shape[1] + max_new_tokens <= limit or len(turns) <= 1:
            break
        turns = turns[2:] if len(turns) > 2 else turns[1:]  # drop the oldest user/assistant pair
        dropped += 1
    room = max_new_tokens if limit is None else min(max_new_tokens, limit - input_ids.shape[1])
    if room < min(16, max_new_tokens):
        raise GenerationError(
            f"The message is too long for this model: {input_ids.shape[1]} prompt tokens leave no room for a reply "
            f"in its context of {limit}.",
            "Shorten the message.",
        )
    return ChatPrompt(input_ids, torch.ones_like(input_ids), used_template, dropped, room)


@dataclass
class GenerationStats:
    new_tokens: int = 0
    seconds: float = 0.0
    time_to_first_token: float | None = None
    mode: str = ""
    path: str = ""
    """"compiled" or "eager": which generation path served this reply."""
    stopped: bool = False
    prompt_tokens: int = 0
    max_new_tokens: int = 0
    """The reply's budget: a reply of this many tokens ended on the limit, not on its own."""

    @property
    def hit_the_limit(self) -> bool:
        return not self.stopped and self.max_new_tokens > 0 and self.new_tokens >= self.max_new_tokens

    @property
    def tokens_per_second(self) -> float:
        """Decode rate: tokens after the first over the time after the first."""
        if self.time_to_first_token is None or self.new_tokens < 2:
            return 0.0
        return (self.new_tokens - 1) / max(self.seconds - self.time_to_first_token, 1e-9)

    def summary(self) -> str:
        ttft = f"{self.time_to_first_token:.2f} s" if self.time_to_first_token is not None else "n/a"
        text = (f"{self.new_tokens} tokens · first token {ttft} · {self.tokens_per_second:.1f} tok/s · "
                f"{self.mode}" + (f" · {self.path}" if self.path else ""))
        return text + (" · stopped" if self.stopped else "")


@dataclass
class ChatChunk:
    text: str
    """The reply so far."""
    stats: GenerationStats
    notices: list[str] = field(default_factory=list)
    done: bool = False


def _seed(settings: GenerationSettings) -> bool:
    """Seed torch's generator for a sampled reply with a fixed seed; returns whether it did."""
    if settings.do_sample and settings.seed is not None:
        torch.manual_seed(int(settings.seed))
        return True
    return False


def stream_chat(loaded: LoadedModel, history: list[dict], *, system_prompt: str | None = None,
                settings: GenerationSettings = GenerationSettings(), stop: threading.Event | None = None,
                on_start: Callable[[], None] | None = None) -> Iterator[ChatChunk]:
    """Stream one assistant reply to `history` (role/content dicts ending with a user turn), token by token.

    Setting `stop`, or closing the iterator (a client that goes away), ends `generate` on the server at the next
    token; the generation thread is joined before this returns. `on_start` is called once the request is accepted
    and its generation queued, before the first token (an HTTP server sends its response headers then, off the
    first token's path, while errors in the request itself still come before it).
    """
    settings.validate()
    prompt = build_chat_prompt(loaded, history, system_prompt, settings.max_new_tokens)
    notices = []
    if not prompt.used_template:
        notices.append("No chat template: each message is sent on its own (seq2seq)." if loaded.source.kind == "seq2seq"
                       else "This tokenizer has no chat template: a plain 'User:/Assistant:' prompt is used.")
    if prompt.dropped_turns and prompt.used_template:
        notices.append(f"The conversation is longer than the context: the {prompt.dropped_turns} oldest exchange(s) "
                       "were left out.")
    if prompt.max_new_tokens < settings.max_new_tokens:
        notices.append(f"Max new tokens lowered to {prompt.max_new_tokens} to fit the model's context.")
    yield from _stream(loaded, prompt.input_ids, prompt.attention_mask, settings, prompt.max_new_tokens, stop, notices,
                       on_start)


def stream_completion(loaded: LoadedModel, text: str, *, settings: GenerationSettings = GenerationSettings(),
                      stop: threading.Event | None = None,
                      on_start: Callable[[], None] | None = None) -> Iterator[ChatChunk]:
    """Stream the continuation of `text` as it is (no chat template): a completion, as OpenAI's /v1/completions
    gives. The same path, streamer, stop, limits and `on_start` as a chat reply."""
    settings.validate()
    if not text:
        raise GenerationError("The prompt is empty.")
    check_message_size(loaded, text, "The prompt")
    encoded = loaded.tokenizer(text, return_tensors="pt")
    input_ids = encoded["input_ids"]
    limit = context_length(loaded)
    room = settings.max_new_tokens
    if limit is not None and loaded.source.kind == "causal":
        room = min(room, limit - input_ids.shape[1])
        if room < 1:
            raise GenerationError(f"The prompt is too long for this model: {input_ids.shape[1]} tokens leave no room "
                                  f"in its context of {limit}.", "Shorten the prompt.")
    notices = [f"Max new tokens lowered to {room} to fit the model's context."] if room < settings.max_new_tokens else []
    yield from _stream(loaded, input_ids, encoded.get("attention_mask", torch.ones_like(input_ids)), settings, room,
                       stop, notices, on_start)


def _stream(loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: GenerationSettings,
            max_new_tokens: int, stop: threading.Event | None, notices: list[str],
            on_start: Callable[[], None] | None = None) -> Iterator[ChatChunk]:
    """Generate from encoded inputs on the model's path, yielding the text as it grows, then a final chunk."""
    stop = stop or threading.Event()
    streamer = _CountingStreamer(loaded.tokenizer, timeout=600)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, streamer=streamer,  # moved on its thread
                  stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]), eos_token_id=stop_token_ids(loaded),
                  pad_token_id=loaded.tokenizer.pad_token_id,
                  **{**settings.generate_kwargs(), "max_new_tokens": max_new_tokens})
    started = time.perf_counter()  # time to first token includes waiting for the model's runner
    future, compiled = start_generate(loaded, kwargs, batch_size=1, seed=settings, notices=notices,
                                      total_tokens=cache_tokens(loaded, input_ids.shape[1], max_new_tokens))
    end_stream_when_failed(future, streamer)
    stats = GenerationStats(mode=loaded.request.mode.value, path="compiled" if compiled else "eager",
                            prompt_tokens=int(input_ids.shape[1]), max_new_tokens=max_new_tokens)
    # Timestamps of a reply's life on the server (bench/chat_latency.py lines them up with what a client receives).
    log.debug("chat reply started: %d prompt tokens, %s path", input_ids.shape[1], stats.path)
    if on_start is not None:
        on_start()
    text = ""
    try:
        for piece in streamer:
            if piece and not text:
                log.debug("chat reply: first text")
            text += piece
            stats.new_tokens = streamer.generated
            stats.seconds = time.perf_counter() - started
            if streamer.first_token_at is not None:
                stats.time_to_first_token = streamer.first_token_at - started
            if piece:
                yield ChatChunk(text, stats, notices)
    finally:
        stats.stopped = stop.is_set()
        stop.set()  # a consumer that leaves early (GeneratorExit) stops the generation too
        future.cancel()  # still queued behind another session's generation: never starts
        wait([future])
    failure = None if future.cancelled() else future.exception()
    if failure is not None:
        if isinstance(failure, GenerationError):
            raise failure
        first_line = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
        raise GenerationError(f"Generation failed: {first_line}")
    stats.new_tokens = streamer.generated
    stats.seconds = time.perf_counter() - started
    if streamer.first_token_at is not None:
        stats.time_to_first_token = streamer.first_token_at - started
    log.debug("chat reply finished: %s", stats.summary())
    yield ChatChunk(text, stats, notices, done=True)


def at_most_every(chunks: Iterator[ChatChunk], seconds: float) -> Iterator[ChatChunk]:
    """Pass the first chunk at once (time to first token), then at most one per `seconds`, and always the last.

    A UI redraws the whole reply per update; at hundreds of tokens per second that work competes with generation
    for the GIL (bench/chat_latency.py measured the HTTP stream at 0.68x the direct rate with an update per token).
    Closing this iterator closes `chunks`, so the generation stops.
    """
    last_sent = None
    try:
        for chunk in chunks:
            now = time.perf_counter()
            if chunk.done or last_sent is None or now - last_sent >= seconds:
                last_sent = now
                yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


# --- batches ------------------------------------------------------------------------------------------------------


def batch_texts(loaded: LoadedModel, prompts: list[str], use_chat_template: bool,
                system_prompt: str | None) -> list[str]:
    """The prompts as the model gets them: wrapped in the chat template (with the system prompt) if asked."""
    if not use_chat_template:
        return prompts
    if not getattr(loaded.tokenizer, "chat_template", None):
        raise GenerationError("This tokenizer has no chat template, so the prompts cannot be wrapped in one.",
                              "Run the prompts as they are (without the chat template option).")
    system = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    return [loaded.tokenizer.apply_chat_template(system + [{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]


class _RowsDone(BaseStreamer):
    """Tells `done(row, token_ids)` once per row of a batch, as soon as that row's reply ends (its first stop token),
    from the tokens `generate` streams each step for all rows: so a Batch table fills in as replies end, not when the
    longest reply of their batch does. Rows that run to the token limit are left to the end of the batch."""

    def __init__(self, rows: int, stop_ids: set[int], done: Callable[[int, list[int]], None]) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.ended = [False] * rows
        self.stop_ids, self.done = stop_ids, done

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:  # `generate` hands over the prompt (decoder-only) or the decoder's start first
            return
        for row, token in enumerate(value.tolist()[:len(self.tokens)]):  # a compiled size's filler rows left out
            if self.ended[row]:
                continue
            self.tokens[row].append(token)
            if token in self.stop_ids:
                self.ended[row] = True
                self.done(row, self.tokens[row])

    def end(self) -> None:
        pass


def _reply(tokenizer, row: list[int], stop_ids: set[int]) -> tuple[str, int]:
    """A reply's text and new token count: its tokens up to and including the first stop token."""
    count = 0
    for token in row:
        count += 1
        if token in stop_ids:
            break
    return tokenizer.decode(row[:count], skip_special_tokens=True), count


def _grouped_prefill(loaded: LoadedModel, attention_mask: torch.Tensor) -> Callable[[dict], dict] | None:
    """quant.ragged's prefill in groups for a padded batch with this mask, where it applies (QUANT_BATCH_PREFILL=grouped,
    a model whose cache allows it, padding worth skipping): a `prepare_eager` for start_generate, or None."""
    if (load_settings().batch_prefill != "grouped" or ragged.refusal(loaded) is not None
            or not ragged.worth_it(attention_mask)):
        return None

    def prefill(kwargs: dict) -> dict:
        try:
            cache, _ = ragged.prefill_in_groups(loaded.model, kwargs["input_ids"], kwargs["attention_mask"])
        except Exception:  # noqa: BLE001 - the batch is prefilled whole instead, as before
            log.warning("Prefilling a batch in groups failed on %s; prefilling it whole.", loaded.label,
                        exc_info=True)
            return kwargs
        return {**kwargs, "past_key_values": cache}

    return prefill


def generate_batch(loaded: LoadedModel, prompts: list[str], settings: GenerationSettings, *,
                   use_chat_template: bool = False, system_prompt: str | None = None,
                   stop: threading.Event | None = None,
                   on_reply: Callable[[int, str, int], None] | None = None) -> list[tuple[str, int]]:
    """Generate for one batch; returns (text, new token count) per prompt.

    Decoder-only models are padded on the left, so every prompt ends where generation starts; seq2seq models keep
    right padding (the encoder sees the whole input, the decoder starts fresh). The shared tokenizer is never mutated:
    the padding side is passed per call. `on_reply(row, text, count)`: called (on the generating thread) as each
    reply ends at a stop token, before the batch is done, with what this returns for that row.
    """
    tokenizer = loaded.tokenizer
    texts = batch_texts(loaded, prompts, use_chat_template, system_prompt)
    causal = loaded.source.kind == "causal"
    templated = use_chat_template  # the template already holds the BOS token
    encoded = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left" if causal else "right",
                        add_special_tokens=not templated)
    limit = context_length(loaded)
    total = encoded["input_ids"].shape[1] + (settings.max_new_tokens if causal else 0)
    if limit is not None and total > limit:
        raise GenerationError(
            f"A prompt of this batch has {int(encoded['attention_mask'].sum(1).max())} tokens: with "
            f"{settings.max_new_tokens} new tokens that is past the model's context of {limit}.")
    compiled_total = cache_tokens(loaded, encoded["input_ids"].shape[1], settings.max_new_tokens)
    compiled_batch = loaded.path.compiled_batch_size(len(texts), compiled_total)
    if compiled_batch is not None and compiled_batch > len(texts):
        # The compiled decode step exists for fixed batch sizes: fill up with copies, drop their rows below.
        extra = compiled_batch - len(texts)
        encoded = BatchEncoding({name: torch.cat([rows, rows[-1:].repeat(extra, 1)]) for name, rows in encoded.items()})
    criteria = StoppingCriteriaList([_StopOnEvent(stop)]) if stop is not None else None
    stop_ids = set(stop_token_ids(loaded)) | {tokenizer.pad_token_id}
    streamer = None
    if on_reply is not None:
        streamer = _RowsDone(len(texts), stop_ids, lambda row, ids: on_reply(row, *_reply(tokenizer, ids, stop_ids)))
    grouped = _grouped_prefill(loaded, encoded["attention_mask"]) if causal else None
    future, _ = start_generate(loaded, dict(**encoded.to(loaded.device), eos_token_id=stop_token_ids(loaded),
                                         pad_token_id=tokenizer.pad_token_id, stopping_criteria=criteria,
                                         streamer=streamer, **settings.generate_kwargs()),
                            batch_size=encoded["input_ids"].shape[0], total_tokens=compiled_total, seed=settings,
                            prepare_eager=grouped)
    out = future.result()[:len(texts)]
    new = out[:, encoded["input_ids"].shape[1]:] if causal else out[:, 1:]
    return [_reply(tokenizer, row, stop_ids) for row in new.tolist()]
