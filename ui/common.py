"""What every tab uses: the UI's words (`t`), errors as messages, who a request comes from, sliders that name
themselves in messages, and the Stop buttons' reach into the server's loops."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import queue
import re
import threading
import uuid
from typing import Any, Callable, Iterator

import gradio as gr
from gradio.utils import get_space

from quant.errors import QuantError
from quant.ui_strings import EN, KO

log = logging.getLogger("quant.app")
t = gr.I18n(en=EN, ko=KO)
"""The UI's words by key (quant/ui_strings.py): the browser's language picks English or Korean."""
ON_SPACE = get_space() is not None
"""On a Hugging Face Space: visitors log in with OAuth, and the Space's own HF_TOKEN is never used for them."""


PLOT_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#ff9da6", "#9d755d",
                "#bab0ac")
"""Vega's tableau10, for the plots that give each series its colour themselves (ui.compare_tab says why)."""


def as_text(message: str) -> str:
    """A message shown as the text it is: Gradio renders toasts as (sanitized) HTML."""
    return html.escape(message, quote=False)


def _as_ui_error(fn_name: str, exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return gr.Error(as_text(str(exc.message)), print_exception=False)
    if isinstance(exc, QuantError):
        return gr.Error(as_text(str(exc)), print_exception=False)
    log.exception("unexpected error in %s", fn_name)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return gr.Error(as_text(f"Unexpected error ({type(exc).__name__}): {first_line}"), print_exception=False)


def user_errors(fn):
    """Turn errors into messages in the UI: QuantError as it is, anything else as one line (details in the log).

    Messages are HTML-escaped: Gradio renders a toast's text as (sanitized) HTML, and messages quote what users typed
    (a model id, a seed), which must show as text, never as markup that fetches an image.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the app must keep serving
                raise _as_ui_error(fn.__name__, exc) from None

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the app must keep serving; the log has the traceback
            raise _as_ui_error(fn.__name__, exc) from None

    return wrapper


def visitor_of(request: gr.Request | None) -> str:
    """Who a request comes from: the signed-in Hugging Face user (a Space with login), else the browser session (or
    API client). Models loaded with a visitor's token, their load history and their outputs are theirs alone."""
    if request is not None and getattr(request, "username", None):
        return f"user:{request.username}"
    session = getattr(request, "session_hash", None)
    # No session (a bare HTTP call): a visitor of one request, so that nothing it loads with a token is shared.
    return f"session:{session}" if session else f"request:{uuid.uuid4().hex}"


def language_of(request: gr.Request | None) -> str:
    """"ko" or "en", whichever the browser ranks first (Accept-Language): text the server writes (the load report)
    cannot go through gr.I18n, which picks its table by the browser's language on the page."""
    header = ""
    if request is not None:
        header = (getattr(request, "headers", None) or {}).get("accept-language", "") or ""
    ranked = []
    for position, part in enumerate(header.split(",")):
        tag, _, parameters = part.strip().partition(";")
        weight = re.search(r"q\s*=\s*([0-9.]+)", parameters)
        try:
            quality = float(weight.group(1)) if weight else 1.0
        except ValueError:
            quality = 0.0
        ranked.append((-quality, position, tag.strip().lower().split("-")[0]))
    return next((language for _, _, language in sorted(ranked) if language in ("en", "ko")), "en")


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802 - used in place of gr.Slider
    """A gr.Slider whose missing value (null over the API, which is what a browser's JSON carries for NaN) is refused
    with a message naming the slider: Gradio's own bounds check fails on it before any app code, with no message.

    The check wraps this instance's `preprocess`: a subclass would be a new component class, for which Gradio writes a
    type-stub file (.pyi) beside the module defining it at every import (and fails where the folder is read-only).
    """
    slider = gr.Slider(*args, **kwargs)
    preprocess = slider.preprocess

    def refuse_missing(payload):
        if payload is None:
            key = getattr(slider.label, "key", None)
            raise gr.Error(f"{EN.get(key, key or 'This slider')} must be a number.", print_exception=False)
        return preprocess(payload)

    slider.preprocess = refuse_missing
    return slider


class InBackground:
    """Run `work(emit)` in a thread and, iterated, give what it emits as it emits it; then `result` holds its return
    value (its exception is raised to the iterating handler instead).

    For a handler that streams updates from a long blocking call (quantization, a batch): the call's callbacks come
    from its own threads, the handler yields from the thread Gradio runs it in. Closed early (Gradio closes a stream on
    its event loop when the page goes or the run is cancelled), it sets `stop`, which ends the work at its next check,
    and does not wait for it: waiting would hold the server's event loop.

    Gradio can close a handler only between two of its yields, and its /cancel request waits for that. So when the
    work emits nothing for `idle_seconds`, iteration gives `IDLE` (the handler yields an update that changes nothing),
    and a cancel is answered within about that time, not when the work next emits (a whole prompt or layer later)."""

    _DONE = object()
    IDLE = object()
    """Given after `idle_seconds` without an emitted value."""

    def __init__(self, work: Callable[[Callable[[Any], None]], Any], stop: threading.Event,
                 idle_seconds: float = 0.5):
        self.work, self.stop, self.idle_seconds, self.result = work, stop, idle_seconds, None

    def __iter__(self) -> Iterator[Any]:
        events: queue.SimpleQueue = queue.SimpleQueue()
        outcome: dict[str, Any] = {}

        def run():
            try:
                outcome["value"] = self.work(events.put)
            except BaseException as exc:  # noqa: BLE001 - raised again in the handler's thread
                outcome["error"] = exc
            finally:
                events.put(self._DONE)

        thread = threading.Thread(target=run, name="quant-background", daemon=True)
        thread.start()
        try:
            while True:
                try:
                    event = events.get(timeout=self.idle_seconds)
                except queue.Empty:
                    event = self.IDLE
                if event is self._DONE:
                    break
                yield event
        finally:
            if thread.is_alive():
                self.stop.set()
        if "error" in outcome:
            raise outcome["error"]
        self.result = outcome.get("value")


def progress_fn(progress: gr.Progress):
    """A `quant` progress callback (fraction, message) drawn by Gradio's progress bar."""
    return lambda fraction, message: progress(fraction, desc=message)


# --- Stop buttons ---------------------------------------------------------------------------------------------------

_stop_events: dict[str, threading.Event] = {}
"""The running generation of each browser session (by session hash), so that Stop reaches the server's loop."""
_stop_lock = threading.Lock()


def new_stop_event(request: gr.Request | None) -> threading.Event:
    """The event this session's Stop buttons set, for the run that starts now (it replaces an earlier one's)."""
    event = threading.Event()
    if request is not None and request.session_hash:
        with _stop_lock:
            _stop_events[request.session_hash] = event
    return event


def forget_session(request: gr.Request) -> None:
    """A closed tab: drop its stop event, so the table holds live sessions only (one event each at most)."""
    if request is not None and request.session_hash:
        with _stop_lock:
            _stop_events.pop(request.session_hash, None)


def request_stop(request: gr.Request):
    """Stop this session's running chat, batch, comparison or quantization at its next step."""
    with _stop_lock:
        event = _stop_events.pop(request.session_hash, None) if request and request.session_hash else None
    if event is not None:
        event.set()


def stop_button(button: gr.Button, api_name: str) -> None:
    """Wire a Stop button: it runs outside the queue, so it is heard while the run it stops holds a slot."""
    button.click(request_stop, None, None, queue=False, api_name=api_name)
