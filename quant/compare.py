"""Side-by-side measurement of one model in several modes: memory, speed, quality and answers.

The same code serves the Compare tab, `python -m quant compare` and the GPU benchmark (bench/), so the numbers a
team sees in the app are the ones the benchmark reports.
"""

from __future__ import annotations

import difflib
import html
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import TextIteratorStreamer

from .access import LocalFolders
from .batching import CONTINUOUS, PADDED, ContinuousUnavailable, EngineChoice, choose_engine, measure_continuous
from .errors import PlacementError, QuantError
from .generation import GenerationSettings, cache_tokens, end_stream_when_failed, generate_batch, start_generate
from .gptq import builtin_textsets
from .loader import LoadedModel, LoadRequest
from .metrics import perplexity
from .quality import THRESHOLDS_TEXT, VERDICT_THRESHOLDS, Reference, measure_quality, verdict, write_reference
from .methods import METHODS, Mode, QuantOptions, modes_that_run_here, parse_mode
from .placement import TENSOR_PARALLEL
from .registry import ModelRegistry
from .report import process_rss
from .settings import load_settings

ProgressFn = Callable[[float, str], None]
SCHEMA_VERSION = 2
"""2: next-token quality against the 16-bit reference (ModeResult's kl_*/top1/dp_*/verdict, a top-level "quality")."""
DEFAULT_PROMPTS = ("The with statement is used to", "A class definition defines",
                   "Explain what a generator is in Python.")


@dataclass(frozen=True)
class ModeSpec:
    """One column of a comparison: a mode, where its weights come from, and how it is labelled."""

    label: str
    mode: Mode
    model: str
    options: QuantOptions = field(default_factory=QuantOptions)
    attn_implementation: str | None = None


def parse_mode_specs(model: str, text: str | list[str], gptq_backend: str | None = None, *,
                     on_cuda: bool | None = None) -> list[ModeSpec]:
    """Parse "bf16,int8,nf4,gptq:DIR" (and "sdpa:bf16" / "eager:bf16" to vary attention) into mode specs. A method
    that loads only its own checkpoints (GPTQ) is named with one: `<method>:FOLDER` or `<method>:user/repo`. "all"
    stands for every load-time mode that runs here (`modes_that_run_here`; on the GPU unless `on_cuda` is False)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t and t.strip()]
    if "all" in items:
        here = modes_that_run_here(torch.cuda.is_available() if on_cuda is None else on_cuda)
        expanded: list[str] = []
        for item in items:
            expanded += [m for m in (here if item == "all" else [item]) if m not in expanded]
        items = expanded
    if not items:
        raise QuantError("Pick at least one mode to compare.")
    specs = []
    for item in items:
        head, _, rest = item.partition(":")
        if head in METHODS and METHODS[head].needs_quantized_checkpoint:
            if not rest:
                raise QuantError(f"{head} needs a quantized checkpoint: write {head}:FOLDER or {head}:user/repo.")
            specs.append(ModeSpec(item, parse_mode(head), rest, QuantOptions(gptq_backend=gptq_backend)))
        elif head in {"sdpa", "eager", "flash_attention_2", "flex_attention"} and rest:
            specs.append(ModeSpec(item, parse_mode(rest), model, attn_implementation=head))
        else:
            specs.append(ModeSpec(item, parse_mode(item), model))
    return specs


@dataclass
class ModeResult:
    """One row of the comparison; a failing mode keeps its error and leaves the numbers None."""

    label: str
    mode: str
    model: str
    error: str | None = None
    footprint_bytes: int | None = None
    load_seconds: float | None = None
    compile_seconds: float | None = None
    """Compiling and warming the fast path at load time (0 on the eager path)."""
    ram_bytes: int | None = None
    peak_gpu_bytes: int | None = None
    time_to_first_token_s: float | None = None
    decode_tokens_per_s: float | None = None
    batch_size: int | None = None
    batch_tokens_per_s: float | None = None
    perplexity: float | None = None
    linear_layers: dict | None = None
    kept: list[dict] = field(default_factory=list)
    """Modules the load left unquantized or wider than the mode's dtype, one record per reason (the load report's)."""
    attn_implementation: str | None = None
    generation_path: str = ""
    """Which generation path the speed measurements ran on (compiled or eager, and why)."""
    batch_engine: str = ""
    """Which batch engine measured the batch column, as a Batch job would run (quant.batching)."""
    answers: list[str] = field(default_factory=list)
    # Next-token quality against the 16-bit reference of the same model, on the same windows (quant.quality).
    reference: str | None = None
    reference_perplexity: float | None = None
    perplexity_ratio: float | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    """% of positions where the mode and the reference pick the same most likely token."""
    dp_mean: float | None = None
    dp_p1: float | None = None
    """Mean and 1st percentile of p_mode(next token) - p_ref(next token)."""
    kl_per_window: list[float] = field(default_factory=list)
    quality_window: int | None = None
    quality_stride: int | None = None
    quality_positions: int | None = None
    verdict: str = ""
    quality_error: str | None = None
    """Why the quality columns are empty (the reference failed), if they are."""


def _cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_decode(loaded: LoadedModel, prompt: str, new_tokens: int) -> tuple[float, float, bool]:
    """Time to first token, batch-1 decode rate (tokens after the first / their time) with `new_tokens` forced, and
    whether the compiled path served it (the same path the Chat tab uses)."""
    inputs = loaded.tokenizer(prompt, return_tensors="pt").to(loaded.device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True)
    stamps: list[float] = []
    original_put = streamer.put

    def put(value):  # every call after the prompt is one token
        stamps.append(time.perf_counter())
        original_put(value)

    streamer.put = put
    kwargs = dict(**inputs, streamer=streamer, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, temperature=None, top_p=None, top_k=None,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    _cuda_sync()
    started = time.perf_counter()
    future, compiled = start_generate(loaded, kwargs, batch_size=1,
                                      total_tokens=cache_tokens(loaded, inputs["input_ids"].shape[1], new_tokens))
    end_stream_when_failed(future, streamer)  # a failing mode fails its row at once, never hangs on the stream
    for _ in streamer:
        pass
    future.result()
    _cuda_sync()
    ended = time.perf_counter()
    token_stamps = stamps[1:]  # the first put is the prompt (causal) or the decoder start token (seq2seq)
    first = token_stamps[0] if token_stamps else ended
    decode = (len(token_stamps) - 1) / max(ended - first, 1e-9) if len(token_stamps) > 1 else 0.0
    return first - started, decode, compiled


def measure_batch(loaded: LoadedModel, prompts: list[str], batch_size: int,
                  new_tokens: int) -> tuple[float, bool, EngineChoice]:
    """Generated tokens per second for `batch_size` prompts (`prompts` over and over), `new_tokens` each, on the
    engine a Batch job on this model uses (quant.batching.choose_engine); whether the compiled path served it, and
    that engine. Padded: one batch of them all, its batch size compiled first where a Batch job would compile it
    (QUANT_COMPILE_BATCH_ON_DEMAND; the warm-up call does, so its compile stays out of the timed one)."""
    batch = [prompts[i % len(prompts)] for i in range(batch_size)]
    tokenizer = loaded.tokenizer
    choice = choose_engine(loaded, GenerationSettings(max_new_tokens=new_tokens))
    if choice.engine == CONTINUOUS:
        try:
            return measure_continuous(loaded, tokenizer(batch)["input_ids"], new_tokens), False, choice
        except ContinuousUnavailable as exc:
            choice = EngineChoice(PADDED, f"continuous batching: {exc}")
    causal = loaded.source.kind == "causal"
    encoded = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left" if causal else "right")
    kwargs = dict(**encoded.to(loaded.device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                  do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)
    tokens = cache_tokens(loaded, encoded["input_ids"].shape[1], new_tokens)
    if load_settings().compile_batch_on_demand:
        loaded.path.add_batch_size(batch_size, tokens)  # as a Batch job does (refused: the batch runs eagerly)
    _cuda_sync()
    started = time.perf_counter()
    future, compiled = start_generate(loaded, kwargs, batch_size=batch_size, total_tokens=tokens)
    future.result()
    _cuda_sync()
    return batch_size * new_tokens / (time.perf_counter() - started), compiled, choice


def measure_mode(loaded: LoadedModel, result: ModeResult, *, prompts: list[str], eval_text: str | None,
                 batch_size: int, new_tokens: int, answer_tokens: int, reference: Reference | None = None,
                 reference_perplexity: float | None = None) -> None:
    """Fill `result` with measurements of a loaded model (warm-up first, so one-time costs stay out)."""
    report = loaded.report
    result.footprint_bytes = report.footprint_bytes
    result.load_seconds = report.load_seconds
    result.compile_seconds = report.compile_seconds
    result.linear_layers = report.linear_layers
    result.kept = report.kept
    result.attn_implementation = report.attn_implementation
    measure_decode(loaded, prompts[0], 4)  # warm-up: kernels, caches, allocator
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result.time_to_first_token_s, result.decode_tokens_per_s, decode_compiled = measure_decode(
        loaded, prompts[0], new_tokens)
    result.batch_size = batch_size
    measure_batch(loaded, prompts, batch_size, 2)  # warm-up at this batch shape (kernel selection, workspaces)
    result.batch_tokens_per_s, batch_compiled, engine = measure_batch(loaded, prompts, batch_size, new_tokens)
    result.batch_engine = engine.describe()
    result.generation_path = _path_used(loaded, decode_compiled, batch_compiled, batch_size, engine)
    if torch.cuda.is_available():
        result.peak_gpu_bytes = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
    result.ram_bytes = process_rss()
    if eval_text and loaded.source.kind == "causal":
        result.perplexity = perplexity(loaded, eval_text, max_tokens=4096).value
        if reference is not None:
            fill_quality(loaded, result, reference, reference_perplexity)
    settings = GenerationSettings(max_new_tokens=answer_tokens)
    result.answers = [text for text, _ in generate_batch(loaded, list(prompts), settings)]


def fill_quality(loaded: LoadedModel, result: ModeResult, reference: Reference,
                 reference_perplexity: float | None) -> None:
    """The next-token metrics of a loaded model against the reference file, into `result`."""
    quality = measure_quality(loaded, reference)
    result.reference = quality.reference
    result.reference_perplexity = reference_perplexity
    if result.perplexity is not None and reference_perplexity:
        result.perplexity_ratio = result.perplexity / reference_perplexity
    result.kl_mean, result.kl_p99 = quality.kl_mean, quality.kl_p99
    result.top1_agreement = quality.top1_agreement
    result.dp_mean, result.dp_p1 = quality.dp_mean, quality.dp_p1
    result.kl_per_window = quality.kl_per_window
    result.quality_window, result.quality_stride = quality.window, quality.stride
    result.quality_positions = quality.positions
    result.verdict = verdict(quality.top1_agreement, quality.kl_mean, quality.reference)


def _path_used(loaded: LoadedModel, decode_compiled: bool, batch_compiled: bool, batch_size: int,
               engine: EngineChoice) -> str:
    """Which path the decode and batch measurements ran on, e.g. "compiled (b1, b8)", "eager (reason)" or
    "compiled (b1); b8: continuous batching"."""
    if engine.engine == CONTINUOUS:
        return f"{'compiled (b1)' if decode_compiled else loaded.path.describe()}; b{batch_size}: {engine.label}"
    if decode_compiled and batch_compiled:
        return f"compiled (b1, b{batch_size})"
    if decode_compiled or batch_compiled:
        compiled, eager = ("b1", f"b{batch_size}") if decode_compiled else (f"b{batch_size}", "b1")
        return f"compiled ({compiled}), eager ({eager}: not a compiled batch size or too long)"
    return loaded.path.describe()


@dataclass
class Comparison:
    model: str
    prompts: list[str]
    batch_size: int
    new_tokens: int
    device: str
    results: list[ModeResult]

    def to_json(self) -> dict:
        measured = next((r for r in self.results if r.reference), None)
        failed = next((r.quality_error for r in self.results if r.quality_error), None)
        quality = {"reference": measured.reference if measured else None,
                   "window": measured.quality_window if measured else None,
                   "stride": measured.quality_stride if measured else None,
                   "positions": measured.quality_positions if measured else None,
                   "reference_perplexity": measured.reference_perplexity if measured else None,
                   "thresholds": VERDICT_THRESHOLDS, "thresholds_text": THRESHOLDS_TEXT, "error": failed}
        return {"schema": SCHEMA_VERSION, "model": self.model, "device": self.device, "prompts": self.prompts,
                "batch_size": self.batch_size, "new_tokens": self.new_tokens, "quality": quality,
                "results": [asdict(r) for r in self.results]}


def _measure_in_registry(registry: ModelRegistry, key: str, visitor: str | None, result: ModeResult,
                         **measure) -> None:
    """Measure a loaded model while lending it from the registry.

    A function of its own so that no reference to the model outlives the measurement: a `with ... as loaded` in
    `compare`'s loop kept the name bound after the block, so each mode's weights stayed allocated through the next
    mode's load (an 8B bf16 model's 15 GiB showed up in the next row's peak GPU memory on an H100).
    """
    with registry.use(key, visitor) as loaded:
        measure_mode(loaded, result, **measure)


def reference_spec(model: str, specs: list[ModeSpec]) -> ModeSpec:
    """The 16-bit reference of `model`: its bf16 (else fp16) spec if the comparison has one, else bf16 of `model`."""
    for mode in (Mode.BF16, Mode.FP16):
        for spec in specs:
            if spec.mode is mode and spec.model == model and spec.attn_implementation is None:
                return spec
    return ModeSpec("bf16", Mode.BF16, model)


def _write_reference_in_registry(registry: ModelRegistry, request: LoadRequest, visitor: str | None, label: str,
                                 eval_text: str, folder: Path,
                                 keep: bool) -> tuple[Reference | None, float | None, str | None]:
    """Load the reference, write its log-probs to `folder` and measure its perplexity; release it unless it was
    loaded before, or `keep` (it is also a row of the comparison: measured next without a second load). Returns the
    reference (None for a seq2seq model: no next-token quality), its perplexity, and the key of a model this call
    loaded and kept (the caller releases it)."""
    already_loaded = {m.key for m in registry.loaded(visitor)}
    key = registry.load(request).key
    ours = key not in already_loaded
    try:
        with registry.use(key, visitor) as loaded:
            if loaded.source.kind != "causal":
                return None, None, key if ours and keep else None
            reference = write_reference(loaded, eval_text, folder, label=label)
            return reference, perplexity(loaded, eval_text, max_tokens=4096).value, key if ours and keep else None
    finally:
        if ours and not keep and registry.in_use(key) == 0:
            registry.unload(key, visitor)


def compare(model: str, specs: list[ModeSpec], *, registry: ModelRegistry, prompts: list[str] | None = None,
            eval_text: str | None = None, batch_size: int = 8, new_tokens: int = 32, answer_tokens: int = 32,
            device_map: str = "auto", max_memory: str | None = None, progress: ProgressFn | None = None,
            stop: threading.Event | None = None, visitor: str | None = None,
            folders: LocalFolders | None = None) -> Iterator[ModeResult]:
    """Load each mode in turn through the registry, measure it, unload it (unless it was loaded before); yield rows.

    First the 16-bit reference of `model` (`reference_spec`) is loaded alone, its next-token log-probs on the
    evaluation windows are written to a temporary folder (quant.quality) and it is released (or, when it is the first
    row, measured as that row without loading it again); every mode is then
    measured against that file, so no two models are held at once. A mode that fails is yielded with its error and
    the others still run; a failing reference leaves the quality columns empty with its reason (`quality_error`).
    `device_map` and `max_memory` place every mode alike (e.g. split over two GPUs with "0=20GiB, 1=20GiB").
    `visitor` and `folders`: who asks, and which local folders they may name (a served app's visitor; None: the CLI's
    rules).
    """
    progress = progress or (lambda fraction, message: None)
    prompts = [p for p in (prompts or DEFAULT_PROMPTS) if p.strip()]
    if eval_text is None:
        eval_text = builtin_textsets()["python-reference-heldout"].read_text(encoding="utf-8")
    if not 1 <= batch_size <= 256 or not 1 <= new_tokens <= 2048:
        raise QuantError("Batch size must be 1-256 and new tokens 1-2048.")
    if (device_map or "").strip().lower() == TENSOR_PARALLEL:
        raise PlacementError("Compare measures perplexity and next-token quality, which need each mode in one process; "
                             "tensor parallelism runs 16/32-bit modes only and generation only.",
                             "Compare on one GPU or split over GPUs (device_map auto), then load the chosen mode "
                             "with tensor_parallel.")

    def request_of(spec: ModeSpec) -> LoadRequest:
        return LoadRequest(model=spec.model, mode=spec.mode, options=spec.options, device_map=device_map,
                           max_memory=max_memory, attn_implementation=spec.attn_implementation, owner=visitor,
                           folders=folders)

    folder = Path(tempfile.mkdtemp(prefix="quant-reference-"))
    try:
        reference, reference_ppl, quality_error, kept = None, None, None, None
        if eval_text and specs and not (stop is not None and stop.is_set()):
            ref_spec = reference_spec(model, specs)
            progress(0.0, f"reference ({ref_spec.label}): next-token log-probs")
            try:
                reference, reference_ppl, kept = _write_reference_in_registry(
                    registry, request_of(ref_spec), visitor, ref_spec.label, eval_text, folder,
                    keep=specs[0] == ref_spec)  # kept only for the very next row: never two models at once
            except QuantError as exc:
                quality_error = f"reference {ref_spec.label}: {exc}"
            except Exception as exc:  # noqa: BLE001 - the rows are still measured, without the quality columns
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                quality_error = f"reference {ref_spec.label}: {type(exc).__name__}: {first_line}"
        for index, spec in enumerate(specs):
            if stop is not None and stop.is_set():
                break
            progress(index / len(specs), f"{spec.label}: loading")
            result = ModeResult(label=spec.label, mode=spec.mode.value, model=spec.model, quality_error=quality_error)
            request = request_of(spec)
            already_loaded = {m.key for m in registry.loaded(visitor)} - {kept}  # the reference this run kept
            try:
                key = registry.load(request).key
                progress((index + 0.3) / len(specs), f"{spec.label}: measuring")
                _measure_in_registry(registry, key, visitor, result, prompts=prompts, eval_text=eval_text,
                                     batch_size=batch_size, new_tokens=new_tokens, answer_tokens=answer_tokens,
                                     reference=reference, reference_perplexity=reference_ppl)
                if key not in already_loaded and registry.in_use(key) == 0:
                    registry.unload(key, visitor)
            except QuantError as exc:
                result.error = str(exc)
            except Exception as exc:  # noqa: BLE001 - one mode's failure is reported in its row
                result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            yield result
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if kept is not None and registry.in_use(kept) == 0 and any(m.key == kept for m in registry.loaded(visitor)):
            registry.unload(kept, visitor)  # stopped before its row
    progress(1.0, "Done")


def relative_to_baseline(results: list[ModeResult]) -> dict[str, dict[str, float | None]]:
    """Each row's memory, speed and perplexity relative to the first 16-bit row (or the first row)."""
    ok = [r for r in results if not r.error]
    if not ok:
        return {}
    base = next((r for r in ok if r.mode in ("bf16", "fp16")), ok[0])

    def ratio(a, b):
        return a / b if a is not None and b else None

    return {r.label: {"memory": ratio(r.footprint_bytes, base.footprint_bytes),
                      "decode": ratio(r.decode_tokens_per_s, base.decode_tokens_per_s),
                      "batch": ratio(r.batch_tokens_per_s, base.batch_tokens_per_s),
                      "perplexity": ratio(r.perplexity, base.perplexity)} for r in ok}


def highlight_differences(baseline: str, other: str) -> str:
    """HTML of `other` with the words that differ from `baseline` marked."""
    a, b = baseline.split(), other.split()
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        words = html.escape(" ".join(b[j1:j2]))
        if not words:
            continue
        out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return " ".join(out)


def write_json(comparison: Comparison, path: str | Path) -> Path:
    import json

    path = Path(path)
    path.write_text(json.dumps(comparison.to_json(), indent=1))
    return path
