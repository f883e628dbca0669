"""The Batch tab: many prompts (pasted or uploaded) through the session's model on its batching engine
(quant.batching), with the Chat tab's generation settings; the results as a table that fills as prompts finish, and
as CSV and JSONL files."""

from __future__ import annotations

import time

import gradio as gr

from quant.batching import run_batch
from quant.forms import GenerationForm, number
from quant.prompts import parse_lines, read_prompt_file, scratch_folder, write_results
from quant.registry import default_registry

from .common import InBackground, Slider, new_stop_event, stop_button, t, user_errors, visitor_of
from .shared import Shared, model_for_session

BATCH_HEADERS = ["line", "prompt", "output", "new tokens", "seconds", "error"]
BATCH_COLUMN_WIDTHS = ["6%", "27%", "37%", "8%", "8%", "14%"]
"""Fixed shares, so long outputs wrap inside their column and the error column stays on screen."""
TABLE_UPDATE_SECONDS = 0.5
"""At most one table redraw per this many seconds: prompts may finish at every step, and each redraw sends the whole
table to the browser (1,000 rows at most)."""


def _batch_table(rows) -> list[list]:
    return [[r.line, r.prompt, r.output, r.new_tokens, round(r.seconds, 2), r.error] for r in rows]


@user_errors
def run_batch_ui(key, pasted, upload, column, use_template, system_prompt, batch_size, request: gr.Request,
                 progress=gr.Progress(), **generation):
    """Run the batch, filling the table as prompts finish; then offer the CSV and JSONL files. The generation
    settings arrive by GenerationForm field name."""
    settings = GenerationForm.from_values(generation).to_settings()
    prompts = read_prompt_file(upload, column) if upload else parse_lines(pasted or "")
    batch_size = number(batch_size, int, "Batch size")
    stop = new_stop_event(request)
    visitor = visitor_of(request)

    def work(emit):
        # In a thread of its own (InBackground): a cancelled job or a closed page closes this handler on Gradio's event
        # loop, and the engine's teardown (continuous batching: stopping its thread, freeing the KV cache) must not run
        # there; the model stays leased until that teardown is over.
        with default_registry().use(model_for_session(key, visitor), visitor) as loaded:
            last = None
            for last in run_batch(loaded, prompts, settings, batch_size=batch_size,
                                  use_chat_template=bool(use_template), system_prompt=system_prompt, stop=stop):
                emit(last)
            return last

    shown = 0.0
    progress(0, desc=f"0/{len(prompts)} prompts")
    job = InBackground(work, stop)
    for result in job:
        if result is InBackground.IDLE:
            yield gr.skip(), gr.skip(), gr.skip()
            continue
        progress(result.done / result.total, desc=f"{result.done}/{result.total} prompts")
        if time.monotonic() - shown >= TABLE_UPDATE_SECONDS:  # the last table always comes below
            shown = time.monotonic()
            yield _batch_table(result.rows), result.totals(), None
    result = job.result
    files = write_results(result.rows, scratch_folder("batch"))
    yield _batch_table(result.rows), result.totals(), [str(f) for f in files]


def build(shared: Shared) -> None:
    with gr.Tab(t("tab.batch"), id="batch"):
        shared.answering_note()
        with gr.Row():
            pasted = gr.Textbox(label=t("batch.prompts"), lines=8)
            with gr.Column():
                upload = gr.File(label=t("batch.upload"), file_types=[".txt", ".csv", ".jsonl"], type="filepath")
                column = gr.Textbox(label=t("batch.column"), placeholder="prompt")
        with gr.Row():
            use_template = gr.Checkbox(value=False, label=t("batch.template"))
            system_prompt = gr.Textbox(label=t("batch.system"))
            batch_size = Slider(1, 64, value=8, step=1, label=t("batch.size"))
        gr.Markdown(t("batch.note"))
        with gr.Row():
            run_btn = gr.Button(t("batch.run"), variant="primary")
            stop_btn = gr.Button(t("stop"))
        totals = gr.Markdown()
        table = gr.Dataframe(headers=BATCH_HEADERS, interactive=False, wrap=True, label=t("batch.results"),
                             column_widths=BATCH_COLUMN_WIDTHS)
        files = gr.File(label=t("batch.download"), file_count="multiple", interactive=False)

    stop_button(stop_btn, "batch_stop")
    run_btn.click(run_batch_ui, [shared.active_key, pasted, upload, column, use_template, system_prompt, batch_size],
                  [table, totals, files], inputs_kwargs=shared.generation, api_name="run_batch",
                  concurrency_id="generate")
