"""Quantization Playground: the Gradio app's frame and entry point (a Space's app_file). It assembles the tabs (ui/:
a module per tab, its components and its wiring together) and serves the app; the `quant` package does the work."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from typing import Iterator

import gradio as gr

from quant.loader import freeze_startup_objects
from quant.openai_api import build_router
from quant.prompts import SCRATCH_MAX_AGE_SECONDS
from quant.settings import SettingsError, load_settings
from quant.ui_strings import EN, KO
from ui import batch_tab, chat_tab, common, compare_tab, model_tab, quantize_tab
from ui.common import forget_session, t
from ui.model_tab import HISTORY_HEADERS
from ui.shared import Shared, model_choices

__all__ = ["HISTORY_HEADERS", "build_app", "configure_queue", "free_port", "launch_options", "main",
           "serve_in_process"]

TABS = (model_tab, chat_tab, batch_tab, compare_tab, quantize_tab)
"""The tabs in the order they show; each module's build(shared) makes its tab (built in this order: Batch uses the
Chat tab's generation settings)."""


def build_app() -> gr.Blocks:
    choices, first, offline_note = model_choices()
    # Gradio's own cache (uploads, files handed out for download) is swept hourly of what is a day old.
    with gr.Blocks(title="Quantization Playground", delete_cache=(3600, SCRATCH_MAX_AGE_SECONDS)) as demo:
        with gr.Row():
            gr.Markdown(f"# {EN['title']} · {KO['title']}\n{EN['subtitle']} / {KO['subtitle']}")
            if common.ON_SPACE:
                gr.LoginButton()  # quantize and push use the visitor's own Hugging Face login, never the Space owner's
        if offline_note:
            gr.Markdown(f"> {offline_note}")
        # this browser session's selected model (a key; the registry owns models)
        shared = Shared(demo=demo, active_key=gr.State(None), model_choices=choices, first_model=first)
        with gr.Tabs():
            for tab in TABS:
                tab.build(shared)
        shared.follow_active_model()
        demo.unload(forget_session)
    return demo


TABLE_CSS = "table th, table th * { overflow-wrap: normal !important; word-break: keep-all !important; }"
"""Table headers break between words, never inside one ("perplexit/y"); keep-all does the same for Korean."""


def launch_options(**overrides) -> dict:
    """How the app is served (the tests serve it the same way, on their own port). It listens on this machine only
    unless GRADIO_SERVER_NAME says otherwise (the Dockerfile sets 0.0.0.0) or it runs as a Space."""
    default_host = "0.0.0.0" if common.ON_SPACE else "127.0.0.1"
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
    demo = configure_queue(build_app())
    freeze_startup_objects()
    demo.launch(**options)


if __name__ == "__main__":
    main()
