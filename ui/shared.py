"""What the tabs of one page share: the session's model, the lines that say which model answers, the API line, and
the generation settings. The frame creates one `Shared` per app and hands it to each tab's build, in tab order."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gradio as gr

from quant.errors import ModelNotLoadedError, QuantError
from quant.openai_api import api_key
from quant.registry import default_registry
from quant.settings import load_settings
from quant.source import demo_models, hub_reachable

from .common import as_text, t, visitor_of


def model_choices() -> tuple[list[str], str, str]:
    """Models offered in the model boxes, the one selected first, and a note on where they come from.

    The note is Markdown with one translation marker (the browser's language picks its words).
    """
    settings = load_settings()
    demos = demo_models()
    if settings.default_model.startswith("demo:") or os.path.isdir(settings.default_model):
        return [settings.default_model, *[d for d in demos if d != settings.default_model]], settings.default_model, ""
    if hub_reachable():
        return [settings.default_model, *demos], settings.default_model, ""
    return demos, demos[0], f"`{settings.default_model}`: " + t("offline.note")


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
    """The line saying which model answers a tab (or that none does)."""
    try:
        label = default_registry().get(model_for_session(key, visitor), visitor).label
    except QuantError:
        return t("model.gone") if key else t("no_model")
    return t("answering") + f" **{as_text(label)}**"


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


@dataclass
class Shared:
    """What the tabs of one page share. Each tab reads and adds what it needs while it is built."""

    demo: gr.Blocks
    active_key: gr.State
    """This browser session's model (a key; the registry owns models): the Model tab sets it, Chat and Batch use it."""
    model_choices: list[str]
    """Models offered in the Model, Compare and Quantize tabs' model boxes, `first_model` selected."""
    first_model: str
    notes: list[gr.Markdown] = field(default_factory=list)
    """The lines saying which model answers a tab (Chat, Batch), one per tab (`answering_note`)."""
    api_line: gr.Markdown | None = None
    """The Model tab's line on the OpenAI-compatible API and the model id to send."""
    generation: dict[str, gr.components.Component] = field(default_factory=dict)
    """The Chat tab's generation settings by quant.forms.GenerationForm field: Batch runs with the same."""

    def answering_note(self) -> gr.Markdown:
        """A line for the tab being built that says which model answers it, kept up to date by the frame."""
        note = gr.Markdown(t("no_model"))
        self.notes.append(note)
        return note

    def follow_active_model(self) -> None:
        """Once every tab is built: the notes and the API line follow the session's model, and say it on page load."""
        count = len(self.notes)

        def model_notes(key, request: gr.Request):
            visitor = visitor_of(request)
            note = active_model_note(key, visitor)
            return (*[note] * count, api_note(key, visitor, request))

        outputs = [*self.notes, self.api_line]
        self.active_key.change(model_notes, self.active_key, outputs, api_name=False)
        self.demo.load(model_notes, self.active_key, outputs, api_name=False)
