"""The Compare tab: one model in several modes, one after another, each measured on the same prompts (memory,
speed, perplexity, next-token quality against 16-bit, the answers side by side), with plots and exports."""

from __future__ import annotations

import csv
import html
import threading

import gradio as gr
import torch

from quant.access import served_folders
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
from quant.forms import number
from quant.methods import GPTQ_BACKENDS, load_time_methods, modes_that_run_here
from quant.prompts import MAX_PROMPT_CHARS, check_text_items, scratch_folder, spreadsheet_safe
from quant.quality import THRESHOLDS_TEXT
from quant.registry import default_registry

from .common import PLOT_COLOURS, InBackground, Slider, as_text, new_stop_event, stop_button, t, user_errors, visitor_of
from .shared import Shared

COMPARE_MAX_PROMPTS = 16
"""Each Compare prompt is answered greedily by every mode and feeds the batch measurement: a handful is plenty."""
COMPARED_FIRST = ("bf16", "int8", "nf4")
"""The modes ticked at first (those of them that exist)."""
_one_comparison = threading.Lock()
"""Held by the running comparison's thread. Gradio frees the tab's slot as soon as a run is cancelled, while the
cancelled run ends its current mode; the next run waits for it, so that two comparisons never hold models at once."""

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
MODE_COLOURS = PLOT_COLOURS
"""A mode keeps its colour in every plot and as more modes finish."""


def _mode_colours(planned: list[str]) -> dict[str, str]:
    """Each mode's colour, by its place among the modes the run measures: the same in every plot and update."""
    return {label: MODE_COLOURS[i % len(MODE_COLOURS)] for i, label in enumerate(planned)}


def _relative_plots(results, planned: list[str]) -> list[gr.BarPlot]:
    """One bar plot per metric, with a bar per mode side by side, in the order the modes ran.

    One plot per metric because Gradio 6.31's BarPlot stacks the bars of a category instead of grouping them. And
    it fixes its colour domain (the modes) when it draws: a streamed value only swaps the data, so the bars of modes
    that finish later would have no fill (invisible). Each update therefore carries the colour map of every mode so
    far: a changed colour map makes the plot draw itself again, with the new domain.
    """
    import pandas as pd

    relative = relative_to_baseline(results)
    order = [r.label for r in results if r.label in relative]
    every = _mode_colours(planned)
    colours = {label: every.get(label, MODE_COLOURS[0]) for label in order}
    plots = []
    for metric in COMPARE_METRICS:
        frame = pd.DataFrame([{"mode": label, "× 16-bit": relative[label][metric]} for label in order
                              if relative[label].get(metric) is not None], columns=["mode", "× 16-bit"])
        plots.append(gr.BarPlot(value=frame, color_map=colours, sort=order))
    return plots


def _kl_plot(results, planned: list[str]) -> gr.LinePlot:
    """Mean KL(reference || mode) of each evaluation window, a line per mode (x: the window's first token).

    Gradio 6.31's LinePlot draws the lines of the modes in its first value only: a mode whose rows come in a later
    update got no line, whatever the colour map (seen in the browser: the Compare screenshot showed bf16's line alone).
    So each update also holds one row per mode still to come, its KL NaN, which draws nothing."""
    import math

    import pandas as pd

    measured = [r for r in results if not r.error and r.kl_per_window]
    finished = {r.label for r in results}
    pending = [label for label in planned if label not in finished]
    every = _mode_colours(planned)
    colours = {label: every.get(label, MODE_COLOURS[0]) for label in [r.label for r in measured] + pending}
    rows = [{"mode": r.label, "token position": i * (r.quality_stride or 0), "KL": kl}
            for r in measured for i, kl in enumerate(r.kl_per_window)]
    rows += [{"mode": label, "token position": 0, "KL": math.nan} for label in pending]
    return gr.LinePlot(value=pd.DataFrame(rows, columns=["mode", "token position", "KL"]), color_map=colours)


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
    stop = new_stop_event(request)
    planned = [spec.label for spec in specs]
    visitor = visitor_of(request)

    def work(emit):
        if not _one_comparison.acquire(blocking=False):
            emit(("progress", 0.0, "waiting for a stopped comparison to finish its current mode"))
            _one_comparison.acquire()
        try:
            for result in compare(model, specs, registry=default_registry(), prompts=prompts, batch_size=batch_size,
                                  new_tokens=new_tokens, progress=lambda f, m: emit(("progress", f, m)), stop=stop,
                                  visitor=visitor, folders=served_folders()):
                emit(("result", result))
        finally:
            _one_comparison.release()

    results = []
    outputs = 5 + len(COMPARE_METRICS)  # the table, the KL plot, quality, answers, files and a plot per metric
    for event in InBackground(work, stop):
        if event is InBackground.IDLE:
            yield (gr.skip(),) * outputs
            continue
        kind, *payload = event
        if kind == "progress":
            progress(payload[0], desc=payload[1])
            continue
        result = payload[0]
        results.append(result)
        if result.error:
            gr.Warning(as_text(f"{result.label}: {result.error}"))
        yield (_compare_rows(results), *_relative_plots(results, planned), _kl_plot(results, planned),
               _quality_markdown(results), "", None)
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
    yield (_compare_rows(results), *_relative_plots(results, planned), _kl_plot(results, planned),
           _quality_markdown(results), _answers_html(used_prompts, results),
           [str(json_path), str(csv_path)])


def every_mode_here() -> list[str]:
    """Tick every load-time mode that runs on this machine (GPTQ and AWQ need a checkpoint: the box beside)."""
    return modes_that_run_here(on_cuda=torch.cuda.is_available())


def build(shared: Shared) -> None:
    modes = load_time_methods()
    with gr.Tab(t("tab.compare"), id="compare"):
        gr.Markdown(t("compare.intro"))
        with gr.Row():
            model = gr.Dropdown(choices=shared.model_choices, value=shared.first_model, allow_custom_value=True,
                                label=t("compare.model"))
            with gr.Column(scale=3):
                chosen = gr.CheckboxGroup(modes, value=[m for m in COMPARED_FIRST if m in modes],
                                          label=t("compare.modes"))
                every = gr.Button(t("compare.every"), size="sm")
        with gr.Row():
            gptq_checkpoints = gr.Textbox(label=t("compare.gptq"), lines=2)
            gptq_backend = gr.Dropdown([(t("option.gptq_backend.auto"), "")] +
                                       [(kernel, kernel) for kernel in GPTQ_BACKENDS],
                                       value="", label=t("option.gptq_backend"))
            attention = gr.CheckboxGroup(["sdpa", "eager"], value=[], label=t("compare.attention"))
        with gr.Row():
            prompts = gr.Textbox(label=t("compare.prompts"), lines=3)
            batch_size = Slider(1, 64, value=8, step=1, label=t("compare.batch"))
            new_tokens = Slider(4, 512, value=32, step=4, label=t("compare.tokens"))
        with gr.Row():
            run_btn = gr.Button(t("compare.run"), variant="primary")
            stop_btn = gr.Button(t("stop"))
        table = gr.Dataframe(headers=COMPARE_HEADERS, interactive=False, wrap=True, label=t("compare.results"))
        gr.Markdown(t("compare.plots"))
        with gr.Row():
            plots = [gr.BarPlot(x="mode", y="× 16-bit", color="mode", label=t(f"compare.plot.{metric}"),
                                y_lim=[0, None], colors_in_legend=[], height=260, min_width=200)
                     for metric in COMPARE_METRICS]
        quality = gr.Markdown()
        kl_plot = gr.LinePlot(x="token position", y="KL", color="mode", label=t("compare.plot.kl"),
                              colors_in_legend=[], height=260)
        answers = gr.HTML()
        files = gr.File(label=t("compare.export"), file_count="multiple", interactive=False)

    run_btn.click(run_compare, [model, chosen, gptq_checkpoints, gptq_backend, attention, prompts, batch_size,
                                new_tokens],
                  [table, *plots, kl_plot, quality, answers, files], api_name="compare", concurrency_limit=1,
                  concurrency_id="model-load", show_progress_on=[table])
    stop_button(stop_btn, "compare_stop")
    every.click(every_mode_here, None, chosen, api_name="compare_every_mode")
