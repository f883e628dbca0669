"""The Quantize tab's pipeline: quantize (GPTQ, or a method that quantizes at load time serialized: bitsandbytes int8
/ nf4, torchao int8 / int4, fp8), check quality, write the model card, and leave a complete folder on disk before
anything is pushed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from .access import ANY_FOLDER, LocalFolders, visitor_folder_name
from .errors import QuantError
from .gptq import GPTQRecipe, LayerErrorsFn, QuantizationCancelled, builtin_textsets
from .loader import LoadRequest, loaded_for_measuring
from .methods import METHODS, QuantizeJob, quantize_methods
from .metrics import perplexity, size_on_disk
from .quality import Reference, measure_quality, verdict, write_reference
from .placement import cuda_device_count
from .prompts import DataFileError, DataFileSpec, read_data_file
from .source import check_hub_access, resolve_location, resolve_source

ProgressFn = Callable[[float, str], None]
EVAL_TEXTSET = "python-reference-heldout"
CALIBRATION_TEXTSETS = ("python-reference",)
MAX_CALIBRATION_BYTES = 20 * 2**20
MAX_CALIBRATION_TEXTS = 100_000


def output_root() -> Path:
    """Where quantized models are written (QUANT_OUTPUT_DIR, default ./outputs)."""
    return Path(os.environ.get("QUANT_OUTPUT_DIR", "outputs")).resolve()


@dataclass
class CalibrationData:
    """Calibration text: a built-in set, pasted text, or an uploaded .txt / .jsonl file."""

    builtin: str | None = "python-reference"
    text: str | None = None
    file: str | None = None

    def describe(self) -> str:
        if self.file:
            return f"uploaded file {Path(self.file).name}"
        if self.text and self.text.strip():
            return f"pasted text ({len(self.text):,} characters)"
        return f"built-in text set '{self.builtin}' (the CPython language reference, shipped with this tool)"

    def texts(self) -> list[str]:
        if self.file:
            return _read_calibration_file(Path(self.file))
        if self.text and self.text.strip():
            size = len(self.text.encode("utf-8"))
            if size > MAX_CALIBRATION_BYTES:  # the upload limit, for text that arrived in the request instead
                raise DataFileError(
                    f"The pasted calibration text is {size / 2**20:.1f} MiB; the limit is "
                    f"{MAX_CALIBRATION_BYTES / 2**20:.1f} MiB.", "Calibration uses only samples × length tokens: "
                    "a few MiB of text is plenty.")
            return [self.text]
        sets = builtin_textsets()
        if self.builtin not in sets or self.builtin not in CALIBRATION_TEXTSETS:
            raise QuantError(f"Unknown calibration set {self.builtin!r}.", f"Built-in sets: {', '.join(CALIBRATION_TEXTSETS)}.")
        return [without_evaluation_lines(sets[self.builtin].read_text(encoding="utf-8"))]


def without_evaluation_lines(text: str) -> str:
    """`text` without the lines (of MIN_OVERLAP_LINE+ characters) of the built-in evaluation text.

    The CPython reference repeats passages across topics (the "compound" topic holds the text of "with" and "try"),
    so the built-in calibration set, made of other topics than the evaluation text, still shared 132 of its 299 long
    lines: every default quantization was scored partly on text it was calibrated on."""
    held_out = {line.strip() for line in builtin_textsets()[EVAL_TEXTSET].read_text(encoding="utf-8").splitlines()
                if len(line.strip()) >= MIN_OVERLAP_LINE}
    return "\n".join(line for line in text.splitlines() if line.strip() not in held_out)


CALIBRATION_FILES = DataFileSpec(
    "calibration text", (".txt", ".jsonl"), MAX_CALIBRATION_BYTES, MAX_CALIBRATION_TEXTS, None, "text",
    txt_per_line=False, limit_hint="Fewer, longer texts work as well: samples are cut from their concatenation.")
"""A .txt is one text; a .jsonl holds one text per line (a string or an object's "text"). Larger than prompt files."""


def _read_calibration_file(path: Path) -> list[str]:
    """The texts of an uploaded calibration file: the batch prompts' reader, with calibration's formats and limits."""
    return [text for _, text in read_data_file(path, CALIBRATION_FILES)]


@dataclass
class QuantizeResult:
    """What the Quantize tab shows and the model card records."""

    base_model: str
    method: str
    """The method's name (a key of quant.methods.METHODS: gptq, int8, nf4...)."""
    out_dir: str
    recipe: dict
    calibration: str
    seconds: float
    original_bytes: int
    quantized_bytes: int
    eval_text: str
    original_perplexity: float | None = None
    quantized_perplexity: float | None = None
    kernel: str | None = None
    """Layer class the quantized model loads with (e.g. Int4PackedLinear for gptq_int4pack, the 4-bit default)."""
    versions: dict = field(default_factory=dict)
    kind: str = "causal"
    quality: dict | None = None
    """Next-token quality of the quantized model against the original (quant.quality): reference, window, stride,
    positions, perplexity_ratio, kl_mean, kl_p99, top1_agreement, dp_mean, dp_p1, verdict."""
    warnings: list[str] = field(default_factory=list)
    """E.g. the evaluation text overlaps the calibration text (the measured quality is then optimistic)."""
    layer_errors: list[dict] = field(default_factory=list)
    """The quantization error gptqmodel computed per module (GPTQ, AWQ): {"layer", "module", "loss"} in the order
    they were quantized (quant.gptq.layer_errors); empty for methods without calibration."""

    def comparison_rows(self) -> list[list]:
        def fmt(v):
            return f"{v:.2f}" if isinstance(v, float) else "n/a"

        mib = 2**20
        return [["original", f"{self.original_bytes / mib:,.1f}", fmt(self.original_perplexity)],
                [self.method, f"{self.quantized_bytes / mib:,.1f}", fmt(self.quantized_perplexity)]]


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "torch", "gptqmodel", "optimum", "bitsandbytes", "torchao", "accelerate",
                 "huggingface-hub"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def output_folder(visitor: str | None = None) -> Path:
    """Where `visitor`'s quantized models go: a folder of their own under the output folder on a served app (no
    visitor sees, loads or pushes another's), the output folder itself for the CLI (None)."""
    return output_root() / visitor_folder_name(visitor) if visitor else output_root()


def expire_visitor_outputs(max_age_hours: float) -> list[Path]:
    """Remove visitors' quantized folders (under their own folders of the output folder) last changed more than
    `max_age_hours` ago; 0 keeps them. The CLI's outputs (directly in the output folder) are never touched.
    Returns what was removed."""
    if max_age_hours <= 0 or not output_root().is_dir():
        return []
    cutoff = time.time() - max_age_hours * 3600
    removed = []
    for folder in output_root().glob("v-*/*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:
            continue
    return removed


def default_output_dir(base_model: str, label: str, visitor: str | None = None) -> Path:
    name = re.sub(r"[^\w.-]+", "-", base_model.removeprefix("demo:").rstrip("/").split("/")[-1]).strip("-.")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return output_folder(visitor) / f"{name}-{label}-{stamp}"


def _local_copy(model: str, revision: str | None, token: str | None, folders: LocalFolders | None) -> str:
    """A local folder of the source checkpoint (downloaded once into the HF cache for a Hub id)."""
    location, is_local = resolve_location(model, folders)
    if is_local:
        return location
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, revision=revision, token=token)
    except Exception as exc:  # noqa: BLE001 - the Hub's own answer gives the precise reason
        check_hub_access(model, revision, token)
        raise QuantError(f"Downloading {model} failed: {str(exc).splitlines()[0]}") from None


def _evaluate(request: LoadRequest, text: str, folder: Path | None = None,
              label: str = "original") -> tuple[float, Reference | None]:
    """The original's perplexity on `text` and, with `folder`, its next-token log-probs written there (quant.quality)."""
    with loaded_for_measuring(request) as loaded:
        reference = write_reference(loaded, text, folder, label=label) if folder is not None else None
        return perplexity(loaded, text, max_tokens=4096).value, reference


MIN_OVERLAP_LINE = 40
"""Lines of the evaluation text shorter than this (blank lines, headings, short code) are not counted as overlap."""


def overlap_warning(eval_text: str, calibration_texts: list[str]) -> str | None:
    """A warning when lines of the evaluation text (at least MIN_OVERLAP_LINE characters) also appear in the
    calibration text: the measured quality is then optimistic (the model was fitted on what it is scored on)."""
    lines = {line.strip() for line in eval_text.splitlines() if len(line.strip()) >= MIN_OVERLAP_LINE}
    if not lines:
        return None
    seen = {line.strip() for text in calibration_texts for line in text.splitlines()}
    shared = lines & seen
    if not shared:
        return None
    return (f"{len(shared)} of the evaluation text's {len(lines)} lines (of {MIN_OVERLAP_LINE}+ characters) also "
            "appear in the calibration text: the perplexity and next-token quality are optimistic.")


def _kernel(loaded) -> str:
    """The linear layer classes a quantized model loads with (e.g. Int4PackedLinear)."""
    return ", ".join(k for k in loaded.report.linear_layers if k != "Linear") or "Linear"


def _check_saved(request: LoadRequest, out_dir: Path, text: str | None, reference: Reference | None = None):
    """Load the folder just saved, as a user will (quant.loader refuses missing, unexpected or mis-shaped weights),
    and measure its perplexity on `text` (None: no measure) and its next-token quality against `reference`. Returns
    (kernel, perplexity, quality or None). A folder that does not load is removed: nothing is left that looks like a
    finished quantization, and no card is written for it."""
    with ExitStack() as stack:
        try:
            loaded = stack.enter_context(loaded_for_measuring(request))
        except QuantError as exc:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise QuantError(f"The quantized model does not load correctly, so {out_dir} was removed: {exc.message}",
                             exc.hint) from None
        ppl = perplexity(loaded, text, max_tokens=4096).value if text is not None else None
        quality = measure_quality(loaded, reference) if text is not None and reference is not None else None
        return _kernel(loaded), ppl, quality


def quantize(model: str, *, method: str, recipe: GPTQRecipe | None = None,
             calibration: CalibrationData | None = None, out_dir: Path | None = None, revision: str | None = None,
             token: str | None = None, evaluate: bool = True, progress: ProgressFn | None = None,
             stop: threading.Event | None = None, visitor: str | None = None,
             folders: LocalFolders | None = None, on_layer_errors: LayerErrorsFn | None = None) -> QuantizeResult:
    """Quantize `model` with `method` (a name of `quantize_methods()`: gptq, int8, nf4...), save it with a model card,
    measure it.

    The folder is complete on disk when this returns (pushing is a separate step that only reads it). `visitor` and
    `folders`: who asks on a served app (their outputs go to a folder of their own) and which local folders they may
    name; None for both: the CLI's rules. `on_layer_errors(errors)`: the calibrated methods' per-module error
    (QuantizeResult.layer_errors' entries) so far, each time a layer adds to it while quantization runs; the last
    call has the result's list.
    """
    from .hub import write_model_card

    progress = progress or (lambda fraction, message: None)
    stop = stop or threading.Event()
    if method not in METHODS:
        raise QuantError(f"Unknown quantization method {method!r}.", f"Use one of {', '.join(quantize_methods())}.")
    quant_method = METHODS[method]
    if method not in quantize_methods():  # a load mode that cannot be written to disk: its own reason
        raise QuantError(*quant_method.quantize_refusal(None, "causal"))
    source = resolve_source(model, revision=revision, token=token, folders=folders)
    if not source.is_local:  # a config in the local cache is no proof that this token may read the repo
        check_hub_access(source.location, source.revision, token)
    if source.checkpoint_quant_method:
        raise QuantError(f"{model} is already quantized ({source.checkpoint_quant_method}).",
                         "Start from the original, unquantized checkpoint.")
    refusal = quant_method.quantize_refusal(source.config, source.kind)
    if refusal:  # before anything is downloaded or loaded
        raise QuantError(*refusal)
    on_cuda = cuda_device_count() > 0
    device = "cuda:0" if on_cuda else "cpu"  # where calibrated methods work, one layer at a time
    # Whole-model loads (load-time quantization, the perplexity checks) spread over every GPU, so a model larger than
    # one GPU can be quantized and measured.
    placement = "auto" if cuda_device_count() > 1 else device
    local = _local_copy(model, revision, token, folders)
    eval_text = builtin_textsets()[EVAL_TEXTSET].read_text(encoding="utf-8")
    started = time.perf_counter()

    texts = None
    if quant_method.calibrated:
        recipe = recipe or GPTQRecipe()
        calibration = calibration or CalibrationData()
        texts = calibration.texts()
    out_dir = Path(out_dir or default_output_dir(model, quant_method.output_label(recipe), visitor))
    outcome = quant_method.quantize(QuantizeJob(
        source_folder=local, out_dir=out_dir, device=device, placement=placement, progress=progress, stop=stop,
        recipe=recipe, calibration_texts=texts,
        calibration_description=calibration.describe() if quant_method.calibrated else "",
        on_layer_errors=on_layer_errors))
    quantized_request = LoadRequest(model=str(out_dir), mode=method, device_map=placement, folders=ANY_FOLDER)
    seconds = time.perf_counter() - started

    result = QuantizeResult(
        base_model=model, method=method, out_dir=str(out_dir), recipe=outcome.recipe,
        calibration=outcome.calibration, seconds=seconds, original_bytes=size_on_disk(local),
        quantized_bytes=size_on_disk(out_dir), eval_text=f"built-in '{EVAL_TEXTSET}' (held out of calibration)",
        versions=library_versions(), kind=source.kind, layer_errors=outcome.layer_errors)
    if texts is not None:
        warning = overlap_warning(eval_text, texts)
        if warning:
            result.warnings.append(warning)
            result.eval_text = f"built-in '{EVAL_TEXTSET}'"
    measure = evaluate and source.kind == "causal" and not stop.is_set()
    reference_dir = Path(tempfile.mkdtemp(prefix="quant-reference-"))
    try:
        reference = None
        if measure:
            # The original first: its perplexity and its next-token log-probs, kept on disk (quant.quality) while
            # the quantized model loads, so the two are never held at once.
            progress(0.82, "Perplexity and next-token log-probs of the original model")
            original_mode = METHODS["fp16" if on_cuda else "bf16"]
            result.original_perplexity, reference = _evaluate(
                LoadRequest(model=local, mode=original_mode.name, device_map=placement, folders=ANY_FOLDER), eval_text,
                reference_dir, f"original ({original_mode.name})")
        measure = measure and not stop.is_set()
        progress(0.91, "Loading the quantized model" + (" and its quality" if measure else ""))
        result.kernel, result.quantized_perplexity, quality = _check_saved(
            quantized_request, out_dir, eval_text if measure else None, reference)
    finally:
        shutil.rmtree(reference_dir, ignore_errors=True)
    if evaluate and source.kind == "causal" and stop.is_set():
        raise QuantizationCancelled("Stopped before the quality check; the quantized folder is saved.")
    if quality is not None:
        ratio = (result.quantized_perplexity / result.original_perplexity
                 if result.quantized_perplexity and result.original_perplexity else None)
        result.quality = {"reference": quality.reference, "window": quality.window, "stride": quality.stride,
                          "positions": quality.positions, "perplexity_ratio": ratio, "kl_mean": quality.kl_mean,
                          "kl_p99": quality.kl_p99, "top1_agreement": quality.top1_agreement,
                          "dp_mean": quality.dp_mean, "dp_p1": quality.dp_p1,
                          "verdict": verdict(quality.top1_agreement, quality.kl_mean, "the original")}
    write_model_card(result, out_dir)
    (Path(out_dir) / "quantization_report.json").write_text(json.dumps(asdict(result), indent=1))
    progress(1.0, "Done")
    return result
