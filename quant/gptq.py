"""GPTQ quantization with gptqmodel: calibration data in, a saved GPTQ checkpoint out.

The kernel is never left to gptqmodel's automatic choice (on Hopper it picks Machete, which downloads CUTLASS at run
time): packing uses the portable torch kernel, and the checkpoint is in the standard `gptq` format that every kernel
(torch, triton, ExLlamaV2, Marlin) loads.
"""

from __future__ import annotations

import errno
import json
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import QuantError

TEXTSETS_DIR = Path(__file__).resolve().parent / "textsets"


@dataclass(frozen=True)
class GPTQRecipe:
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    damp_percent: float = 0.05
    num_samples: int = 128
    seq_len: int = 512

    def validate(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise QuantError(f"GPTQ bits must be 2, 3, 4 or 8, not {self.bits}.")
        if self.group_size != -1 and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise QuantError(f"Group size {self.group_size} is not a power of two >= 16 (or -1 for per-column).")
        if not 0 < self.damp_percent < 1:
            raise QuantError("damp_percent must lie between 0 and 1 (0.01-0.1 are usual).")
        if self.num_samples < 1 or self.seq_len < 16:
            raise QuantError("Calibration needs at least 1 sample of at least 16 tokens.")


def builtin_textsets() -> dict[str, Path]:
    """Calibration and evaluation texts that ship with the project (no download at run time)."""
    return {p.stem: p for p in sorted(TEXTSETS_DIR.glob("*.txt"))}


def calibration_samples(texts: list[str], tokenizer, num_samples: int, seq_len: int) -> list[dict[str, list[int]]]:
    """Cut the texts into `num_samples` windows of `seq_len` tokens (fewer if the text is short)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= num_samples * seq_len:
            break
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:num_samples]
    if not windows:
        raise QuantError(
            f"The calibration text is too short: {len(ids)} tokens, and one sample needs {seq_len}.",
            "Give more text or a shorter sample length.",
        )
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]


class QuantizationCancelled(QuantError):
    """The user stopped the quantization; nothing was saved."""


ProgressFn = Callable[[float, str], None]
LayerErrorsFn = Callable[[list[dict]], None]
"""Called with the per-module quantization error so far (`layer_errors`' entries), each time it grows."""


@dataclass
class GPTQResult:
    out_dir: Path
    seconds: float
    samples: int
    recipe: dict
    layer_errors: list[dict] = field(default_factory=list)
    """gptqmodel's per-module quantization error (`layer_errors`), one entry per quantized module."""


def layer_errors(quant_log: list[dict] | None) -> list[dict]:
    """gptqmodel's per-module quantization log (`model.quant_log`, gptqmodel/models/writer.py's keys) as
    {"layer": int, "module": str, "loss": float | None}, in quantization order.

    GPTQ's loss is the module's weight reconstruction error on the calibration Hessian (gptq_processor.py); AWQ's the
    mean squared error of the output of the modules that share one scale search, at the best scale (awq_processor.py,
    `_compute_best_scale`), so the modules of one group share it; AWQ writes "not applicable" for a module it did not
    scale, kept here as None. gptqmodel writes the loss as text (`f"{loss:.10f}"`)."""
    import math

    from gptqmodel.models.writer import PROCESS_LOG_LAYER, PROCESS_LOG_MODULE, QUANT_LOG_LOSS

    errors = []
    for entry in quant_log or []:
        layer, module = entry.get(PROCESS_LOG_LAYER), entry.get(PROCESS_LOG_MODULE)
        if layer is None or module is None:
            continue
        try:
            loss = float(entry.get(QUANT_LOG_LOSS))
        except (TypeError, ValueError):
            loss = None
        errors.append({"layer": int(layer), "module": str(module),
                       "loss": loss if loss is not None and math.isfinite(loss) else None})
    return errors


QUANT_LOG_PROCESSORS = ("gptq", "gptq v2", "awq")
"""The processors whose log gptqmodel keeps as `model.quant_log` (gptqmodel/looper/module_looper.py, at the end of
`_loop_impl`)."""


def _running_quant_log() -> list[dict] | None:
    """The quant_log gptqmodel is writing, read from inside its layer callback; None where it cannot be read.

    gptqmodel 7.6 publishes its per-module log (`model.quant_log`) only when the whole model is done; while it runs,
    the log is the `log` list of its processor (gptq_processor.py, awq_processor.py append a row per module as it is
    quantized), which the ModuleLooper that calls the layer callback (`callbackup`) holds in `processors`. Neither is
    public: the looper is found on the calling stack, and anything unexpected (another caller, renamed attributes,
    an error) gives None, so that a change in gptqmodel costs the live view, never the quantization."""
    import sys

    try:
        from gptqmodel.looper.module_looper import ModuleLooper

        frame = sys._getframe(1)
        for _ in range(12):  # a few frames up: the layer callback, then the looper's callbackup
            if frame is None:
                return None
            looper = frame.f_locals.get("self")
            if isinstance(looper, ModuleLooper):
                for processor in looper.processors:
                    log = getattr(processor, "log", None)
                    if processor.name() in QUANT_LOG_PROCESSORS and isinstance(log, list):
                        return list(log)
                return None
            frame = frame.f_back
    except Exception:  # noqa: BLE001 - a gptqmodel change: no live view; the log at the end still comes
        return None
    return None


class _LayerErrorReports:
    """Reports the per-module error to `report` as it grows (from the layer callback, which gptqmodel calls from its
    loop and its finalizer threads), and once more at the end: the last report is the result's list."""

    def __init__(self, report: LayerErrorsFn | None):
        self.report = report
        self.sent: list[dict] = []
        self.lock = threading.Lock()

    def during(self) -> None:
        if self.report is None:
            return
        try:
            errors = layer_errors(_running_quant_log())
        except Exception:  # noqa: BLE001 - rows of another shape: no live view (the result reads them again)
            return
        self._send(errors)

    def final(self, errors: list[dict]) -> None:
        if self.report is not None:
            self._send(errors)

    def _send(self, errors: list[dict]) -> None:
        with self.lock:
            if len(errors) <= len(self.sent) and self.sent[:len(errors)] == errors:
                return  # nothing new
            self.sent = errors
            self.report(list(errors))


def layer_error_summary(errors: list[dict]) -> str | None:
    """One line on the per-module quantization error: the mean and the worst module, or None without a loss."""
    measured = [e for e in errors if e.get("loss") is not None]
    if not measured:
        return None
    worst = max(measured, key=lambda e: e["loss"])
    mean = sum(e["loss"] for e in measured) / len(measured)
    return (f"mean loss {mean:.3g} over {len(measured)} modules; the worst is layer {worst['layer']} "
            f"{worst['module']} ({worst['loss']:.3g})")


def _layer_count(model) -> int:
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def save_atomically(write: Callable[[Path], None], out_dir: Path) -> Path:
    """Write a folder under a temporary name, then rename it: a folder under its final name is always complete.

    Any failure removes the partial folder; a write error says what the disk said (`_save_error`).
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write(partial)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _save_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _save_error(exc: OSError, out_dir: Path) -> QuantError:
    """The message for a failed save: what the disk said, or what the library said when it was not the disk.

    Only a full disk (or quota) is told to free space. An OSError without an errno is raised by library code about its
    own files (gptqmodel's "Offloaded tensor 'lm_head.weight' not found in offload directory"), not by the disk."""
    if exc.errno in _DISK_FULL:
        return QuantError(f"Saving to {out_dir} failed: the disk is full. Nothing was kept.",
                          "Free some space (or choose another output folder) and run again.")
    if exc.errno in _NOT_WRITABLE:
        return QuantError(f"Saving to {out_dir} failed: {exc.strerror or exc} (the folder is not writable). "
                          "Nothing was kept.", "Choose an output folder you can write to.")
    if exc.errno is not None:
        return QuantError(f"Saving to {out_dir} failed: {exc.strerror or exc}. Nothing was kept.",
                          "Check the output folder and run again.")
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return QuantError(f"Saving to {out_dir} failed inside gptqmodel, not on the disk: {first_line} Nothing was kept.",
                      "This is a fault of gptqmodel with this model family; freeing space will not help.")


@contextmanager
def _checkpoint_names_for_gptqmodel(config) -> Iterator[None]:
    """Give gptqmodel the checkpoint-name renames that transformers registers under the model's class name.

    gptqmodel materializes each module's weights from the checkpoint by its runtime name, translated through
    transformers' checkpoint conversion mapping, which it looks up by model type only
    (gptqmodel/utils/structure.py, LazyTurtle.infer_hf_conversion_map_reversed, `get_checkpoint_conversion_mapping(
    model_type)`). transformers 5.23 files some renames under the class name instead (conversion_mapping.py:
    "GPTNeoXForCausalLM": `embed_out.` -> `lm_head.`), so for GPT-NeoX (Pythia) the output head `lm_head` was never
    found under the checkpoint's `embed_out.weight`, stayed on the meta device, and saving failed with "Offloaded
    tensor 'lm_head.weight' not found in offload directory". For the duration of one quantization, the model's
    gptqmodel definition gets the class's renames, reversed as gptqmodel expects them (HF_CONVERSION_MAP_REVERSED).
    """
    from gptqmodel.models.auto import MODEL_MAP
    from gptqmodel.utils.structure import LazyTurtle
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    definition = MODEL_MAP.get(getattr(config, "model_type", None))
    renames = None
    if (definition is not None and "HF_CONVERSION_MAP_REVERSED" not in vars(definition)
            and getattr(definition, "HF_CONVERSION_MAP_REVERSED", None) is None
            and not getattr(definition, "hf_conversion_model_type_alias", None)
            and get_checkpoint_conversion_mapping(config.model_type) is None):
        for architecture in getattr(config, "architectures", None) or []:
            by_class = get_checkpoint_conversion_mapping(architecture)
            if by_class:
                renames = LazyTurtle.reverse_hf_conversion_map(by_class)
                break
    if not renames:
        yield
        return
    definition.HF_CONVERSION_MAP_REVERSED = renames
    try:
        yield
    finally:
        del definition.HF_CONVERSION_MAP_REVERSED


_FUSED_SUFFIXES = {"qweight": 1, "scales": 1, "qzeros": 1, "bias": 0}
"""Tensors of a GPTQ layer and the dimension that runs over its output features (qweight is [in * bits / 32, out],
scales [groups, out], qzeros [groups, out * bits / 32]); g_idx runs over the input and must match."""


def _split_gate_up_orders() -> dict[str, tuple[str, str]]:
    """MLP classes with a fused gate_up_proj that gptqmodel splits before quantizing, and the order of the halves in
    the fused weight (defuser's registry, gptqmodel's own dependency: `_STANDARD_SPLIT_GATE_UP_CLASSES`)."""
    try:
        from defuser.modeling.model_patches import _STANDARD_SPLIT_GATE_UP_CLASSES as variants
    except ImportError:
        variants = {"transformers.models.phi3.modeling_phi3.Phi3MLP": "standard"}
    orders = {"standard": ("gate_proj", "up_proj"), "phi4_audio": ("up_proj", "gate_proj")}
    return {path: orders[variant] for path, variant in variants.items() if variant in orders}


def fuse_split_projections(folder: Path, config) -> list[str]:
    """Put back together, in a saved GPTQ checkpoint, the fused projections gptqmodel split to quantize them.

    gptqmodel replaces Phi-3's `mlp.gate_up_proj` by `gate_proj` and `up_proj` before quantizing (defuser, called from
    gptqmodel/models/loader.py `_convert_model_with_defuser`) and saves them so, but transformers' Phi3MLP has only
    `gate_up_proj`: loaded with transformers, the quantized MLPs were MISSING (uninitialised buffers; the int4 repack
    failed with an IndexError, and with gptq_torch the first chat aborted the process in a compiled kernel). Both
    halves read the same input, so GPTQ quantized them with the same Hessian: the fused layer is their output columns
    side by side (qweight, scales, qzeros, bias along the output; the same g_idx), exactly what quantizing
    gate_up_proj whole would give. Returns the fused layers' names; raises QuantError where the halves cannot be
    joined (different g_idx, or zero points not packed on a word boundary).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .families import skeleton

    model = skeleton(config)
    if model is None:
        return []
    orders = _split_gate_up_orders()
    targets = {}
    for name, module in model.named_modules():
        order = orders.get(f"{type(module).__module__}.{type(module).__name__}")
        if order and hasattr(module, "gate_up_proj"):
            targets[name] = order
    if not targets:
        return []
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        where = dict(index["weight_map"])
    else:
        index = None
        with safe_open(folder / "model.safetensors", "pt") as f:
            where = {key: "model.safetensors" for key in f.keys()}
    plans = [(parent, order) for parent, order in targets.items()
             if f"{parent}.{order[0]}.qweight" in where and f"{parent}.{order[1]}.qweight" in where
             and f"{parent}.gate_up_proj.qweight" not in where]
    if not plans:
        return []
    bits = json.loads((folder / "config.json").read_text())["quantization_config"]["bits"]
    shards: dict[str, dict] = {}
    metadata: dict[str, dict | None] = {}

    def tensors_of(file: str) -> dict:
        if file not in shards:
            with safe_open(folder / file, "pt") as f:
                metadata[file] = f.metadata()
                shards[file] = {key: f.get_tensor(key) for key in f.keys()}
        return shards[file]

    def take(key: str):
        return tensors_of(where[key]).pop(key)

    fused = []
    for parent, (first, second) in plans:
        halves = [f"{parent}.{first}", f"{parent}.{second}"]
        suffixes = {key.rpartition(".")[2] for key in where if key.rpartition(".")[0] in halves}
        unknown = suffixes - set(_FUSED_SUFFIXES) - {"g_idx"}
        if unknown:
            raise QuantError(f"{parent}: gptqmodel saved {first}/{second} with tensors this tool cannot join "
                             f"({', '.join(sorted(unknown))}).")
        home = where[f"{halves[0]}.qweight"]
        out = {}
        g_idx = [take(f"{h}.g_idx") for h in halves] if "g_idx" in suffixes else None
        if g_idx is not None:
            if not torch.equal(g_idx[0], g_idx[1]):
                raise QuantError(f"{parent}: gptqmodel quantized {first} and {second} with different group orders "
                                 "(g_idx), so they cannot be joined into the gate_up_proj transformers loads.")
            out["g_idx"] = g_idx[0]
        parts = {suffix: [take(f"{h}.{suffix}") for h in halves] for suffix in _FUSED_SUFFIXES if suffix in suffixes}
        if "qzeros" in parts and "scales" in parts and any(
                zeros.shape[1] * 32 != scales.shape[1] * bits
                for zeros, scales in zip(parts["qzeros"], parts["scales"])):
            raise QuantError(f"{parent}: the zero points of {first}/{second} do not end on a word boundary "
                             f"({bits}-bit), so they cannot be joined into gate_up_proj.")
        for suffix, pair in parts.items():
            out[suffix] = torch.cat(pair, dim=_FUSED_SUFFIXES[suffix]).contiguous()
        for suffix, tensor in out.items():
            tensors_of(home)[f"{parent}.gate_up_proj.{suffix}"] = tensor
        for h in halves:
            for suffix in suffixes:
                where.pop(f"{h}.{suffix}", None)
        for suffix in out:
            where[f"{parent}.gate_up_proj.{suffix}"] = home
        fused.append(f"{parent}.gate_up_proj")
    for file, tensors in shards.items():
        save_file(tensors, folder / file, metadata=metadata[file] or {"format": "pt"})
    if index is not None:
        index["weight_map"] = dict(sorted(where.items()))
        index_path.write_text(json.dumps(index, indent=2))
    return fused


GPTQ_REFUSAL_HINT = ("Quantize it with bitsandbytes (int8 or nf4) instead: its linear layers are quantized and the "
                     "load report names what stays 16-bit. Or load it in bf16.")


def quantize_gptq(model_location: str, recipe: GPTQRecipe, texts: list[str], out_dir: Path,
                  device: str = "cpu", progress: ProgressFn | None = None,
                  stop: threading.Event | None = None, on_layer_errors: LayerErrorsFn | None = None) -> GPTQResult:
    """Quantize `model_location` with `recipe` on `texts`, save the checkpoint with its tokenizer to `out_dir`.

    A family gptqmodel cannot quantize into a checkpoint that transformers loads is refused first (QuantError, from
    the config alone: quant.families.gptq_refusal). `progress(fraction, message)` is called as each layer finishes,
    and `on_layer_errors(errors)` with the per-module error so far (`layer_errors`' entries) as it grows, the last
    time with the result's list; setting `stop` ends the work after the current layer and raises
    QuantizationCancelled (nothing is saved).
    """
    recipe.validate()
    from gptqmodel import BACKEND, QuantizeConfig

    config = QuantizeConfig(bits=recipe.bits, group_size=recipe.group_size, desc_act=recipe.desc_act,
                            sym=recipe.sym, damp_percent=recipe.damp_percent)
    return _quantize_with_gptqmodel("GPTQ", config, BACKEND.GPTQ_TORCH, model_location, recipe, texts, out_dir,
                                    device, progress, stop, on_layer_errors, batch_size=1)


def validate_awq(recipe: GPTQRecipe) -> None:
    recipe.validate()
    if recipe.bits != 4:
        raise QuantError(f"AWQ here writes 4-bit checkpoints (the GEMM layout every AWQ kernel loads), not "
                         f"{recipe.bits}-bit.", "Use 4 bits, or GPTQ for 2, 3 or 8 bits.")
    if recipe.group_size not in AWQ_GROUP_SIZES:
        raise QuantError(f"AWQ group size {recipe.group_size} is not one of {', '.join(map(str, AWQ_GROUP_SIZES))}.",
                         "128 is AWQ's usual group size.")


AWQ_BATCH_SIZE = 8
"""Calibration samples AWQ runs through each layer at once (GPTQ runs one: its Hessian is accumulated per sample).
The samples are windows of one length, so batching pads nothing; on the CPU it took the demo model's 64 samples of 128
tokens from 14.7 s to 10.1 s."""

AWQ_GROUP_SIZES = (32, 64, 128)
"""Group sizes every AWQ kernel gptqmodel 7.6 has takes (Marlin, the torch and GEMM kernels: 32, 64, 128)."""


def quantize_awq(model_location: str, recipe: GPTQRecipe, texts: list[str], out_dir: Path,
                 device: str = "cpu", progress: ProgressFn | None = None,
                 stop: threading.Event | None = None, on_layer_errors: LayerErrorsFn | None = None) -> GPTQResult:
    """AWQ (activation-aware weight quantization) with gptqmodel: per input channel, the scale that minimises the
    layer's output error on the calibration activations is searched and folded into the previous operation, then the
    weights are quantized to 4 bits with a zero point per group (AWQ's asymmetric GEMM format, `quant_method: awq`,
    `version: gemm`, which transformers loads through AwqConfig). Same calls, progress, stop and on_layer_errors as
    quantize_gptq; `recipe.desc_act`, `sym` and `damp_percent` are GPTQ's and not used.
    """
    validate_awq(recipe)
    from gptqmodel import BACKEND, QuantizeConfig
    from gptqmodel.quantization import FORMAT, METHOD

    config = QuantizeConfig(quant_method=METHOD.AWQ, format=FORMAT.GEMM, bits=recipe.bits,
                            group_size=recipe.group_size, sym=False)
    return _quantize_with_gptqmodel("AWQ", config, BACKEND.AWQ_TORCH, model_location, recipe, texts, out_dir,
                                    device, progress, stop, on_layer_errors, batch_size=AWQ_BATCH_SIZE)


def _quantize_with_gptqmodel(method: str, config, backend, model_location: str, recipe: GPTQRecipe,
                             texts: list[str], out_dir: Path, device: str, progress: ProgressFn | None,
                             stop: threading.Event | None, on_layer_errors: LayerErrorsFn | None,
                             batch_size: int) -> GPTQResult:
    """Calibrated quantization through gptqmodel (`config`: its QuantizeConfig for GPTQ or AWQ; `backend`: the
    portable torch kernel it packs with), saved with the tokenizer to `out_dir`."""
    from gptqmodel import GPTQModel
    from gptqmodel.looper.module_looper import StopMainLoop
    from transformers import AutoConfig, AutoTokenizer

    from .families import gptq_refusal

    progress = progress or (lambda fraction, message: None)
    stop = stop or threading.Event()
    model_config = AutoConfig.from_pretrained(model_location)
    refusal = gptq_refusal(model_config, method=method)
    if refusal:
        raise QuantError(refusal, GPTQ_REFUSAL_HINT)
    tokenizer = AutoTokenizer.from_pretrained(model_location)
    samples = calibration_samples(texts, tokenizer, recipe.num_samples, recipe.seq_len)
    started = time.perf_counter()
    with _checkpoint_names_for_gptqmodel(model_config):
        progress(0.0, f"Loading {model_location} for quantization")
        model = GPTQModel.load(model_location, config, device=device)
        layers = _layer_count(model) or 1
        quant_started = time.perf_counter()
        reports = _LayerErrorReports(on_layer_errors)

        def on_layer(layer_idx: int, submodule_finalized: bool):
            if stop.is_set():
                return StopMainLoop
            reports.during()  # a layer's modules are logged before it is finalized (packed): report at both calls
            if submodule_finalized:
                done = layer_idx + 1
                elapsed = time.perf_counter() - quant_started
                remaining = elapsed / done * (layers - done)
                progress(done / layers, f"Layer {done}/{layers} · {elapsed:.0f} s elapsed · ~{remaining:.0f} s left")
            return None

        model.layer_callback = on_layer
        progress(0.0, f"Quantizing {layers} layers with {method} on {len(samples)} samples")
        model.quantize(samples, batch_size=batch_size, backend=backend)
        if stop.is_set():
            del model
            raise QuantizationCancelled("Quantization stopped; nothing was saved.")
        errors = layer_errors(getattr(model, "quant_log", None))
        reports.final(errors)
        progress(1.0, "Saving")

        def write(folder: Path) -> None:
            model.save(str(folder))
            fuse_split_projections(folder, model_config)
            tokenizer.save_pretrained(folder)

        save_atomically(write, out_dir)
    return GPTQResult(Path(out_dir), time.perf_counter() - started, len(samples), asdict(recipe), errors)
