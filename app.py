"""Quantization Playground: the Gradio UI. Wiring only; all the work is done by the `quant` package."""

from __future__ import annotations

import functools
import logging
import os

import gradio as gr

from quant.errors import QuantError
from quant.loader import LoadRequest
from quant.modes import GPTQ_BACKENDS, Mode, QuantOptions
from quant.placement import DEVICE_MAP_CHOICES
from quant.registry import default_registry
from quant.settings import load_settings
from quant.source import demo_models, hub_reachable

log = logging.getLogger("quant.app")
DEFAULT_ATTN = "(model default)"


def user_errors(fn):
    """Turn errors into messages in the UI: QuantError as it is, anything else as one line (details in the log)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except QuantError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the app must keep serving; the log has the traceback
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"Unexpected error ({type(exc).__name__}): {str(exc).splitlines()[0] if str(exc) else ''}",
                           print_exception=False) from None

    return wrapper


def model_choices() -> tuple[list[str], str, str]:
    """Models offered in the model box, the one selected first, and a note on where they come from."""
    settings = load_settings()
    demos = demo_models()
    if settings.default_model.startswith("demo:") or os.path.isdir(settings.default_model):
        return [settings.default_model, *[d for d in demos if d != settings.default_model]], settings.default_model, ""
    if hub_reachable():
        return [settings.default_model, *demos], settings.default_model, ""
    note = (f"The Hugging Face Hub cannot be reached from this server: {settings.default_model} is unavailable. "
            "The demo models that ship with the app are offered instead; local folders work too.")
    return demos, demos[0], note


def loaded_choices() -> list[tuple[str, str]]:
    return [(m.label, m.key) for m in default_registry().loaded()]


def loaded_table() -> list[list]:
    registry = default_registry()
    return [
        [m.label, m.report.footprint_bytes / 2**20, m.report.dtype, registry.in_use(m.key)]
        for m in registry.loaded()
    ]


def history_table() -> list[list]:
    rows = [r.summary_row() for r in default_registry().history()]
    return [list(r.values()) for r in rows]


HISTORY_HEADERS = ["model", "mode", "params (M)", "footprint (MiB)", "RAM before→after (MiB)", "GPU alloc (MiB)",
                   "load (s)", "quantized layers"]


def build_request(model, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                  compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn) -> LoadRequest:
    return LoadRequest(
        model=model or "",
        mode=mode,
        revision=(revision or "").strip() or None,
        device_map=device_map or "auto",
        max_memory=max_memory or None,
        attn_implementation=None if attn in (None, "", DEFAULT_ATTN) else attn,
        options=QuantOptions(
            int8_threshold=float(int8_threshold if int8_threshold is not None else 6.0),
            int8_skip_modules=tuple(m.strip() for m in (skip_modules or "").split(",") if m.strip()),
            int8_cpu_offload=bool(int8_offload),
            bnb4_double_quant=bool(double_quant),
            bnb4_compute_dtype=compute_dtype or "bf16",
            bnb4_quant_storage=quant_storage or "uint8",
            gptq_backend=gptq_backend or None,
        ),
        token=(token or "").strip() or None,
    )


def _progress_fn(progress: gr.Progress):
    return lambda fraction, message: progress(fraction, desc=message)


@user_errors
def load(*args, progress=gr.Progress(track_tqdm=True)):
    request = build_request(*args)
    registry = default_registry()
    evicted_before = len(registry.evicted)
    loaded = registry.load(request, progress=_progress_fn(progress))
    for label in registry.evicted[evicted_before:]:
        gr.Info(f"Unloaded {label} (idle) to make room.")
    for warning in loaded.report.warnings:
        gr.Warning(warning)
    status = f"**{loaded.label}** loaded in {loaded.report.load_seconds:.1f} s."
    return (status, loaded.report.to_text(), gr.Dropdown(choices=loaded_choices(), value=loaded.key),
            loaded.key, loaded_table(), history_table())


@user_errors
def measure_modes(modes, *args, progress=gr.Progress(track_tqdm=True)):
    """Load the model in each selected mode one after another (unloading each), to fill the comparison table."""
    if not modes:
        raise gr.Error("Tick at least one mode to measure.")
    registry = default_registry()
    failures = []
    for i, mode in enumerate(modes):
        progress(i / len(modes), desc=f"Loading in {mode}")
        request = build_request(args[0], args[1], args[2], mode, *args[4:])
        try:
            loaded = registry.load(request)
        except QuantError as exc:
            failures.append(f"{mode}: {exc}")
            continue
        if registry.in_use(loaded.key) == 0:
            registry.unload(loaded.key)
    for failure in failures:
        gr.Warning(failure)
    done = len(modes) - len(failures)
    return (f"Measured {done} of {len(modes)} mode(s).", gr.Dropdown(choices=loaded_choices()),
            loaded_table(), history_table())


@user_errors
def unload(key):
    if not key:
        raise gr.Error("Pick a loaded model to unload.")
    label = default_registry().unload(key)
    choices = loaded_choices()
    new_key = choices[-1][1] if choices else None
    return f"Unloaded **{label}**.", gr.Dropdown(choices=choices, value=new_key), new_key, loaded_table()


def select_model(key):
    return key


def refresh():
    return gr.Dropdown(choices=loaded_choices()), loaded_table(), history_table()


def toggle_mode_options(mode):
    m = Mode(mode)
    return (gr.Group(visible=m.is_bitsandbytes), gr.Group(visible=m is Mode.INT8),
            gr.Group(visible=m in (Mode.NF4, Mode.FP4)), gr.Group(visible=m is Mode.GPTQ),
            f"*{m.value}*: {m.description}")


def build_app() -> gr.Blocks:
    choices, first, offline_note = model_choices()
    with gr.Blocks(title="Quantization Playground") as demo:
        active_key = gr.State(None)  # this browser session's selected model (a key; the registry owns models)
        gr.Markdown("# Quantization Playground\nWhat int8, nf4 and GPTQ buy and cost on a Hugging Face model.")
        if offline_note:
            gr.Markdown(f"> {offline_note}")
        with gr.Tabs():
            with gr.Tab("Model", id="model"):
                with gr.Row():
                    with gr.Column(scale=3):
                        model_box = gr.Dropdown(choices=choices, value=first, allow_custom_value=True,
                                                label="Model: Hub id, local folder or demo model")
                        with gr.Row():
                            revision = gr.Textbox(label="Revision", placeholder="main")
                            token = gr.Textbox(label="Hugging Face token (private or gated repos)", type="password",
                                               placeholder="used for this load only; never stored")
                        mode = gr.Radio([m.value for m in Mode], value=Mode.BF16.value, label="Mode")
                        mode_help = gr.Markdown(f"*bf16*: {Mode.BF16.description}")
                        with gr.Group(visible=False) as bnb_group:
                            skip_modules = gr.Textbox(label="Modules kept unquantized (comma-separated)",
                                                      placeholder="lm_head is always kept")
                        with gr.Group(visible=False) as int8_group:
                            with gr.Row():
                                int8_threshold = gr.Number(value=6.0, label="LLM.int8 outlier threshold")
                                int8_offload = gr.Checkbox(label="fp32 CPU offload for modules placed on the CPU")
                        with gr.Group(visible=False) as bnb4_group:
                            with gr.Row():
                                double_quant = gr.Checkbox(value=True, label="Double quantization")
                                compute_dtype = gr.Dropdown(["bf16", "fp16", "fp32"], value="bf16",
                                                            label="Compute dtype")
                                quant_storage = gr.Dropdown(["uint8", "bf16", "fp16", "fp32"], value="uint8",
                                                            label="Quant storage")
                        with gr.Group(visible=False) as gptq_group:
                            gptq_backend = gr.Dropdown([("automatic: torch on CPU, triton on GPU", "")] +
                                                       [(f"{k}: {v}", k) for k, v in GPTQ_BACKENDS.items()],
                                                       value="", label="GPTQ kernel")
                        with gr.Accordion("Placement", open=False):
                            with gr.Row():
                                device_map = gr.Dropdown(list(DEVICE_MAP_CHOICES), value="auto",
                                                         allow_custom_value=True, label="device_map")
                                max_memory = gr.Textbox(label="max_memory", placeholder="0=20GiB, 1=20GiB, cpu=30GiB")
                                attn = gr.Dropdown([DEFAULT_ATTN, "sdpa", "eager"], value=DEFAULT_ATTN,
                                                   label="Attention implementation")
                        with gr.Row():
                            load_btn = gr.Button("Load", variant="primary")
                            measure_modes_box = gr.CheckboxGroup([m.value for m in Mode if m is not Mode.GPTQ],
                                                                 value=["bf16", "int8", "nf4"],
                                                                 label="Compare load cost of modes")
                            measure_btn = gr.Button("Measure these modes")
                    with gr.Column(scale=2):
                        status = gr.Markdown()
                        loaded_dd = gr.Dropdown(choices=loaded_choices(), label="Loaded models (this tab's model)")
                        unload_btn = gr.Button("Unload selected")
                        loaded_df = gr.Dataframe(loaded_table(), headers=["model", "footprint (MiB)", "dtype", "in use"],
                                                 label="Loaded in this server (shared by all sessions)",
                                                 interactive=False)
                report_box = gr.Code(label="Load report", language=None, lines=14)
                history_df = gr.Dataframe(history_table(), headers=HISTORY_HEADERS, interactive=False,
                                          label="Every load in this server, side by side")
                refresh_btn = gr.Button("Refresh", size="sm")

        load_inputs = [model_box, revision, token, mode, int8_threshold, skip_modules, int8_offload, double_quant,
                       compute_dtype, quant_storage, gptq_backend, device_map, max_memory, attn]
        mode.change(toggle_mode_options, mode, [bnb_group, int8_group, bnb4_group, gptq_group, mode_help])
        load_btn.click(load, load_inputs, [status, report_box, loaded_dd, active_key, loaded_df, history_df],
                       api_name="load_model", concurrency_limit=1, concurrency_id="model-load")
        measure_btn.click(measure_modes, [measure_modes_box, *load_inputs],
                          [status, loaded_dd, loaded_df, history_df],
                          api_name="measure_modes", concurrency_limit=1, concurrency_id="model-load")
        unload_btn.click(unload, loaded_dd, [status, loaded_dd, active_key, loaded_df], api_name="unload_model")
        loaded_dd.input(select_model, loaded_dd, active_key)
        refresh_btn.click(refresh, None, [loaded_dd, loaded_df, history_df], api_name="refresh")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    demo = build_app()
    demo.queue(default_concurrency_limit=int(os.environ.get("QUANT_CONCURRENCY", "4")),
               max_size=int(os.environ.get("QUANT_QUEUE_SIZE", "64")))
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size=os.environ.get("QUANT_MAX_UPLOAD", "20mb"))


if __name__ == "__main__":
    main()
