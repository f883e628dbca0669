"""The Model tab: load a model in a mode (one field per method option, generated from quant.methods), measure several
modes' load cost, unload, and the tables of loaded models and of this visitor's loads."""

from __future__ import annotations

import gradio as gr

from quant.access import served_folders
from quant.attention import IMPLEMENTATIONS
from quant.errors import QuantError
from quant.forms import DEFAULT_ATTENTION, LoadForm
from quant.methods import ALL_OPTIONS, METHODS, Option, load_time_methods
from quant.placement import DEVICE_MAP_CHOICES
from quant.planner import plan_model
from quant.registry import default_registry
from quant.ui_strings import EN

from .common import as_text, language_of, progress_fn, t, user_errors, visitor_of
from .shared import Shared

HISTORY_HEADERS = ["model", "mode", "params (M)", "footprint (MiB)", "RAM before→after (MiB)", "GPU alloc (MiB)",
                   "load (s)", "compile (s)", "generation", "quantized layers"]
"""Columns of LoadReport.summary_row shown in the Model tab."""
LOADED_HEADERS = ["model", "footprint (MiB)", "dtype", "in use"]
PLAN_INPUTS = ("model", "revision", "token", "mode", "device_map", "max_memory")
"""The form fields the memory plan reads (LoadForm names)."""
MEASURED_FIRST = ("bf16", "int8", "nf4")
"""The modes "Measure these modes" has ticked at first (those of them that exist)."""


def loaded_choices(visitor: str) -> list[tuple[str, str]]:
    return [(m.label, m.key) for m in default_registry().loaded(visitor)]


def loaded_table(visitor: str) -> list[list]:
    registry = default_registry()
    return [
        [m.label, round(m.report.footprint_bytes / 2**20, 1), m.report.dtype, registry.in_use(m.key)]
        for m in registry.loaded(visitor)
    ]


def history_table(visitor: str) -> list[list]:
    """One row per load of this visitor's, by header name: a column added to the report's summary cannot shift the
    others."""
    rows = [r.summary_row() for r in default_registry().history(visitor)]
    return [[row.get(h) for h in HISTORY_HEADERS] for row in rows]


# --- handlers -------------------------------------------------------------------------------------------------------
# The form's fields arrive by name (LoadForm.INPUTS, through `inputs_kwargs`), and become one LoadForm.

@user_errors
def load(request: gr.Request, progress=gr.Progress(track_tqdm=True), **fields):
    """Load a model (or reuse it if this exact load is already in memory) and show its load report."""
    visitor = visitor_of(request)
    registry = default_registry()
    evicted_before = len(registry.evicted)
    loaded = registry.load(LoadForm.from_values(fields).to_request(owner=visitor, folders=served_folders()),
                           progress=progress_fn(progress))
    for label in registry.evicted[evicted_before:]:
        gr.Info(f"Unloaded {label} (idle) to make room.")
    for warning in loaded.report.warnings:
        gr.Warning(warning)
    status = f"**{as_text(loaded.label)}** loaded in {loaded.report.load_seconds:.1f} s."
    return (status, loaded.report.to_text(language_of(request)),
            gr.Dropdown(choices=loaded_choices(visitor), value=loaded.key), loaded.key, loaded_table(visitor),
            history_table(visitor))


@user_errors
def measure_modes(modes, request: gr.Request, progress=gr.Progress(track_tqdm=True), **fields):
    """Load the model in each ticked mode one after another (unloading each), to fill the comparison table."""
    if not modes:
        raise gr.Error("Tick at least one mode to measure.")
    visitor = visitor_of(request)
    registry = default_registry()
    failures = []
    for i, mode in enumerate(modes):
        progress(i / len(modes), desc=f"Loading in {mode}")
        already_loaded = {m.key for m in registry.loaded(visitor)}
        try:
            form = LoadForm.from_values({**fields, "mode": mode})
            loaded = registry.load(form.to_request(owner=visitor, folders=served_folders()))
        except QuantError as exc:
            failures.append(f"{mode}: {exc}")
            continue
        if loaded.key not in already_loaded and registry.in_use(loaded.key) == 0:
            registry.unload(loaded.key, visitor)
    for failure in failures:
        gr.Warning(as_text(failure))
    done = len(modes) - len(failures)
    return (f"Measured {done} of {len(modes)} mode(s).", gr.Dropdown(choices=loaded_choices(visitor)),
            loaded_table(visitor), history_table(visitor))


@user_errors
def plan(request: gr.Request, **fields):
    """"Fits on your GPUs?": per mode, where the weights would go with the form's placement, before loading, then
    the placements the form's mode has on these GPUs and what each costs (quant.planner; only the config is read,
    with the visitor's token and the served folders)."""
    form = LoadForm.from_values(fields)
    result = plan_model(form.model, revision=form.revision, token=form.token, folders=served_folders(),
                        device_map=form.device_map, max_memory=form.max_memory, placements_mode=form.mode)
    return result.to_markdown(language_of(request), chosen=form.mode)


@user_errors
def unload(key, request: gr.Request):
    if not key:
        raise gr.Error("Pick a loaded model to unload.")
    visitor = visitor_of(request)
    label = default_registry().unload(key, visitor)
    choices = loaded_choices(visitor)
    new_key = choices[-1][1] if choices else None
    return (f"Unloaded **{as_text(label)}**.", gr.Dropdown(choices=choices, value=new_key), new_key,
            loaded_table(visitor))


def select_model(key):
    return key


def refresh(request: gr.Request):
    """The Model tab's shared tables as this visitor may see them (a new or reloaded tab too)."""
    visitor = visitor_of(request)
    return gr.Dropdown(choices=loaded_choices(visitor)), loaded_table(visitor), history_table(visitor)


def mode_help(mode: str) -> str:
    return f"*{mode}*: " + t(f"mode.{mode}")


WIDE_KINDS = ("names",)
"""Option kinds that get a row of their own (a list of module names needs the width); the others share a row."""
OPTION_ROWS = [row for row in ([o for o in ALL_OPTIONS if o.kind in WIDE_KINDS],
                               [o for o in ALL_OPTIONS if o.kind not in WIDE_KINDS]) if row]
"""The option fields' rows, each option once, in ALL_OPTIONS order within a row."""


def _own_options(mode: str) -> set[str]:
    return {o.field for o in METHODS[mode].options} if mode in METHODS else set()


def show_options(mode):
    """The chosen mode's options, and only those; the group and rows around them where they have any; its help
    line. In the order of the outputs: the group, each row, each option (ALL_OPTIONS order), the help line."""
    own = _own_options(mode)
    return (gr.Group(visible=bool(own)), *(gr.Row(visible=any(o.field in own for o in row)) for row in OPTION_ROWS),
            *(gr.update(visible=o.field in own) for o in ALL_OPTIONS), mode_help(mode))


# --- the tab --------------------------------------------------------------------------------------------------------

def _text(key: str) -> dict:
    """`info` and `placeholder` of an option's field, where ui_strings has them."""
    return {attr: t(f"{key}.{attr}") for attr in ("info", "placeholder") if f"{key}.{attr}" in EN}


def choice_label(option: Option, value: str):
    """A choice's words (`option.<field>.<value>`, `.auto` for ""), else the value itself (a dtype's name)."""
    key = f"option.{option.field}.{value or 'auto'}"
    return t(key) if key in EN or not value else value


def option_field(option: Option, value, visible: bool) -> gr.components.Component:
    """The Model tab's field for one method option (quant.methods.Option), labelled `option.<field>`."""
    key = f"option.{option.field}"
    common = dict(label=t(key), visible=visible)
    if option.kind == "bool":
        return gr.Checkbox(value=value, **common, **{k: v for k, v in _text(key).items() if k == "info"})
    if option.kind == "number":
        return gr.Number(value=value, **common, **_text(key))
    if option.kind == "choice":
        return gr.Dropdown([(choice_label(option, v), v) for v, _ in option.choices], value=value, **common,
                           **{k: v for k, v in _text(key).items() if k == "info"})
    return gr.Textbox(value=value, **common, **_text(key))  # "names": comma-separated


def build(shared: Shared) -> None:
    start = LoadForm(model=shared.first_model).to_values()
    first_options = _own_options(start["mode"])
    with gr.Tab(t("tab.model"), id="model"):
        with gr.Row():
            with gr.Column(scale=3):
                model_box = gr.Dropdown(choices=shared.model_choices, value=start["model"], allow_custom_value=True,
                                        label=t("model.box"))
                with gr.Row():
                    revision = gr.Textbox(start["revision"], label=t("revision"), placeholder="main")
                    token = gr.Textbox(start["token"], label=t("token"), type="password",
                                       placeholder=t("token.placeholder"))
                mode = gr.Radio(list(METHODS), value=start["mode"], label=t("mode"))
                help_line = gr.Markdown(mode_help(start["mode"]))
                options, option_rows = {}, []
                with gr.Group(visible=bool(first_options)) as options_group:
                    for row in OPTION_ROWS:
                        with gr.Row(visible=any(o.field in first_options for o in row)) as row_block:
                            options.update({o.field: option_field(o, start[o.field], o.field in first_options)
                                            for o in row})
                        option_rows.append(row_block)
                options = {o.field: options[o.field] for o in ALL_OPTIONS}
                with gr.Accordion(t("placement"), open=False):
                    with gr.Row():
                        device_map = gr.Dropdown(list(DEVICE_MAP_CHOICES), value=start["device_map"],
                                                 allow_custom_value=True, label="device_map",
                                                 info=t("device_map.info"))
                        max_memory = gr.Textbox(start["max_memory"], label="max_memory",
                                                placeholder="0=20GiB, 1=20GiB, cpu=30GiB", info=t("max_memory.info"))
                        attention = gr.Dropdown([(t("attention.default"), DEFAULT_ATTENTION),
                                                 *((name, name) for name in IMPLEMENTATIONS)],
                                                value=start["attention"], label=t("attention"))
                    gr.Markdown(t("attention.note"))
                with gr.Accordion(t("plan.button"), open=False):
                    gr.Markdown(t("plan.intro"))
                    plan_btn = gr.Button(t("plan.button"), size="sm")
                    plan_box = gr.Markdown()
                with gr.Row():
                    load_btn = gr.Button(t("load"), variant="primary")
                    measured = gr.CheckboxGroup(load_time_methods(),
                                                value=[m for m in MEASURED_FIRST if m in load_time_methods()],
                                                label=t("measure.modes"))
                    measure_btn = gr.Button(t("measure"))
            with gr.Column(scale=2):
                status = gr.Markdown()
                # Keys are checked by the registry (a visitor's own models only): an API client may name one
                # before its page has the choices.
                loaded_dd = gr.Dropdown(choices=[], label=t("loaded"), allow_custom_value=True)
                unload_btn = gr.Button(t("unload"))
                shared.api_line = gr.Markdown(t("api.off"))
                loaded_df = gr.Dataframe([], headers=LOADED_HEADERS, label=t("loaded.table"), interactive=False)
        report_box = gr.Code(label=t("report"), language=None, lines=14)
        history_df = gr.Dataframe([], headers=HISTORY_HEADERS, interactive=False, label=t("history"))
        refresh_btn = gr.Button(t("refresh"), size="sm")

    # The one place the tab's fields are named: LoadForm's fields, in its order (the endpoints' order). Each field
    # starts with a value, so an API client may name only the fields it sets (the others take these values).
    named = {"model": model_box, "revision": revision, "token": token, "mode": mode, **options,
             "device_map": device_map, "max_memory": max_memory, "attention": attention}
    form = {name: named[name] for name in LoadForm.INPUTS}
    active_key = shared.active_key

    mode.change(show_options, mode, [options_group, *option_rows, *options.values(), help_line], api_name=False)
    # A failed load shows its message once (the toast) and marks the status line only: the report, the tables and
    # the dropdown keep what they showed.
    load_btn.click(load, inputs_kwargs=form, outputs=[status, report_box, loaded_dd, active_key, loaded_df, history_df],
                   api_name="load_model", concurrency_limit=1, concurrency_id="model-load", show_progress_on=[status])
    measure_btn.click(measure_modes, measured, [status, loaded_dd, loaded_df, history_df], inputs_kwargs=form,
                      api_name="measure_modes", concurrency_limit=1, concurrency_id="model-load",
                      show_progress_on=[status])
    plan_btn.click(plan, inputs_kwargs={k: form[k] for k in PLAN_INPUTS}, outputs=plan_box, api_name="plan_memory",
                   show_progress_on=[plan_box])
    unload_btn.click(unload, loaded_dd, [status, loaded_dd, active_key, loaded_df], api_name="unload_model",
                     show_progress_on=[status])
    loaded_dd.input(select_model, loaded_dd, active_key, api_name=False)
    refresh_btn.click(refresh, None, [loaded_dd, loaded_df, history_df], api_name="refresh")
    # A new or reloaded tab: the models this visitor may use.
    shared.demo.load(refresh, None, [loaded_dd, loaded_df, history_df], api_name=False)
