"""Quantization Playground: the Gradio UI. Wiring only; all the work is done by the `quant` package."""

from __future__ import annotations

import contextlib
import csv
import functools
import html
import inspect
import logging
import os
import socket
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch
from gradio.utils import get_space

from quant.access import served_folders
from quant.attention import IMPLEMENTATIONS
from quant.errors import ModelNotLoadedError, QuantError
from quant.compare import (
    DEFAULT_PROMPTS,
    Comparison,
    ModeSpec,
    compare,
    highlight_differences,
    parse_mode_specs,
    relative_to_baseline,
    write_json,
)
from quant.quality import THRESHOLDS_TEXT
from quant.generation import (
    SEED_MAX,
    GenerationSettings,
    at_most_every,
    check_message_size,
    run_batch,
    stream_chat,
)
from quant.gptq import GPTQRecipe
from quant.hub import default_repo_id, push_folder
from quant.quantize import CALIBRATION_TEXTSETS, CalibrationData, expire_visitor_outputs, output_folder, quantize
from quant.loader import LoadRequest
from quant.openai_api import api_key, build_router
from quant.methods import GPTQ_BACKENDS, Mode, QuantOptions
from quant.placement import DEVICE_MAP_CHOICES
from quant.prompts import (
    MAX_PROMPT_CHARS,
    SCRATCH_MAX_AGE_SECONDS,
    check_text_items,
    parse_lines,
    read_prompt_file,
    scratch_folder,
    spreadsheet_safe,
    write_results,
)
from quant.registry import default_registry
from quant.settings import SettingsError, load_settings
from quant.ui_strings import EN, KO
from quant.source import demo_models, hub_reachable

log = logging.getLogger("quant.app")
t = gr.I18n(en=EN, ko=KO)
ON_SPACE = get_space() is not None
"""On a Hugging Face Space: visitors log in with OAuth, and the Space's own HF_TOKEN is never used for them."""
DEFAULT_ATTN = "(model default)"


def _as_text(message: str) -> str:
    """A message shown as the text it is: Gradio renders toasts as (sanitized) HTML."""
    return html.escape(message, quote=False)


def _as_ui_error(fn_name: str, exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return gr.Error(_as_text(str(exc.message)), print_exception=False)
    if isinstance(exc, QuantError):
        return gr.Error(_as_text(str(exc)), print_exception=False)
    log.exception("unexpected error in %s", fn_name)
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return gr.Error(_as_text(f"Unexpected error ({type(exc).__name__}): {first_line}"), print_exception=False)


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


def model_choices() -> tuple[list[str], str, str]:
    """Models offered in the model box, the one selected first, and a note on where they come from.

    The note is Markdown with one translation marker (the browser's language picks its words).
    """
    settings = load_settings()
    demos = demo_models()
    if settings.default_model.startswith("demo:") or os.path.isdir(settings.default_model):
        return [settings.default_model, *[d for d in demos if d != settings.default_model]], settings.default_model, ""
    if hub_reachable():
        return [settings.default_model, *demos], settings.default_model, ""
    return demos, demos[0], f"`{settings.default_model}`: " + t("offline.note")


def visitor_of(request: gr.Request | None) -> str:
    """Who a request comes from: the signed-in Hugging Face user (a Space with login), else the browser session (or
    API client). Models loaded with a visitor's token, their load history and their outputs are theirs alone."""
    if request is not None and getattr(request, "username", None):
        return f"user:{request.username}"
    session = getattr(request, "session_hash", None)
    # No session (a bare HTTP call): a visitor of one request, so that nothing it loads with a token is shared.
    return f"session:{session}" if session else f"request:{uuid.uuid4().hex}"


def loaded_choices(visitor: str) -> list[tuple[str, str]]:
    return [(m.label, m.key) for m in default_registry().loaded(visitor)]


def loaded_table(visitor: str) -> list[list]:
    registry = default_registry()
    return [
        [m.label, round(m.report.footprint_bytes / 2**20, 1), m.report.dtype, registry.in_use(m.key)]
        for m in registry.loaded(visitor)
    ]


HISTORY_HEADERS = ["model", "mode", "params (M)", "footprint (MiB)", "RAM before→after (MiB)", "GPU alloc (MiB)",
                   "load (s)", "compile (s)", "generation", "quantized layers"]
"""Columns of LoadReport.summary_row shown in the Model tab."""


def history_table(visitor: str) -> list[list]:
    """One row per load of this visitor's, by header name: a column added to the report's summary cannot shift the
    others."""
    rows = [r.summary_row() for r in default_registry().history(visitor)]
    return [[row.get(h) for h in HISTORY_HEADERS] for row in rows]


def number(value, cast, name: str):
    """A number from a form field, or a message naming the field (an emptied box, or null over the API). Ranges,
    NaN included, are checked by `quant` where the number is used."""
    try:
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"{name} must be a number.", print_exception=False) from None


def build_request(model, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                  compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn,
                  visitor: str) -> LoadRequest:
    return LoadRequest(
        model=model or "",
        owner=visitor,
        folders=served_folders(),
        mode=mode,
        revision=(revision or "").strip() or None,
        device_map=device_map or "auto",
        max_memory=max_memory or None,
        attn_implementation=None if attn in (None, "", DEFAULT_ATTN) else attn,
        options=QuantOptions(
            int8_threshold=number(int8_threshold if int8_threshold is not None else 6.0, float,
                                  "The LLM.int8 outlier threshold"),
            int8_skip_modules=tuple(m.strip() for m in (skip_modules or "").split(",") if m.strip()),
            int8_cpu_offload=bool(int8_offload),
            bnb4_double_quant=bool(double_quant),
            bnb4_compute_dtype=compute_dtype or "bf16",
            bnb4_quant_storage=quant_storage or "uint8",
            gptq_backend=gptq_backend or None,
        ),
        token=(token or "").strip() or None,
    )


def Slider(*args, **kwargs) -> gr.Slider:  # noqa: N802 - used in place of gr.Slider
    """A gr.Slider whose missing value (null over the API, which is what a browser's JSON carries for NaN) is refused
    with a message naming the slider: Gradio's own bounds check fails on it before any app code, with no message.

    The check wraps this instance's `preprocess`: a subclass would be a new component class, for which Gradio writes a
    type-stub file (app.pyi) beside this module at every import (and fails where the folder is read-only).
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


def _progress_fn(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


LOAD_FIELDS = ("model", "revision", "token", "mode", "int8_threshold", "skip_modules", "int8_offload", "double_quant",
               "compute_dtype", "quant_storage", "gptq_backend", "device_map", "max_memory", "attn")


@user_errors
def load(model, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant, compute_dtype,
         quant_storage, gptq_backend, device_map, max_memory, attn, request: gr.Request,
         progress=gr.Progress(track_tqdm=True)):
    """Load a model (or reuse it if this exact load is already in memory) and show its load report."""
    visitor = visitor_of(request)
    request = build_request(model, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                            compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn, visitor)
    registry = default_registry()
    evicted_before = len(registry.evicted)
    loaded = registry.load(request, progress=_progress_fn(progress))
    for label in registry.evicted[evicted_before:]:
        gr.Info(f"Unloaded {label} (idle) to make room.")
    for warning in loaded.report.warnings:
        gr.Warning(warning)
    status = f"**{_as_text(loaded.label)}** loaded in {loaded.report.load_seconds:.1f} s."
    return (status, loaded.report.to_text(), gr.Dropdown(choices=loaded_choices(visitor), value=loaded.key),
            loaded.key, loaded_table(visitor), history_table(visitor))


@user_errors
def measure_modes(modes, model, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                  compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)):
    """Load the model in each ticked mode one after another (unloading each), to fill the comparison table."""
    if not modes:
        raise gr.Error("Tick at least one mode to measure.")
    visitor = visitor_of(request)
    registry = default_registry()
    failures = []
    for i, mode in enumerate(modes):
        progress(i / len(modes), desc=f"Loading in {mode}")
        load_request = build_request(model, revision, token, mode, int8_threshold, skip_modules, int8_offload,
                                     double_quant, compute_dtype, quant_storage, gptq_backend, device_map, max_memory,
                                     attn, visitor)
        already_loaded = {m.key for m in registry.loaded(visitor)}
        try:
            loaded = registry.load(load_request)
        except QuantError as exc:
            failures.append(f"{mode}: {exc}")
            continue
        if loaded.key not in already_loaded and registry.in_use(loaded.key) == 0:
            registry.unload(loaded.key, visitor)
    for failure in failures:
        gr.Warning(_as_text(failure))
    done = len(modes) - len(failures)
    return (f"Measured {done} of {len(modes)} mode(s).", gr.Dropdown(choices=loaded_choices(visitor)),
            loaded_table(visitor), history_table(visitor))


@user_errors
def unload(key, request: gr.Request):
    if not key:
        raise gr.Error("Pick a loaded model to unload.")
    visitor = visitor_of(request)
    label = default_registry().unload(key, visitor)
    choices = loaded_choices(visitor)
    new_key = choices[-1][1] if choices else None
    return (f"Unloaded **{_as_text(label)}**.", gr.Dropdown(choices=choices, value=new_key), new_key,
            loaded_table(visitor))


def select_model(key):
    return key


def model_notes(key, request: gr.Request):
    """The Chat and Batch tabs' line saying which model answers this tab, and the Model tab's API line."""
    visitor = visitor_of(request)
    note = active_model_note(key, visitor)
    return note, note, api_note(key, visitor, request)


def api_note(key, visitor: str, request: gr.Request | None) -> str:
    """Where the OpenAI-compatible API is and which model id to send (or that it is off, and how to turn it on)."""
    if api_key() is None:
        return t("api.off")
    base = str(getattr(request, "base_url", "") or "").rstrip("/") or "http://<this server>"
    model = ""
    try:
        loaded = default_registry().get(model_for_session(key, visitor), visitor)
        if loaded.request.owner is None:
            model = f" · model `{loaded.label}`"
    except QuantError:
        pass
    return t("api.on") + f" `{base}/v1`{model}"


def refresh(request: gr.Request):
    """The Model tab's shared tables as this visitor may see them (a new or reloaded tab too)."""
    visitor = visitor_of(request)
    return gr.Dropdown(choices=loaded_choices(visitor)), loaded_table(visitor), history_table(visitor)


def toggle_mode_options(mode):
    m = Mode(mode)
    return (gr.Group(visible=m.is_bitsandbytes), gr.Group(visible=m is Mode.INT8),
            gr.Group(visible=m in (Mode.NF4, Mode.FP4)), gr.Group(visible=m is Mode.GPTQ),
            f"*{m.value}*: " + t(f"mode.{m.value}"))


# --- chat and batch ---------------------------------------------------------------------------------------------

_stop_events: dict[str, threading.Event] = {}
"""The running generation of each browser session (by session hash), so that Stop reaches the server's loop."""
_stop_lock = threading.Lock()


def _new_stop_event(request: gr.Request | None) -> threading.Event:
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
    """Stop this session's running chat or batch at its next token."""
    with _stop_lock:
        event = _stop_events.pop(request.session_hash, None) if request and request.session_hash else None
    if event is not None:
        event.set()


def model_for_session(key: str | None, visitor: str) -> str:
    """The key of this session's model: the one chosen in the Model tab, else the most recently used one this visitor
    may use. A chosen model that is gone is an error, never silently another model (whose answers the tab would
    attribute to the one it names)."""
    registry = default_registry()
    visible = registry.loaded(visitor)
    if key:
        if any(m.key == key for m in visible):
            return key
        raise ModelNotLoadedError(
            "The model this tab was using is no longer loaded (another session unloaded it, or it was evicted to "
            "make room).", "Load it again, or pick a loaded model in the Model tab.")
    if not visible:
        raise ModelNotLoadedError("No model is loaded.", "Load one in the Model tab first.")
    return visible[-1].key


def active_model_note(key, visitor: str) -> str:
    try:
        label = default_registry().get(model_for_session(key, visitor), visitor).label
    except QuantError:
        return t("model.gone") if key else t("no_model")
    return t("answering") + f" **{_as_text(label)}**"




def parse_seed(value) -> int | None:
    """The Seed box: empty means no seed (a new random one each reply); else a whole number, refused otherwise.

    The box is text, not a gr.Number, because a Number shows and sends 0 when empty: every sampled reply would be
    seeded with 0.
    """
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    try:
        seed = int(text)
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed <= SEED_MAX:
        raise gr.Error(f"Seed must be a whole number from 0 to {SEED_MAX}, or empty for a random seed "
                       f"(got {text[:40]!r}).", print_exception=False)
    return seed


def settings_from_ui(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty, no_repeat_ngram,
                     seed) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=number(max_new_tokens, int, "Max new tokens"), do_sample=bool(do_sample),
        temperature=number(temperature, float, "Temperature"), top_p=number(top_p, float, "Top-p"),
        top_k=number(top_k, int, "Top-k"), repetition_penalty=number(repetition_penalty, float, "Repetition penalty"),
        no_repeat_ngram_size=number(no_repeat_ngram, int, "No-repeat n-gram size"),
        seed=parse_seed(seed),
    )


def chat_display(messages: list[dict]) -> list[dict]:
    """What the Chatbot shows: each reply with its footer (tokens, speed, mode) under it."""
    shown = []
    for m in messages:
        content = m["content"]
        if m.get("footer"):
            content = f"{content}\n\n---\n*{m['footer']}*"
        shown.append({"role": m["role"], "content": content})
    return shown


UI_UPDATE_SECONDS = 0.04
"""The chat redraws at most 25 times a second; the reply's own speed is measured on the server, token by token."""


@user_errors
def add_user_message(message, messages, key, request: gr.Request):
    """Add the message to this session's conversation, once it is known to fit: a refused message never enters the
    conversation (every later reply would encode it again)."""
    if not (message or "").strip():
        raise gr.Error("Type a message first.")
    visitor = visitor_of(request)
    registry = default_registry()
    try:
        loaded = registry.get(model_for_session(key, visitor), visitor)
    except QuantError:
        loaded = None  # the reply says which model is missing
    check_message_size(loaded, message, "The message")
    messages = [*messages, {"role": "user", "content": message.strip()}]
    return "", messages, chat_display(messages)


@user_errors
def respond(key, messages, system_prompt, max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
            no_repeat_ngram, seed, request: gr.Request):
    """Stream the reply to the last user message; the reply is saved in the session state as it grows."""
    settings = settings_from_ui(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                                no_repeat_ngram, seed)
    if not messages or messages[-1]["role"] != "user":
        raise gr.Error("Type a message first.")
    stop = _new_stop_event(request)
    registry = default_registry()
    visitor = visitor_of(request)
    with registry.use(model_for_session(key, visitor), visitor) as loaded:
        history = [{"role": m["role"], "content": m["content"]} for m in messages]
        reply = {"role": "assistant", "content": "", "footer": "…"}
        chunks = stream_chat(loaded, history, system_prompt=system_prompt, settings=settings, stop=stop)
        for chunk in at_most_every(chunks, UI_UPDATE_SECONDS):
            reply = {"role": "assistant", "content": chunk.text,
                     "footer": chunk.stats.summary() if chunk.done else f"{chunk.stats.new_tokens} tokens…"}
            if chunk.done:
                for notice in chunk.notices:
                    gr.Warning(_as_text(notice))
            updated = [*messages, reply]
            yield chat_display(updated), updated


def regenerate_prepare(messages):
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise gr.Error("Nothing to regenerate.")
    return messages, chat_display(messages)


def undo(messages):
    """Remove the last exchange and put its message back in the box."""
    text = ""
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if messages and messages[-1]["role"] == "user":
        text = messages[-1]["content"]
        messages = messages[:-1]
    return text, messages, chat_display(messages)


BATCH_HEADERS = ["line", "prompt", "output", "new tokens", "seconds", "error"]
BATCH_COLUMN_WIDTHS = ["6%", "27%", "37%", "8%", "8%", "14%"]
"""Fixed shares, so long outputs wrap inside their column and the error column stays on screen."""


def _batch_table(rows) -> list[list]:
    return [[r.line, r.prompt, r.output, r.new_tokens, round(r.seconds, 2), r.error] for r in rows]


@user_errors
def run_batch_ui(key, pasted, upload, column, use_template, system_prompt, batch_size, max_new_tokens, do_sample,
                 temperature, top_p, top_k, repetition_penalty, no_repeat_ngram, seed, request: gr.Request,
                 progress=gr.Progress()):
    """Run the batch, filling the table as batches finish; then offer the CSV and JSONL files."""
    settings = settings_from_ui(max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                                no_repeat_ngram, seed)
    prompts = read_prompt_file(upload, column) if upload else parse_lines(pasted or "")
    batch_size = number(batch_size, int, "Batch size")
    stop = _new_stop_event(request)
    visitor = visitor_of(request)
    with default_registry().use(model_for_session(key, visitor), visitor) as loaded:
        result = None
        progress(0, desc=f"0/{len(prompts)} prompts")
        for result in run_batch(loaded, prompts, settings, batch_size=batch_size,
                                use_chat_template=bool(use_template), system_prompt=system_prompt, stop=stop):
            progress(result.done / result.total, desc=f"{result.done}/{result.total} prompts")
            yield _batch_table(result.rows), result.totals(), None
    files = write_results(result.rows, scratch_folder("batch"))
    yield _batch_table(result.rows), result.totals(), [str(f) for f in files]


# --- quantize and push --------------------------------------------------------------------------------------------

QUANT_METHODS = [(t(f"quantize.method.{method}"), method) for method in ("gptq", "int8", "nf4")]


def _token(typed: str | None, oauth=None) -> str | None:
    """The visitor's token: their Hugging Face login (on a Space), else the one typed, else (locally) HF_TOKEN.

    On a Space, HF_TOKEN is the Space owner's secret: it is never used on a visitor's behalf.
    """
    if oauth is not None and getattr(oauth, "token", None):
        return oauth.token
    typed = (typed or "").strip() or None
    return typed if ON_SPACE else typed or os.environ.get("HF_TOKEN") or None


@user_errors
def run_quantize(model, revision, token, method, bits, group_size, desc_act, sym, damp_percent, num_samples, seq_len,
                 calibration_source, calibration_text, calibration_file, request: gr.Request,
                 progress=gr.Progress(), oauth=None):
    """Quantize, save, measure; returns the comparison, the folder and its files (for download). `token` reads the
    source model (gated or private), from the Quantize tab's own token box, or the visitor's login on a Space."""
    recipe = GPTQRecipe(bits=number(bits, int, "Bits"), group_size=number(group_size, int, "Group size"),
                        desc_act=bool(desc_act), sym=bool(sym),
                        damp_percent=number(damp_percent, float, "Damp percent"),
                        num_samples=number(num_samples, int, "Calibration samples"),
                        seq_len=number(seq_len, int, "Calibration length"))
    if calibration_source == "paste" and not (calibration_text or "").strip():
        raise gr.Error("Paste some calibration text, or choose the built-in set.")
    if calibration_source == "upload" and not calibration_file:
        raise gr.Error("Upload a .txt or .jsonl calibration file, or choose the built-in set.")
    calibration = CalibrationData(builtin=CALIBRATION_TEXTSETS[0],
                                  text=calibration_text if calibration_source == "paste" else None,
                                  file=calibration_file if calibration_source == "upload" else None)
    stop = _new_stop_event(request)
    expire_visitor_outputs(load_settings().output_max_age_hours)  # this server's disk holds every visitor's outputs
    result = quantize(model or "", method=method, recipe=recipe, calibration=calibration,
                      revision=(revision or "").strip() or None, token=_token(token, oauth),
                      progress=lambda f, m: progress(f, desc=m), stop=stop, visitor=visitor_of(request),
                      folders=served_folders())
    folder = Path(result.out_dir)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    status = (f"Saved to `{_as_text(folder.name)}` in {result.seconds:.0f} s"
              + (f"; the quantized model loads with {result.kernel} layers." if result.kernel else "."))
    if result.quality:
        status += f"\n\nNext-token quality against the original: {result.quality['verdict']}."
    for warning in result.warnings:
        status += f"\n\n**Warning:** {_as_text(warning)}"
    username = getattr(request, "username", None)
    # With a login the repo id is proposed whole; without one, the Push box stays empty (its placeholder shows the
    # form), rather than holding a "<user>/..." that Push would refuse.
    return (status, result.comparison_rows(), str(folder), files, default_repo_id(username, folder) if username else "")


@user_errors
def run_push(folder, repo_id, private, overwrite, token, request: gr.Request, progress=gr.Progress(), oauth=None):
    """Push a quantized folder (only this visitor's own, under the output directory) to the Hub."""
    folder_path = Path((folder or "").strip()).expanduser().resolve()
    root = output_folder(visitor_of(request))
    if not folder or root not in folder_path.parents:
        raise gr.Error("Only folders this session quantized (under the output directory) can be pushed: quantize "
                       "first.")
    result = push_folder(folder_path, repo_id, token=_token(token, oauth), private=bool(private), overwrite=bool(overwrite),
                         progress=lambda f, m: progress(f, desc=m))
    return f"Pushed to [{result.repo_id}]({result.url}) (commit {result.commit[:10]})."


def run_push_with_login(folder, repo_id, private, overwrite, token, request: gr.Request,
                        oauth_token: gr.OAuthToken | None, progress=gr.Progress()):
    """run_push on a Space: the visitor's OAuth token (Gradio injects it from their login)."""
    return run_push(folder, repo_id, private, overwrite, token, request, progress=progress, oauth=oauth_token)


def run_quantize_with_login(model, revision, token, method, bits, group_size, desc_act, sym, damp_percent, num_samples,
                            seq_len, calibration_source, calibration_text, calibration_file, request: gr.Request,
                            oauth_token: gr.OAuthToken | None, progress=gr.Progress()):
    """run_quantize on a Space, downloading the source with the visitor's login."""
    return run_quantize(model, revision, token, method, bits, group_size, desc_act, sym, damp_percent, num_samples,
                        seq_len, calibration_source, calibration_text, calibration_file, request, progress=progress,
                        oauth=oauth_token)


def toggle_quant_method(method):
    return gr.Group(visible=method == "gptq")


def toggle_calibration(source):
    return gr.Textbox(visible=source == "paste"), gr.File(visible=source == "upload")


# --- compare ------------------------------------------------------------------------------------------------------

COMPARE_MAX_PROMPTS = 16
"""Each Compare prompt is answered greedily by every mode and feeds the batch measurement: a handful is plenty."""

COMPARE_HEADERS = ["mode", "error", "footprint (MiB)", "load (s)", "RAM (MiB)", "peak GPU (MiB)", "first token (s)",
                   "decode b1 (tok/s)", "batch (tok/s)", "perplexity", "ppl ratio", "KL mean", "KL p99", "top-1 (%)",
                   "Δp mean", "Δp p1", "verdict", "quantized layers", "attention", "compile (s)", "generation path"]
"""The quality columns (ppl ratio ... verdict) are against the 16-bit reference of the same model (quant.quality)."""


def _compare_rows(results) -> list[list]:
    def num(value, scale=1.0, digits=2):
        return None if value is None else round(value / scale, digits)

    rows = []
    for r in results:
        layers = ", ".join(f"{k}×{v}" for k, v in (r.linear_layers or {}).items() if k != "Linear") or (
            "" if r.error else "none")
        rows.append([r.label, r.error or "", num(r.footprint_bytes, 2**20, 1), num(r.load_seconds),
                     num(r.ram_bytes, 2**20, 0), num(r.peak_gpu_bytes, 2**20, 1), num(r.time_to_first_token_s, 1, 3),
                     num(r.decode_tokens_per_s, 1, 1), num(r.batch_tokens_per_s, 1, 1), num(r.perplexity),
                     num(r.perplexity_ratio, 1, 4), num(r.kl_mean, 1, 5), num(r.kl_p99, 1, 5),
                     num(r.top1_agreement, 1, 2), num(r.dp_mean, 1, 5), num(r.dp_p1, 1, 5), r.verdict, layers,
                     r.attn_implementation or "", num(r.compile_seconds, 1, 1), r.generation_path])
    return rows


COMPARE_METRICS = ("memory", "decode", "batch", "perplexity")
"""The Compare tab's bar plots, one per metric (keys of quant.compare.relative_to_baseline)."""
MODE_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#ff9da6", "#9d755d",
                "#bab0ac")
"""Vega's tableau10: a mode keeps its colour in every plot and as more modes finish."""


def _relative_plots(results) -> list[gr.BarPlot]:
    """One bar plot per metric, with a bar per mode side by side, in the order the modes ran.

    One plot per metric because Gradio 6.31's BarPlot stacks the bars of a category instead of grouping them. And
    it fixes its colour domain (the modes) when it draws: a streamed value only swaps the data, so the bars of modes
    that finish later would have no fill (invisible). Each update therefore carries the colour map of every mode so
    far: a changed colour map makes the plot draw itself again, with the new domain.
    """
    import pandas as pd

    relative = relative_to_baseline(results)
    order = [r.label for r in results if r.label in relative]
    colours = {label: MODE_COLOURS[i % len(MODE_COLOURS)] for i, label in enumerate(order)}
    plots = []
    for metric in COMPARE_METRICS:
        frame = pd.DataFrame([{"mode": label, "× 16-bit": relative[label][metric]} for label in order
                              if relative[label].get(metric) is not None], columns=["mode", "× 16-bit"])
        plots.append(gr.BarPlot(value=frame, color_map=colours, sort=order))
    return plots


def _kl_plot(results) -> gr.LinePlot:
    """Mean KL(reference || mode) of each evaluation window, a line per mode (x: the window's first token)."""
    import pandas as pd

    order = [r.label for r in results if not r.error and r.kl_per_window]
    colours = {label: MODE_COLOURS[i % len(MODE_COLOURS)] for i, label in enumerate(order)}
    frame = pd.DataFrame([{"mode": r.label, "token position": i * (r.quality_stride or 0), "KL": kl}
                          for r in results if r.label in colours for i, kl in enumerate(r.kl_per_window)],
                         columns=["mode", "token position", "KL"])
    return gr.LinePlot(value=frame, color_map=colours)


def _quality_markdown(results) -> str:
    """Which reference, on which windows, the thresholds, and each mode's one-line verdict."""
    measured = [r for r in results if not r.error and r.reference]
    if not measured:
        failed = next((r.quality_error for r in results if r.quality_error), None)
        return f"No next-token quality: {failed}" if failed else ""
    first = measured[0]
    lines = [f"**Next-token quality against {first.reference}** on {first.quality_positions} positions "
             f"(windows of {first.quality_window} tokens, stride {first.quality_stride}). "
             f"Verdict thresholds: {THRESHOLDS_TEXT}.", ""]
    lines += [f"- **{r.label}**: {r.verdict}" for r in measured]
    return "\n".join(lines)


def _answers_html(prompts, results) -> str:
    ok = [r for r in results if not r.error and r.answers]
    if not ok:
        return ""
    base = ok[0]
    parts = ["<p>Greedy answers; words that differ from <b>" + html.escape(base.label) + "</b> are marked.</p>"]
    for i, prompt in enumerate(prompts):
        parts.append(f"<h4>{html.escape(prompt)}</h4><table><tr>" +
                     "".join(f"<th>{html.escape(r.label)}</th>" for r in ok) + "</tr><tr>")
        for r in ok:
            text = html.escape(r.answers[i]) if r is base else highlight_differences(base.answers[i], r.answers[i])
            parts.append(f"<td style='vertical-align:top'>{text}</td>")
        parts.append("</tr></table>")
    return "".join(parts)


@user_errors
def run_compare(model, modes, gptq_checkpoints, gptq_backend, attn_variants, prompts_text, batch_size, new_tokens,
                request: gr.Request, progress=gr.Progress()):
    """Measure the model in every chosen mode, one after another; rows appear as each mode finishes."""
    model = model or ""
    items = list(modes or []) + [f"gptq:{line.strip()}" for line in (gptq_checkpoints or "").splitlines()
                                 if line.strip()]
    specs = parse_mode_specs(model, items, gptq_backend or None)
    if attn_variants:
        specs = [ModeSpec(f"{attn}:{s.label}", s.mode, s.model, s.options, attn) for s in specs for attn in attn_variants]
    batch_size, new_tokens = number(batch_size, int, "Batch size"), number(new_tokens, int, "New tokens")
    # The same limits as a Batch run's prompts: before anything loads, and before any prompt is encoded.
    prompts = [text for _, text in check_text_items(
        [(i, p.strip()) for i, p in enumerate((prompts_text or "").splitlines(), 1) if p.strip()],
        "the Compare prompts", max_items=COMPARE_MAX_PROMPTS, max_chars=MAX_PROMPT_CHARS, allow_empty=True)] or None
    stop = _new_stop_event(request)
    results = []
    for result in compare(model, specs, registry=default_registry(), prompts=prompts, batch_size=batch_size,
                          new_tokens=new_tokens, progress=lambda f, m: progress(f, desc=m), stop=stop,
                          visitor=visitor_of(request), folders=served_folders()):
        results.append(result)
        if result.error:
            gr.Warning(_as_text(f"{result.label}: {result.error}"))
        yield (_compare_rows(results), *_relative_plots(results), _kl_plot(results), _quality_markdown(results), "",
               None)
    used_prompts = prompts or list(DEFAULT_PROMPTS)
    comparison = Comparison(model=model, prompts=used_prompts, batch_size=batch_size, new_tokens=new_tokens,
                            device="cuda" if torch.cuda.is_available() else "cpu", results=results)
    out_dir = scratch_folder("compare")
    json_path = write_json(comparison, out_dir / "comparison.json")
    csv_path = out_dir / "comparison.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COMPARE_HEADERS)
        writer.writerows([[spreadsheet_safe(cell) for cell in row] for row in _compare_rows(results)])
    yield (_compare_rows(results), *_relative_plots(results), _kl_plot(results), _quality_markdown(results),
           _answers_html(used_prompts, results),
           [str(json_path), str(csv_path)])


def build_app() -> gr.Blocks:
    choices, first, offline_note = model_choices()
    # Gradio's own cache (uploads, files handed out for download) is swept hourly of what is a day old.
    with gr.Blocks(title="Quantization Playground", delete_cache=(3600, SCRATCH_MAX_AGE_SECONDS)) as demo:
        active_key = gr.State(None)  # this browser session's selected model (a key; the registry owns models)
        with gr.Row():
            gr.Markdown(f"# {EN['title']} · {KO['title']}\n{EN['subtitle']} / {KO['subtitle']}")
            if ON_SPACE:
                gr.LoginButton()  # pushes use the visitor's own Hugging Face login, never the Space owner's
        if offline_note:
            gr.Markdown(f"> {offline_note}")
        with gr.Tabs():
            with gr.Tab(t("tab.model"), id="model"):
                with gr.Row():
                    with gr.Column(scale=3):
                        model_box = gr.Dropdown(choices=choices, value=first, allow_custom_value=True,
                                                label=t("model.box"))
                        with gr.Row():
                            revision = gr.Textbox(label=t("revision"), placeholder="main")
                            token = gr.Textbox(label=t("token"), type="password", placeholder=t("token.placeholder"))
                        mode = gr.Radio([m.value for m in Mode], value=Mode.BF16.value, label=t("mode"))
                        mode_help = gr.Markdown(f"*{Mode.BF16.value}*: " + t(f"mode.{Mode.BF16.value}"))
                        with gr.Group(visible=False) as bnb_group:
                            skip_modules = gr.Textbox(label=t("skip_modules"), placeholder=t("skip_modules.placeholder"))
                        with gr.Group(visible=False) as int8_group:
                            with gr.Row():
                                int8_threshold = gr.Number(value=6.0, label=t("int8.threshold"))
                                int8_offload = gr.Checkbox(label=t("int8.offload"))
                        with gr.Group(visible=False) as bnb4_group:
                            with gr.Row():
                                double_quant = gr.Checkbox(value=True, label=t("bnb4.double_quant"))
                                compute_dtype = gr.Dropdown(["bf16", "fp16", "fp32"], value="bf16",
                                                            label=t("bnb4.compute_dtype"))
                                quant_storage = gr.Dropdown(["uint8", "bf16", "fp16", "fp32"], value="uint8",
                                                            label=t("bnb4.quant_storage"))
                        with gr.Group(visible=False) as gptq_group:
                            gptq_backend = gr.Dropdown([(t("gptq.auto"), "")] +
                                                       [(t(f"gptq.{k}"), k) for k in GPTQ_BACKENDS],
                                                       value="", label=t("gptq.kernel"))
                        with gr.Accordion(t("placement"), open=False):
                            with gr.Row():
                                device_map = gr.Dropdown(list(DEVICE_MAP_CHOICES), value="auto",
                                                         allow_custom_value=True, label="device_map",
                                                         info=t("device_map.info"))
                                max_memory = gr.Textbox(label="max_memory", placeholder="0=20GiB, 1=20GiB, cpu=30GiB",
                                                        info=t("max_memory.info"))
                                attn = gr.Dropdown([(t("attention.default"), DEFAULT_ATTN),
                                                    *((name, name) for name in IMPLEMENTATIONS)],
                                                   value=DEFAULT_ATTN, label=t("attention"))
                            gr.Markdown(t("attention.note"))
                        with gr.Row():
                            load_btn = gr.Button(t("load"), variant="primary")
                            measure_modes_box = gr.CheckboxGroup([m.value for m in Mode if m is not Mode.GPTQ],
                                                                 value=["bf16", "int8", "nf4"],
                                                                 label=t("measure.modes"))
                            measure_btn = gr.Button(t("measure"))
                    with gr.Column(scale=2):
                        status = gr.Markdown()
                        # Keys are checked by the registry (a visitor's own models only): an API client may name one
                        # before its page has the choices.
                        loaded_dd = gr.Dropdown(choices=[], label=t("loaded"), allow_custom_value=True)
                        unload_btn = gr.Button(t("unload"))
                        api_line = gr.Markdown(t("api.off"))
                        loaded_df = gr.Dataframe([], headers=["model", "footprint (MiB)", "dtype", "in use"],
                                                 label=t("loaded.table"),
                                                 interactive=False)
                report_box = gr.Code(label=t("report"), language=None, lines=14)
                history_df = gr.Dataframe([], headers=HISTORY_HEADERS, interactive=False,
                                          label=t("history"))
                refresh_btn = gr.Button(t("refresh"), size="sm")

            with gr.Tab(t("tab.chat"), id="chat"):
                chat_note = gr.Markdown(t("no_model"))
                chat_state = gr.State([])  # this session's conversation: role, content, and a footer per reply
                chatbot = gr.Chatbot(label=t("chat.label"), height=420, buttons=["copy"])
                with gr.Row():
                    chat_box = gr.Textbox(show_label=False, placeholder=t("message"), scale=5, lines=1)
                    send_btn = gr.Button(t("send"), variant="primary", scale=1)
                with gr.Row():
                    chat_stop_btn = gr.Button(t("stop"))
                    regen_btn = gr.Button(t("regenerate"))
                    undo_btn = gr.Button(t("undo"))
                    clear_btn = gr.Button(t("clear"))
                system_prompt = gr.Textbox(label=t("system"), lines=2, placeholder=t("system.placeholder"))
                with gr.Accordion(t("settings"), open=False):
                    with gr.Row():
                        max_new_tokens = Slider(1, 2048, value=256, step=1, label=t("max_new_tokens"))
                        do_sample = gr.Checkbox(value=False, label=t("sample"))
                        seed = gr.Textbox(label=t("seed"), placeholder=t("seed.placeholder"), info=t("seed.info"),
                                          max_lines=1)
                    with gr.Row():
                        temperature = Slider(0.05, 2.0, value=0.7, step=0.05, label=t("temperature"))
                        top_p = Slider(0.05, 1.0, value=0.9, step=0.05, label=t("top_p"))
                        top_k = Slider(0, 200, value=50, step=1, label=t("top_k"))
                    with gr.Row():
                        repetition_penalty = Slider(0.5, 2.0, value=1.0, step=0.05, label=t("repetition_penalty"))
                        no_repeat_ngram = Slider(0, 10, value=0, step=1, label=t("no_repeat"))

            with gr.Tab(t("tab.batch"), id="batch"):
                batch_note = gr.Markdown(t("no_model"))
                with gr.Row():
                    batch_text = gr.Textbox(label=t("batch.prompts"), lines=8)
                    with gr.Column():
                        batch_file = gr.File(label=t("batch.upload"), file_types=[".txt", ".csv", ".jsonl"],
                                             type="filepath")
                        batch_column = gr.Textbox(label=t("batch.column"), placeholder="prompt")
                with gr.Row():
                    batch_template = gr.Checkbox(value=False, label=t("batch.template"))
                    batch_system = gr.Textbox(label=t("batch.system"))
                    batch_size = Slider(1, 64, value=8, step=1, label=t("batch.size"))
                gr.Markdown(t("batch.note"))
                with gr.Row():
                    batch_btn = gr.Button(t("batch.run"), variant="primary")
                    batch_stop_btn = gr.Button(t("stop"))
                batch_totals = gr.Markdown()
                batch_table = gr.Dataframe(headers=BATCH_HEADERS, interactive=False, wrap=True, label=t("batch.results"),
                                           column_widths=BATCH_COLUMN_WIDTHS)
                batch_files = gr.File(label=t("batch.download"), file_count="multiple", interactive=False)

            with gr.Tab(t("tab.compare"), id="compare"):
                gr.Markdown(t("compare.intro"))
                with gr.Row():
                    c_model = gr.Dropdown(choices=choices, value=first, allow_custom_value=True,
                                          label=t("compare.model"))
                    c_modes = gr.CheckboxGroup([m.value for m in Mode if m is not Mode.GPTQ],
                                               value=["bf16", "int8", "nf4"], label=t("compare.modes"))
                with gr.Row():
                    c_gptq = gr.Textbox(label=t("compare.gptq"), lines=2)
                    c_backend = gr.Dropdown([(t("gptq.auto"), "")] + [(k, k) for k in GPTQ_BACKENDS], value="",
                                            label=t("gptq.kernel"))
                    c_attn = gr.CheckboxGroup(["sdpa", "eager"], value=[], label=t("compare.attention"))
                with gr.Row():
                    c_prompts = gr.Textbox(label=t("compare.prompts"), lines=3)
                    c_batch = Slider(1, 64, value=8, step=1, label=t("compare.batch"))
                    c_tokens = Slider(4, 512, value=32, step=4, label=t("compare.tokens"))
                with gr.Row():
                    c_btn = gr.Button(t("compare.run"), variant="primary")
                    c_stop_btn = gr.Button(t("stop"))
                c_table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, wrap=True,
                                       label=t("compare.results"))
                gr.Markdown(t("compare.plots"))
                with gr.Row():
                    c_plots = [gr.BarPlot(x="mode", y="× 16-bit", color="mode", label=t(f"compare.plot.{metric}"),
                                          y_lim=[0, None], colors_in_legend=[], height=260, min_width=200)
                               for metric in COMPARE_METRICS]
                c_quality = gr.Markdown()
                c_kl_plot = gr.LinePlot(x="token position", y="KL", color="mode", label=t("compare.plot.kl"),
                                        colors_in_legend=[], height=260)
                c_answers = gr.HTML()
                c_files = gr.File(label=t("compare.export"), file_count="multiple", interactive=False)

            with gr.Tab(t("tab.quantize"), id="quantize"):
                with gr.Row():
                    q_model = gr.Dropdown(choices=choices, value=first, allow_custom_value=True,
                                          label=t("quantize.source"))
                    q_revision = gr.Textbox(label=t("revision"), placeholder="main")
                    q_token = gr.Textbox(label=t("token"), type="password", placeholder=t("token.placeholder"))
                q_method = gr.Radio(QUANT_METHODS, value="gptq", label=t("quantize.method"))
                with gr.Group() as gptq_recipe:
                    with gr.Row():
                        q_bits = gr.Dropdown([2, 3, 4, 8], value=4, label=t("quantize.bits"))
                        q_group = gr.Dropdown([("32", 32), ("64", 64), ("128", 128),
                                               (t("quantize.group.column"), -1)],
                                              value=128, label=t("quantize.group"))
                        q_desc_act = gr.Checkbox(value=False, label=t("quantize.desc_act"))
                        q_sym = gr.Checkbox(value=True, label=t("quantize.sym"))
                        q_damp = gr.Number(value=0.05, label=t("quantize.damp"))
                    with gr.Row():
                        q_samples = Slider(1, 1024, value=128, step=1, label=t("quantize.samples"))
                        q_seq_len = Slider(32, 4096, value=512, step=32, label=t("quantize.seq_len"))
                        q_cal_source = gr.Radio([(t(f"quantize.calibration.{source}"), source)
                                                 for source in ("builtin", "paste", "upload")],
                                                value="builtin", label=t("quantize.calibration"))
                    q_cal_text = gr.Textbox(label=t("quantize.calibration.text"), lines=6, visible=False)
                    q_cal_file = gr.File(label=t("quantize.calibration.file"), file_types=[".txt", ".jsonl"],
                                         type="filepath", visible=False)
                with gr.Row():
                    q_btn = gr.Button(t("quantize.run"), variant="primary")
                    q_stop_btn = gr.Button(t("stop"))
                q_status = gr.Markdown()
                q_table = gr.Dataframe(headers=["model", "size on disk (MiB)", "perplexity (held-out text)"],
                                       interactive=False, label=t("quantize.table"))
                q_files = gr.File(label=t("quantize.files"), file_count="multiple", interactive=False)
                gr.Markdown(t("push.intro"))
                with gr.Row():
                    push_folder_box = gr.Textbox(label=t("push.folder"))
                    push_repo = gr.Textbox(label=t("push.repo"), placeholder="user/model-GPTQ-4bit-g128")
                with gr.Row():
                    push_token = gr.Textbox(label=t("push.token"), type="password",
                                            placeholder=t("push.token.placeholder"))
                    push_private = gr.Checkbox(value=True, label=t("push.private"))
                    push_overwrite = gr.Checkbox(value=False, label=t("push.overwrite"))
                push_btn = gr.Button(t("push.run"))
                push_status = gr.Markdown()

        load_inputs = [model_box, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                       compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn]
        mode.change(toggle_mode_options, mode, [bnb_group, int8_group, bnb4_group, gptq_group, mode_help],
                    api_name=False)
        notes = [chat_note, batch_note]
        # A failed load shows its message once (the toast) and marks the status line only: the report, the tables
        # and the dropdown keep what they showed.
        load_btn.click(load, load_inputs, [status, report_box, loaded_dd, active_key, loaded_df, history_df],
                       api_name="load_model", concurrency_limit=1, concurrency_id="model-load",
                       show_progress_on=[status])
        measure_btn.click(measure_modes, [measure_modes_box, *load_inputs],
                          [status, loaded_dd, loaded_df, history_df],
                          api_name="measure_modes", concurrency_limit=1, concurrency_id="model-load",
                          show_progress_on=[status])
        unload_btn.click(unload, loaded_dd, [status, loaded_dd, active_key, loaded_df],
                         api_name="unload_model", show_progress_on=[status])
        loaded_dd.input(select_model, loaded_dd, active_key, api_name=False)
        active_key.change(model_notes, active_key, [*notes, api_line], api_name=False)
        refresh_btn.click(refresh, None, [loaded_dd, loaded_df, history_df], api_name="refresh")
        # A new or reloaded tab: the models this visitor may use, and notes that say which one answers.
        demo.load(refresh, None, [loaded_dd, loaded_df, history_df], api_name=False).then(
            model_notes, active_key, [*notes, api_line], api_name=False)
        demo.unload(forget_session)
        generation_inputs = [max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty,
                             no_repeat_ngram, seed]
        chat_run = dict(fn=respond, inputs=[active_key, chat_state, system_prompt, *generation_inputs],
                        outputs=[chatbot, chat_state], concurrency_id="generate")
        send_btn.click(add_user_message, [chat_box, chat_state, active_key], [chat_box, chat_state, chatbot],
                       api_name="chat_add_message").success(**chat_run, api_name="chat_respond")
        chat_box.submit(add_user_message, [chat_box, chat_state, active_key], [chat_box, chat_state, chatbot],
                        api_name=False).success(**chat_run, api_name=False)
        regen_btn.click(regenerate_prepare, chat_state, [chat_state, chatbot], api_name=False).then(
            **chat_run, api_name=False)
        undo_btn.click(undo, chat_state, [chat_box, chat_state, chatbot], api_name=False)
        clear_btn.click(lambda: ([], []), None, [chat_state, chatbot], api_name=False)
        chatbot.clear(lambda: [], None, chat_state, api_name=False)  # the Chatbot's own trash icon clears the state too
        chat_stop_btn.click(request_stop, None, None, queue=False, api_name="stop")
        batch_stop_btn.click(request_stop, None, None, queue=False, api_name="batch_stop")
        c_btn.click(run_compare, [c_model, c_modes, c_gptq, c_backend, c_attn, c_prompts, c_batch, c_tokens],
                    [c_table, *c_plots, c_kl_plot, c_quality, c_answers, c_files], api_name="compare",
                    concurrency_limit=1, concurrency_id="model-load", show_progress_on=[c_table])
        c_stop_btn.click(request_stop, None, None, queue=False, api_name="compare_stop")
        q_method.change(toggle_quant_method, q_method, gptq_recipe, api_name=False)
        q_cal_source.change(toggle_calibration, q_cal_source, [q_cal_text, q_cal_file], api_name=False)
        q_btn.click(run_quantize_with_login if ON_SPACE else run_quantize,
                    [q_model, q_revision, q_token, q_method, q_bits, q_group, q_desc_act, q_sym, q_damp, q_samples,
                     q_seq_len, q_cal_source, q_cal_text, q_cal_file],
                    [q_status, q_table, push_folder_box, q_files, push_repo], api_name="quantize",
                    concurrency_limit=1, concurrency_id="quantize", show_progress_on=[q_status])
        q_stop_btn.click(request_stop, None, None, queue=False, api_name="quantize_stop")
        push_btn.click(run_push_with_login if ON_SPACE else run_push, [push_folder_box, push_repo, push_private, push_overwrite, push_token],
                       push_status, api_name="push", concurrency_limit=2, concurrency_id="push")
        batch_btn.click(run_batch_ui, [active_key, batch_text, batch_file, batch_column, batch_template,
                                       batch_system, batch_size, *generation_inputs],
                        [batch_table, batch_totals, batch_files], api_name="run_batch", concurrency_id="generate")
    return demo


TABLE_CSS = "table th, table th * { overflow-wrap: normal !important; word-break: keep-all !important; }"
"""Table headers break between words, never inside one ("perplexit/y"); keep-all does the same for Korean."""


def launch_options(**overrides) -> dict:
    """How the app is served (the tests serve it the same way, on their own port). It listens on this machine only
    unless GRADIO_SERVER_NAME says otherwise (the Dockerfile sets 0.0.0.0) or it runs as a Space."""
    default_host = "0.0.0.0" if ON_SPACE else "127.0.0.1"
    # The OpenAI-compatible API (quant.openai_api) is served by the same server, on the same models and queue limits.
    options = dict(i18n=t, css=TABLE_CSS, server_name=os.environ.get("GRADIO_SERVER_NAME", default_host),
                   app_kwargs={"routes": build_router().routes},
                   server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),  # gradio reads it at import too
                   max_file_size=os.environ.get("QUANT_MAX_UPLOAD", "20mb"))
    return {**options, **overrides}


def configure_queue(demo: gr.Blocks) -> gr.Blocks:
    """Requests wait in one queue; each event type has its own concurrency (model loads one at a time)."""
    settings = load_settings()
    return demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_process() -> Iterator[str]:
    """The real app (queue configured from the environment as at start-up), served over HTTP on a free local port in
    this process: how the tests and the benchmarks serve it."""
    demo = configure_queue(build_app())
    port = free_port()
    demo.launch(**launch_options(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    try:  # every operator setting is read once here, so a malformed one stops the start with its name
        load_settings()
        options = launch_options()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_queue(build_app()).launch(**options)


if __name__ == "__main__":
    main()
