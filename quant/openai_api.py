"""An OpenAI-compatible API on the models loaded in this process: `GET /v1/models`, `POST /v1/chat/completions`,
`POST /v1/completions`, streamed (server-sent events ending in `[DONE]`) or not.

Why: a team's own evaluation scripts and tools (the `openai` SDK, LangChain, lm-eval's `local-chat-completions`,
curl) speak this protocol. The routes are served by the app's own web server and use the same registry, leases and
generation path as the Chat tab: never a second copy of a model, and they never load one (loading stays the Model
tab's or the operator's act). Only models shared by everyone are served: one a visitor loaded with their own token
stays theirs.

Access: off unless the operator sets QUANT_API_KEY; then every request must carry it as a bearer token. The key is
compared in constant time and never logged or echoed.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' parameter annotations (`Request`) at
# runtime, from the function's globals, and `Request` is imported inside build_router.
import asyncio
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from .errors import ModelNotLoadedError, QuantError
from .generation import MAX_NEW_TOKENS_LIMIT, SEED_MAX, ChatChunk, GenerationSettings, stream_chat, stream_completion
from .registry import ModelRegistry, default_registry
from .settings import load_settings

STARTED = object()
"""What `ApiService.run` yields before the first chunk: the generation accepted the request."""
API_VISITOR = "openai-api"
"""The visitor id of API clients: they see the models shared by everyone, none loaded with someone's token."""
MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOKENS = 256


class ApiError(Exception):
    """An error in OpenAI's shape: HTTP status, message, type, and the offending parameter."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def api_key() -> str | None:
    """QUANT_API_KEY: the bearer token API clients must send; unset, the API is off."""
    return os.environ.get("QUANT_API_KEY", "").strip() or None


def check_access(authorization: str | None) -> None:
    key = api_key()
    if key is None:
        raise ApiError(403, "The OpenAI-compatible API is off on this server: its operator turns it on by setting "
                            "QUANT_API_KEY.", "permission_error", code="api_off")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "Invalid API key: send the server's key as 'Authorization: Bearer <key>'.",
                       "authentication_error", code="invalid_api_key")


def served_models(registry: ModelRegistry) -> dict[str, str]:
    """Model id (the Model tab's label, e.g. `demo:tiny-llama-chat [bf16]`) -> registry key, for the models shared
    by everyone; the most recently used wins where two loads share a label, and every key is an id as well."""
    ids: dict[str, str] = {}
    for loaded in registry.loaded(API_VISITOR):
        if loaded.request.owner is None:
            ids[loaded.label] = loaded.key
            ids[loaded.key] = loaded.key
    return ids


# --- parameters ---------------------------------------------------------------------------------------------------

def _number(body: dict, name: str, kind: type, low: float, high: float, default):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ApiError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}.", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high} (got {value}).", param=name)
    return kind(value)


def generation_settings(body: dict) -> tuple[GenerationSettings, list[str]]:
    """The request's sampling parameters as the Chat tab's settings, and its stop sequences."""
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported: one choice per request.", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", int, 1, MAX_NEW_TOKENS_LIMIT, DEFAULT_MAX_TOKENS)
    temperature = _number(body, "temperature", float, 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", float, 0.0, 1.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be above 0.", param="top_p")
    seed = _number(body, "seed", int, 0, SEED_MAX, None)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else [] if stop is None else None
    if stops is None or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP_SEQUENCES:
        raise ApiError(400, f"'stop' must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings.",
                       param="stop")
    settings = GenerationSettings(max_new_tokens=max_tokens, do_sample=temperature > 0,
                                  temperature=temperature if temperature > 0 else 0.7, top_p=top_p, top_k=0,
                                  seed=seed)
    return settings, stops


def chat_messages(body: dict) -> tuple[list[dict], str | None]:
    """(user/assistant turns, the system prompt) from OpenAI's `messages`."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    turns, system = [], []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported.", param="messages")
            content = "".join(p["text"] for p in content)
        if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] must have a role (system, user or assistant) and text content.",
                           param="messages")
        if role in ("system", "developer"):
            system.append(content)
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[-1]["role"] != "user":
        raise ApiError(400, "The last message must be the user's.", param="messages")
    return turns, "\n\n".join(system) or None


# --- stop sequences -----------------------------------------------------------------------------------------------

@dataclass
class _Cut:
    """Text as generated so far, with stop sequences applied: what may be sent, and whether a stop sequence ended
    it. Streaming holds back the tail that could still become a stop sequence."""

    stops: list[str]
    text: str = ""
    sent: int = 0
    stopped_by_sequence: bool = False

    def update(self, text: str, final: bool) -> str:
        """The new text that may be sent now."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.text, self.stopped_by_sequence = text[:min(found)], True
            ready = len(self.text)
        else:
            self.text = text
            hold = max((len(s) - 1 for s in self.stops), default=0)
            ready = len(text) if final else max(len(text) - hold, self.sent)
        piece, self.sent = self.text[self.sent:ready], max(ready, self.sent)
        return piece


# --- the service --------------------------------------------------------------------------------------------------

class OpenAIService:
    """Admission (a running and a waiting limit, as the app's queue has), model lookup and the generation loop."""

    def __init__(self, registry: Callable[[], ModelRegistry] = default_registry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._admitted = 0
        self._running: threading.Semaphore | None = None

    def _admit(self) -> threading.Semaphore:
        settings = load_settings()
        with self._lock:
            if self._running is None:
                self._running = threading.Semaphore(settings.concurrency)
            if self._admitted >= settings.concurrency + settings.queue_size:
                raise ApiError(429, "The server is busy: too many requests are running or waiting. Retry shortly.",
                               "rate_limit_error", code="queue_full")
            self._admitted += 1
            return self._running

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def model_key(self, name) -> str:
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' must name a loaded model (GET /v1/models lists them).", param="model")
        ids = served_models(self._registry())
        if name not in ids:
            loaded = ", ".join(sorted(i for i in ids if "@" not in i)) or "none"
            raise ApiError(404, f"The model '{name[:200]}' is not loaded on this server (loaded: {loaded}). Models are "
                                "loaded in the app's Model tab; this API does not load them.", param="model",
                           code="model_not_found")
        return ids[name]

    async def run(self, key: str, work: Callable[..., Iterator[ChatChunk]]) -> AsyncIterator[ChatChunk | object]:
        """Drive `work(loaded, stop, on_start)` on a thread of its own, under a lease of the model, yielding STARTED
        once the generation accepted the request, then its chunks. A caller that stops iterating (a client gone) sets
        `stop`: the generation ends at its next token."""
        running = self._admit()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def post(kind: str, item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:
                pass  # the event loop is gone with the client

        def drive() -> None:
            try:
                with running:
                    if stop.is_set():
                        return
                    with self._registry().use(key, API_VISITOR) as loaded:
                        for chunk in work(loaded, stop, lambda: post("started", None)):
                            post("chunk", chunk)
            except ModelNotLoadedError:
                post("error", ApiError(503, "The model was unloaded before this request could run. Retry, or pick "
                                            "another model (GET /v1/models).", "service_unavailable",
                                       code="model_unloaded"))
            except QuantError as exc:
                post("error", ApiError(400, str(exc)))
            except Exception as exc:  # noqa: BLE001 - one clear error to the client; the log has the rest
                post("error", ApiError(500, f"Generation failed: {type(exc).__name__}: {str(exc)[:300]}",
                                       "server_error"))
            finally:
                self._release()
                post("end", None)

        threading.Thread(target=drive, name="quant-openai-api", daemon=True).start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield STARTED if kind == "started" else item
        finally:
            stop.set()


def _chunks(kind: str, loaded_body: dict, settings: GenerationSettings):
    """The generation `work` for a chat or a completion request."""
    if kind == "chat":
        turns, system = chat_messages(loaded_body)
        return lambda loaded, stop, on_start: stream_chat(loaded, turns, system_prompt=system, settings=settings,
                                                          stop=stop, on_start=on_start)
    prompt = loaded_body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request).", param="prompt")
    return lambda loaded, stop, on_start: stream_completion(loaded, prompt, settings=settings, stop=stop,
                                                            on_start=on_start)


def _usage(chunk: ChatChunk | None) -> dict:
    prompt = chunk.stats.prompt_tokens if chunk else 0
    completion = chunk.stats.new_tokens if chunk else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def build_router(service: OpenAIService | None = None):
    """The /v1 routes, for the app's FastAPI server (fastapi is imported here only: `quant` stays usable without)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    service = service or OpenAIService()
    router = APIRouter(prefix="/v1")

    def error(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @router.get("/models")
    async def models(request: Request):
        try:
            check_access(request.headers.get("authorization"))
        except ApiError as exc:
            return error(exc)
        now = int(time.time())
        ids = [i for i in served_models(service._registry()) if "@" not in i]
        return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "quant-playground"}
                                           for i in ids]}

    async def complete(request: Request, kind: str):
        try:
            check_access(request.headers.get("authorization"))
            try:
                body = json.loads(await request.body())
            except ValueError:
                raise ApiError(400, "The request body is not valid JSON.") from None
            if not isinstance(body, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            key = service.model_key(body.get("model"))
            settings, stops = generation_settings(body)
            work = _chunks(kind, body, settings)
        except ApiError as exc:
            return error(exc)
        model = body["model"]
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        cut = _Cut(stops)

        def finish_reason(chunk: ChatChunk | None) -> str:
            return "length" if chunk and chunk.stats.hit_the_limit and not cut.stopped_by_sequence else "stop"

        if not body.get("stream"):
            last = None
            chunks = service.run(key, work)
            try:
                async for item in chunks:
                    if item is STARTED:
                        continue
                    last = item
                    cut.update(last.text, last.done)
                    if cut.stopped_by_sequence:
                        break
            except ApiError as exc:
                return error(exc)
            finally:
                await chunks.aclose()  # a stop sequence ends the generation at its next token
            if last is not None and not cut.stopped_by_sequence:
                cut.update(last.text, True)
            choice = ({"index": 0, "message": {"role": "assistant", "content": cut.text},
                       "finish_reason": finish_reason(last)} if kind == "chat" else
                      {"index": 0, "text": cut.text, "logprobs": None, "finish_reason": finish_reason(last)})
            return {"id": ident, "object": "chat.completion" if kind == "chat" else "text_completion",
                    "created": created, "model": model, "choices": [choice], "usage": _usage(last)}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = service.run(key, work)
        # The response starts once the generation has accepted the request: errors before that (a busy queue, a
        # prompt too long) keep their HTTP status, and the headers are on their way while the prompt is prefilled,
        # so that the first words are one write behind the first token.
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = None
        except ApiError as exc:
            return error(exc)

        def event(delta: dict | None, text: str | None, reason: str | None, usage: dict | None = None) -> str:
            if kind == "chat":
                choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": reason}]
                payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": choices}
            else:
                choices = [] if text is None else [{"index": 0, "text": text, "logprobs": None,
                                                    "finish_reason": reason}]
                payload = {"id": ident, "object": "text_completion", "created": created, "model": model,
                           "choices": choices}
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        async def events() -> AsyncIterator[str]:
            last = None if first is STARTED else first
            # The role opens the stream in the same write as the first words: one packet, not two.
            opening = event({"role": "assistant", "content": ""}, None, None) if kind == "chat" else ""
            try:
                current = await chunks.__anext__() if first is STARTED else first
                while current is not None:
                    last = current
                    piece = cut.update(current.text, current.done)
                    if piece or opening:
                        yield opening + (event({"content": piece}, piece, None) if piece else "")
                        opening = ""
                    if cut.stopped_by_sequence:
                        break
                    current = await chunks.__anext__() if not current.done else None
            except StopAsyncIteration:
                pass
            except ApiError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            finally:
                await chunks.aclose()  # a client gone mid-stream stops the generation here
            yield event({}, "", finish_reason(last))
            if include_usage:
                yield event(None, None, None, usage=_usage(last))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, "chat")

    @router.post("/completions")
    async def completions(request: Request):
        return await complete(request, "completion")

    return router
