"""What every load mode answers (QuantMethod), the options they share (QuantOptions, Option), and what a quantize
step gets and gives (QuantizeJob, QuantizeOutcome). The methods themselves are in the sibling modules."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import QuantError, UnsupportedModeError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANT_STORAGE = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --- options --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantOptions:
    """The options of every method, flat (a load's identity hashes them); each method reads its own (see `Option`)."""

    int8_threshold: float = 6.0
    """LLM.int8() outlier threshold: activations above it stay in fp16."""
    int8_skip_modules: tuple[str, ...] = ()
    """Modules kept in full precision (besides the output head, which transformers always skips)."""
    int8_cpu_offload: bool = False
    """Keep modules that device_map sends to the CPU in fp32 (LLM.int8 only runs the GPU part in int8)."""
    bnb4_double_quant: bool = True
    bnb4_compute_dtype: str = "bf16"
    bnb4_quant_storage: str = "uint8"
    bnb4_kernel: str = "bitsandbytes"
    """4-bit layers' batch-1 kernel on a GPU: "bitsandbytes" (its own) or "triton" (quant.gemv4bit, same weights)."""
    gptq_backend: str | None = None
    """None picks the default for the checkpoint (see GPTQMethod.default_backend)."""
    torchao_group_size: str = "128"
    """torchao int4: weights per scale and zero point ("32", "64", "128", "256"; a choice, hence text)."""
    fp8_activation: str = "none"
    """fp8: "none" (weight-only) or "dynamic" (activations quantized to fp8 per token at run time)."""
    hqq_bits: int = 4
    hqq_group_size: int = 64
    hqq_backend: str | None = None
    """None picks the default for the bits and group size (see HQQMethod.default_backend)."""
    awq_backend: str | None = None
    """None picks the default for the checkpoint (see AWQMethod.default_backend)."""
    compute_dtype: str | None = field(default=None)
    """dtype of the non-quantized parts for quantized modes (None: the method's default)."""


@dataclass(frozen=True)
class Option:
    """One field of QuantOptions as users see it: the Model tab's input (label `option.<field>` in ui_strings) and
    the CLI flag. `parse` turns what a form or a command line gave into the field's value, or says what is wrong."""

    field: str
    flag: str
    kind: str
    """"number", "bool", "choice" or "names" (a comma-separated list)."""
    help: str
    choices: tuple[tuple[str, str], ...] = ()
    """(value, English description) for "choice"; a value of "" means automatic (None)."""
    negative_flag: str | None = None
    """For a bool that is on by default: the CLI flag that turns it off."""

    @property
    def default(self) -> Any:
        return next(f.default for f in fields(QuantOptions) if f.name == self.field)

    def parse(self, value: Any) -> Any:
        if self.kind == "bool":
            return bool(value)
        if self.kind == "names":
            items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
            return tuple(item.strip() for item in items if str(item).strip())
        if self.kind == "number":
            try:
                return float(self.default if value is None or value == "" else value)
            except (TypeError, ValueError, OverflowError):
                raise QuantError(f"{self.help} must be a number (got {str(value)[:40]!r}).") from None
        text = "" if value is None else str(value).strip()
        if not text:
            return self.default
        if text not in {value for value, _ in self.choices}:
            raise UnsupportedModeError(f"Unknown {self.help.lower()} {text!r}.",
                                       f"Use one of {', '.join(v for v, _ in self.choices if v)}.")
        return int(text) if isinstance(self.default, int) and not isinstance(self.default, bool) else text


# --- methods --------------------------------------------------------------------------------------------------------

@dataclass
class QuantizeJob:
    """What a method's quantize step gets from the Quantize pipeline (quant.quantize)."""

    source_folder: str
    """A local folder of the original checkpoint."""
    out_dir: Path
    device: str
    """Where calibrated quantization works ("cuda:0" or "cpu"), one layer at a time."""
    placement: str
    """device_map for whole-model loads (every GPU when there are several)."""
    progress: Callable[[float, str], None]
    stop: threading.Event
    recipe: Any = None
    """The calibrated methods' recipe (GPTQRecipe)."""
    calibration_texts: list[str] | None = None
    calibration_description: str = ""
    on_layer_errors: Callable[[list[dict]], None] | None = None
    """The calibrated methods report their per-module error here as it grows (quant.gptq.LayerErrorsFn)."""


@dataclass(frozen=True)
class QuantizeOutcome:
    recipe: dict
    """What the card and the report record as the method's settings."""
    calibration: str
    """What it was calibrated on, or why there is no calibration."""
    layer_errors: list[dict] = field(default_factory=list)
    """The calibrated methods' per-module quantization error (quant.gptq.layer_errors); empty for the others."""


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def saved_method_name(checkpoint_quantization: dict | None) -> str | None:
    """The `quant_method` a checkpoint's config.json names, or None for an unquantized checkpoint."""
    method = (checkpoint_quantization or {}).get("quant_method")
    return getattr(method, "value", method)


class QuantMethod:
    """A load mode. Subclasses answer for one method; the defaults describe a method that quantizes at load time."""

    name: ClassVar[str]
    description: ClassVar[str]
    """English, for the CLI and the report (the UI's strings are in ui_strings, `mode.<name>`, in both languages)."""
    options: ClassVar[tuple[Option, ...]] = ()
    packages: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, pip name) the method needs."""
    quantizes_weights: ClassVar[bool] = True
    """False for plain dtypes: nothing to report as left unquantized."""
    tensor_parallel_refusal: ClassVar[str | None] = "quantized"
    """Why quant.tensor_parallel cannot run this mode (a `placements.refused.<key>` string), None where it can.
    transformers shards plain weights by the model's tp_plan; it has no sharding for bitsandbytes' weights (int8:
    "'Tensor' object has no attribute 'CB'" at the first forward, nf4 fails too; transformers 5.23 on the CPU),
    nor GPTQ's, AWQ's or HQQ's packed ones (their quantizers have no tensor-parallel handling)."""

    @property
    def quantizes_what(self) -> str:
        """Which layers it quantizes, for the load report's note on weights left unquantized."""
        return f"{self.name.upper()} quantizes linear layers only"
    needs_quantized_checkpoint: ClassVar[bool] = False
    """It loads only checkpoints already quantized with it (GPTQ): Compare names them as `<name>:FOLDER`."""
    quantize_label: ClassVar[str | None] = None
    """The Quantize tab's name for writing this method's checkpoint to disk (None: it cannot be written)."""
    calibrated: ClassVar[bool] = False
    """Its quantize step fits the weights on calibration text (the Quantize tab's recipe and calibration fields)."""
    hub_tags: ClassVar[tuple[str, ...]] = ()
    card_requirements: ClassVar[str] = ""
    """The model card's line on what loading the checkpoint needs."""

    @property
    def card_name(self) -> str:
        """How the model card names the method ("quantized with **gptq**")."""
        return self.name

    # What it loads
    def loads_checkpoint(self, checkpoint_quantization: dict | None) -> bool:
        """Whether this method loads a checkpoint saved with `checkpoint_quantization` (None: unquantized)."""
        return checkpoint_quantization is None or not saved_method_name(checkpoint_quantization)

    def resolve(self, options: QuantOptions, checkpoint_quantization: dict | None, on_cuda: bool) -> QuantOptions:
        """`options` with the defaults that depend on the checkpoint or the device filled in."""
        return options

    def check(self, options: QuantOptions, checkpoint_quantization: dict | None, on_cuda: bool) -> list[str]:
        """Refuse what cannot run (UnsupportedModeError); return warnings for what runs badly."""
        for module, package in self.packages:
            if not is_installed(module):
                raise UnsupportedModeError(f"Mode {self.name} needs the {package} package.", f"pip install {package}")
        for option in self.options:
            option.parse(getattr(options, option.field))
        return []

    # How it loads
    def dtype(self, options: QuantOptions, on_cuda: bool) -> torch.dtype:
        """dtype of the weights that stay unquantized (embeddings, norms, output head)."""
        if options.compute_dtype:
            return DTYPES[options.compute_dtype]
        return torch.float16 if on_cuda else torch.bfloat16

    def config(self, options: QuantOptions, checkpoint_quantization: dict | None,
               on_cuda: bool) -> QuantizationConfigMixin | None:
        return None

    def bytes_per_weight(self, checkpoint_quantization: dict | None) -> float:
        """Bytes a quantized linear weight takes (scales included), for the estimate made before loading.

        `checkpoint_quantization`: the quantization the weights will have, as a config dict: the checkpoint's own,
        or, for a method that quantizes at load time, the `config()` it loads with (`to_dict()`), so options such
        as a group size count (quant.registry.estimate_footprint)."""
        return 2.0

    rest_bytes_per_weight: ClassVar[float] = 2.0
    """Bytes a weight left unquantized takes (embeddings, norms, the output head)."""

    def loaded_bytes_per_weight(self, checkpoint_quantization: dict | None, options: QuantOptions) -> float:
        """Bytes a quantized linear weight takes once the model is loaded: what the load report's footprint is held
        against (bench/methods_bench.py). The same as `bytes_per_weight` unless the method quantizes after the
        weights have loaded in 16 bits (HQQ), when the estimate before loading must be the larger peak."""
        return self.bytes_per_weight(checkpoint_quantization)

    def load_note(self, options: QuantOptions) -> str:
        """Said in the progress line while the weights load (e.g. a kernel that is built on first use)."""
        return ""

    def before_load(self, options: QuantOptions) -> None:
        """Runs before `from_pretrained`."""

    def after_load(self, model: Any, options: QuantOptions, progress: Callable[[float, str], None]) -> list[str]:
        """Runs on the loaded model before it is measured; returns warnings."""
        return []

    def report_record(self, record: dict | None, options: QuantOptions) -> dict | None:
        """The load report's `quantization` entry, from the model's own quantization config, naming the kernel that
        runs where the user picks one (gptq_int4pack and awq_int4pack load through a torch kernel, which the config
        names)."""
        kernel = self.kernel(options)
        if kernel and isinstance(record, dict):
            record = {**record, "backend": kernel}
        return record

    # How it generates
    backend_option: ClassVar[str | None] = None
    """The QuantOptions field where the user picks the kernel (`gptq_backend`), for a method that has a choice."""
    TRACEABLE_BACKENDS: ClassVar[tuple[str, ...]] = ()
    """The kernels of that choice that trace under torch.compile."""
    DEFAULT_STREAM_BACKENDS: ClassVar[tuple[str, ...]] = ()
    """The kernels of that choice that launch on the GPU's legacy default stream whatever stream PyTorch is on."""

    def default_stream_reason(self, options: QuantOptions) -> str | None:
        """Why this method's layers must run on the GPU's default stream, or None. A kernel that launches there
        (`<<<grid, block>>>` without a stream) is not ordered with PyTorch's other streams, which are created
        non-blocking: run from one (an eager chat's, quant.generation.chat_stream) it could read its input before the
        kernel that writes it has run."""
        backend = self.kernel(options)
        if backend in self.DEFAULT_STREAM_BACKENDS:
            return f"the {backend} kernel launches on the GPU's default stream"
        return None

    def compile_refusal(self, options: QuantOptions) -> str | None:
        """Why the compiled decode path (quant.fastpath) cannot run this method, or None: by default, a chosen kernel
        outside TRACEABLE_BACKENDS."""
        backend = self.kernel(options)
        if backend is None or backend in self.TRACEABLE_BACKENDS:
            return None
        return f"the {backend} kernel does not trace under torch.compile"

    def compile_options(self, options: QuantOptions) -> dict[str, Any]:
        """Inductor settings for this method's compiled decode step (`torch.compile(options=...)`), applied to that
        compilation only; empty for the defaults."""
        return {}

    def kernel(self, options: QuantOptions) -> str | None:
        """The kernel the method's layers run on, where the user picks one (`backend_option`), else None."""
        return getattr(options, self.backend_option) if self.backend_option else None

    def runs_int4pack(self, options: QuantOptions) -> bool:
        """Whether the layers load as quant.int4pack's (gptq_int4pack, awq_int4pack, hqq_int4pack): the ones whose
        decode steps quant.awq_gemv's kernel serves on a GPU."""
        return (self.kernel(options) or "").endswith("_int4pack")

    # How it is written to disk (the Quantize tab)
    def quantize_refusal(self, config: Any, kind: str) -> tuple[str, str] | None:
        """(why, what to do) when this method cannot quantize the architecture, from the config alone, or None."""
        if self.quantize_label is None:
            return (f"{self.name} cannot be written to disk by this tool.",
                    "Pick a method the Quantize tab lists.")
        return None

    def output_label(self, recipe: Any) -> str:
        """The quantized folder's name part, e.g. GPTQ-4bit-g128."""
        return self.quantize_label or self.name

    def card_tags(self, recipe: dict) -> list[str]:
        return [*self.hub_tags]

    def quantize(self, job: QuantizeJob) -> QuantizeOutcome:
        """Write the quantized checkpoint to `job.out_dir`. By default: load the original in this mode (the method
        quantizes at load time) and save it serialized."""
        from ..access import ANY_FOLDER
        from ..gptq import QuantizationCancelled, save_atomically
        from ..loader import LoadRequest, loaded_for_measuring

        job.progress(0.1, f"Loading the original in {self.name}")
        request = LoadRequest(model=job.source_folder, mode=self.name, device_map=job.placement, folders=ANY_FOLDER,
                              options=self.saving_options(job.device.startswith("cuda")))
        with loaded_for_measuring(request) as loaded:
            if job.stop.is_set():
                raise QuantizationCancelled("Quantization stopped; nothing was saved.")
            job.progress(0.5, f"Saving the {self.name} weights")

            def write(folder: Path) -> None:
                loaded.model.save_pretrained(folder)
                loaded.tokenizer.save_pretrained(folder)

            save_atomically(write, job.out_dir)
            return QuantizeOutcome(loaded.report.quantization or {},
                                   f"none ({self.name} quantizes at load time, no calibration)")

    def saving_options(self, on_cuda: bool) -> QuantOptions:
        """The options the default quantize step loads with."""
        return QuantOptions()
