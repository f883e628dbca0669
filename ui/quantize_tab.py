"""The Quantize tab: write a quantized checkpoint to disk (the methods of quant.methods that can), measure it against
the original, and push the folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from quant.access import served_folders
from quant.forms import QuantizeForm
from quant.hub import default_repo_id, push_folder
from quant.methods import METHODS, quantize_methods
from quant.quantize import expire_visitor_outputs, output_folder, quantize
from quant.settings import load_settings

from . import common
from .common import PLOT_COLOURS, InBackground, Slider, as_text, new_stop_event, stop_button, t, user_errors, visitor_of
from .shared import Shared

QUANTIZE_TABLE_HEADERS = ["model", "size on disk (MiB)", "perplexity (held-out text)"]
LAYER_ERROR_COLUMNS = ["layer", "loss", "module"]


def layer_error_frame(layer_errors: list[dict]):
    """The layer-error plot's data: a row per quantized module with a loss (QuantizeResult.layer_errors); no rows
    for a method without calibration (and for AWQ's modules it did not scale, which have no loss)."""
    import pandas as pd

    return pd.DataFrame([{"layer": e["layer"], "loss": e["loss"], "module": e["module"]}
                         for e in layer_errors if e.get("loss") is not None], columns=LAYER_ERROR_COLUMNS)


def layer_error_plot(layer_errors: list[dict]) -> gr.LinePlot:
    """The plot's value with a colour per module seen so far, in the order they were quantized.

    Gradio 6.31's LinePlot fixes its colour domain when it draws; a streamed value only swaps the data, so a module
    that first appears in a later update (AWQ logs no loss where it applied no scale) would have no colour. A changed
    colour map makes the plot draw itself again, with the new domain (as the Compare tab's plots do)."""
    modules = list(dict.fromkeys(e["module"] for e in layer_errors if e.get("loss") is not None))
    colours = {module: PLOT_COLOURS[i % len(PLOT_COLOURS)] for i, module in enumerate(modules)}
    return gr.LinePlot(value=layer_error_frame(layer_errors), color_map=colours)


def token_for(typed: str | None, oauth_token: gr.OAuthToken | None) -> str | None:
    """The visitor's token: their Hugging Face login (on a Space), else the one typed, else (locally) HF_TOKEN.

    On a Space, HF_TOKEN is the Space owner's secret: it is never used on a visitor's behalf.
    """
    if oauth_token is not None and getattr(oauth_token, "token", None):
        return oauth_token.token
    typed = (typed or "").strip() or None
    return typed if common.ON_SPACE else typed or os.environ.get("HF_TOKEN") or None


# Both handlers take the visitor's login as `oauth_token`. Gradio fills it from the session of a visitor signed in
# with the Space's LoginButton; elsewhere (no LoginButton, so no session middleware: gradio.helpers.special_args reads
# an empty session) it is None, and the typed token or HF_TOKEN is used.

@user_errors
def run_quantize(request: gr.Request, oauth_token: gr.OAuthToken | None, progress=gr.Progress(), **fields):
    """Quantize, save, measure; yields the per-module quantization error plot as gptqmodel finishes each layer (the
    other outputs unchanged), then the comparison, the folder and its files (for download), the proposed repo id and
    the whole plot (empty without calibration). The form's fields arrive by QuantizeForm field name; its token reads
    the source model (gated or private), from the tab's own token box, or the visitor's login on a Space."""
    form = QuantizeForm.from_values(fields)
    recipe, calibration = form.recipe(), form.calibration()
    stop = new_stop_event(request)
    expire_visitor_outputs(load_settings().output_max_age_hours)  # this server's disk holds every visitor's outputs
    token, visitor = token_for(form.token, oauth_token), visitor_of(request)

    def work(emit):
        return quantize(form.model or "", method=form.method, recipe=recipe, calibration=calibration,
                        revision=(form.revision or "").strip() or None, token=token,
                        progress=lambda f, m: emit(("progress", f, m)), stop=stop, visitor=visitor,
                        folders=served_folders(), on_layer_errors=lambda errors: emit(("layer_errors", errors)))

    run = InBackground(work, stop)
    for event in run:
        if event is InBackground.IDLE:
            yield (gr.skip(),) * 6
            continue
        kind, *payload = event
        if kind == "progress":
            progress(payload[0], desc=payload[1])
        else:
            yield (*(gr.skip(),) * 5, layer_error_plot(payload[0]))
    result = run.result
    folder = Path(result.out_dir)
    files = sorted(str(p) for p in folder.iterdir() if p.is_file())
    status = (f"Saved to `{as_text(folder.name)}` in {result.seconds:.0f} s"
              + (f"; the quantized model loads with {result.kernel} layers." if result.kernel else "."))
    if result.quality:
        status += f"\n\nNext-token quality against the original: {result.quality['verdict']}."
    for warning in result.warnings:
        status += f"\n\n**Warning:** {as_text(warning)}"
    username = getattr(request, "username", None)
    # With a login the repo id is proposed whole; without one, the Push box stays empty (its placeholder shows the
    # form), rather than holding a "<user>/..." that Push would refuse.
    yield (status, result.comparison_rows(), str(folder), files, default_repo_id(username, folder) if username else "",
           layer_error_plot(result.layer_errors))


@user_errors
def run_push(folder, repo_id, private, overwrite, token, request: gr.Request, oauth_token: gr.OAuthToken | None,
             progress=gr.Progress()):
    """Push a quantized folder (only this visitor's own, under the output directory) to the Hub."""
    folder_path = Path((folder or "").strip()).expanduser().resolve()
    root = output_folder(visitor_of(request))
    if not folder or root not in folder_path.parents:
        raise gr.Error("Only folders this session quantized (under the output directory) can be pushed: quantize "
                       "first.")
    result = push_folder(folder_path, repo_id, token=token_for(token, oauth_token), private=bool(private),
                         overwrite=bool(overwrite), progress=lambda f, m: progress(f, desc=m))
    return f"Pushed to [{result.repo_id}]({result.url}) (commit {result.commit[:10]})."


def show_recipe(method):
    """The recipe and calibration fields, for a method that calibrates."""
    return gr.Group(visible=method in METHODS and METHODS[method].calibrated)


def show_calibration_source(source):
    return gr.Textbox(visible=source == "paste"), gr.File(visible=source == "upload")


def build(shared: Shared) -> None:
    start = QuantizeForm(model=shared.first_model)
    methods = quantize_methods()
    first_method = start.method if start.method in methods else methods[0]
    with gr.Tab(t("tab.quantize"), id="quantize"):
        with gr.Row():
            model = gr.Dropdown(choices=shared.model_choices, value=start.model, allow_custom_value=True,
                                label=t("quantize.source"))
            revision = gr.Textbox(label=t("revision"), placeholder="main")
            token = gr.Textbox(label=t("token"), type="password", placeholder=t("token.placeholder"))
        method = gr.Radio([(t(f"quantize.method.{name}"), name) for name in methods], value=first_method,
                          label=t("quantize.method"))
        with gr.Group(visible=METHODS[first_method].calibrated) as recipe_group:
            with gr.Row():
                bits = gr.Dropdown([2, 3, 4, 8], value=start.bits, label=t("quantize.bits"))
                group_size = gr.Dropdown([("32", 32), ("64", 64), ("128", 128), (t("quantize.group.column"), -1)],
                                         value=start.group_size, label=t("quantize.group"))
                desc_act = gr.Checkbox(value=start.desc_act, label=t("quantize.desc_act"))
                sym = gr.Checkbox(value=start.sym, label=t("quantize.sym"))
                damp_percent = gr.Number(value=start.damp_percent, label=t("quantize.damp"))
            with gr.Row():
                num_samples = Slider(1, 1024, value=start.num_samples, step=1, label=t("quantize.samples"))
                seq_len = Slider(32, 4096, value=start.seq_len, step=32, label=t("quantize.seq_len"))
                calibration_source = gr.Radio([(t(f"quantize.calibration.{source}"), source)
                                               for source in ("builtin", "paste", "upload")],
                                              value=start.calibration_source, label=t("quantize.calibration"))
            calibration_text = gr.Textbox(label=t("quantize.calibration.text"), lines=6, visible=False)
            calibration_file = gr.File(label=t("quantize.calibration.file"), file_types=[".txt", ".jsonl"],
                                       type="filepath", visible=False)
        with gr.Row():
            run_btn = gr.Button(t("quantize.run"), variant="primary")
            stop_btn = gr.Button(t("stop"))
        status = gr.Markdown()
        table = gr.Dataframe(headers=QUANTIZE_TABLE_HEADERS, interactive=False, label=t("quantize.table"))
        layer_plot = gr.LinePlot(x="layer", y="loss", color="module", label=t("quantize.layer_errors"), height=260)
        files = gr.File(label=t("quantize.files"), file_count="multiple", interactive=False)
        gr.Markdown(t("push.intro"))
        with gr.Row():
            push_folder_box = gr.Textbox(label=t("push.folder"))
            push_repo = gr.Textbox(label=t("push.repo"), placeholder="user/model-GPTQ-4bit-g128")
        with gr.Row():
            push_token = gr.Textbox(label=t("push.token"), type="password", placeholder=t("push.token.placeholder"))
            push_private = gr.Checkbox(value=True, label=t("push.private"))
            push_overwrite = gr.Checkbox(value=False, label=t("push.overwrite"))
        push_btn = gr.Button(t("push.run"))
        push_status = gr.Markdown()

    # The one place the form's fields are named: QuantizeForm's fields, in its order (the endpoint's order).
    named = dict(model=model, revision=revision, token=token, method=method, bits=bits, group_size=group_size,
                 desc_act=desc_act, sym=sym, damp_percent=damp_percent, num_samples=num_samples, seq_len=seq_len,
                 calibration_source=calibration_source, calibration_text=calibration_text,
                 calibration_file=calibration_file)
    form = {name: named[name] for name in QuantizeForm.INPUTS}

    method.change(show_recipe, method, recipe_group, api_name=False)
    calibration_source.change(show_calibration_source, calibration_source, [calibration_text, calibration_file],
                              api_name=False)
    # The plot comes last: clients that read the first five outputs by position still get what they got before (a
    # stream now: the updates before the last one carry the plot only).
    run_btn.click(run_quantize, inputs_kwargs=form,
                  outputs=[status, table, push_folder_box, files, push_repo, layer_plot],
                  api_name="quantize", concurrency_limit=1, concurrency_id="quantize", show_progress_on=[status])
    stop_button(stop_btn, "quantize_stop")
    push_btn.click(run_push, [push_folder_box, push_repo, push_private, push_overwrite, push_token], push_status,
                   api_name="push", concurrency_limit=2, concurrency_id="push")
