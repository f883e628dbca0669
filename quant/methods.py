"""One object per load mode (a quantization method, or a plain dtype) that answers everything the code asks of it.

Like transformers' quantizers (`AUTO_QUANTIZER_MAPPING`: one class per `quant_method`), `METHODS` maps a mode's name
to its object, and nothing else in the package branches on a mode's name. A method says: its options (which drive
the Model tab's fields and the CLI's flags), the dtype and `quantization_config` handed to `from_pretrained`, what it
needs (packages, a GPU) and its refusals, the checkpoints it loads, bytes per weight for the memory estimate, why the
compiled decode path refuses it, what to do around the load (GPTQ's int4 repack), and whether the Quantize tab can
write it to disk.

Adding a method: a `QuantMethod` subclass registered in `METHODS`, its strings in `ui_strings` (`mode.<name>`, and
`option.<field>` for a new option), its tests.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import threading
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from enum import Enum
from typing import Any, Callable, ClassVar

import torch
from transformers import BitsAndBytesConfig, GPTQConfig
from transformers.utils.quantization_config import QuantizationConfigMixin

from .errors import QuantError, UnsupportedModeError
from .int4pack import GROUP_SIZES as INT4PACK_GROUP_SIZES

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
    gptq_backend: str | None = None
    """None picks the default for the checkpoint (see GPTQMethod.default_backend)."""
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
        return text


SKIP_MODULES = Option("int8_skip_modules", "--skip-modules", "names", "Modules kept unquantized")
INT8_THRESHOLD = Option("int8_threshold", "--int8-threshold", "number", "The LLM.int8 outlier threshold")
INT8_CPU_OFFLOAD = Option("int8_cpu_offload", "--int8-cpu-offload", "bool", "Keep CPU-offloaded modules in fp32")
BNB4_DOUBLE_QUANT = Option("bnb4_double_quant", "--double-quant", "bool", "4-bit: quantize the scales too",
                           negative_flag="--no-double-quant")
BNB4_COMPUTE_DTYPE = Option("bnb4_compute_dtype", "--compute-dtype", "choice", "4-bit compute dtype",
                            (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")))
BNB4_QUANT_STORAGE = Option("bnb4_quant_storage", "--quant-storage", "choice", "Quant storage",
                            tuple((name, name) for name in QUANT_STORAGE))


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


@dataclass(frozen=True)
class QuantizeOutcome:
    recipe: dict
    """What the card and the report record as the method's settings."""
    calibration: str
    """What it was calibrated on, or why there is no calibration."""

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
        """Bytes a quantized linear weight takes (scales included), for the estimate made before loading."""
        return 2.0

    rest_bytes_per_weight: ClassVar[float] = 2.0
    """Bytes a weight left unquantized takes (embeddings, norms, the output head)."""

    def load_note(self, options: QuantOptions) -> str:
        """Said in the progress line while the weights load (e.g. a kernel that is built on first use)."""
        return ""

    def before_load(self, options: QuantOptions) -> None:
        """Runs before `from_pretrained`."""

    def after_load(self, model: Any, options: QuantOptions, progress: Callable[[float, str], None]) -> list[str]:
        """Runs on the loaded model before it is measured; returns warnings."""
        return []

    def report_record(self, record: dict | None, options: QuantOptions) -> dict | None:
        """The load report's `quantization` entry, from the model's own quantization config."""
        return record

    # How it generates
    def compile_refusal(self, options: QuantOptions) -> str | None:
        """Why the compiled decode path (quant.fastpath) cannot run this method, or None."""
        return None

    def kernel(self, options: QuantOptions) -> str | None:
        """The kernel the method's layers run on, where the user picks one (GPTQ), else None."""
        return None

    # How it is written to disk (the Quantize tab)
    def quantize_refusal(self, config: Any, kind: str) -> tuple[str, str] | None:
        """(why, what to do) when this method cannot quantize the architecture, from the config alone, or None."""
        if self.quantize_label is None:
            return (f"{self.name} cannot be written to disk by this tool.",
                    f"Quantize with one of: {', '.join(quantize_methods())}.")
        return None

    def output_label(self, recipe: Any) -> str:
        """The quantized folder's name part, e.g. GPTQ-4bit-g128."""
        return self.quantize_label or self.name

    def card_tags(self, recipe: dict) -> list[str]:
        return [*self.hub_tags]

    def quantize(self, job: QuantizeJob) -> QuantizeOutcome:
        """Write the quantized checkpoint to `job.out_dir`. By default: load the original in this mode (the method
        quantizes at load time) and save it serialized."""
        from .access import ANY_FOLDER
        from .gptq import QuantizationCancelled, save_atomically
        from .loader import LoadRequest, loaded_for_measuring

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


class FloatMethod(QuantMethod):
    """Unquantized weights in one dtype."""

    quantizes_weights = False

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description = name, description
        self.rest_bytes_per_weight = torch.finfo(DTYPES[name]).bits / 8

    def dtype(self, options, on_cuda):
        return DTYPES[self.name]

    def bytes_per_weight(self, checkpoint_quantization):
        return self.rest_bytes_per_weight

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if on_cuda and self.name == "bf16" and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16.")
        if not on_cuda and self.name == "fp16":
            warnings.append("fp16 on the CPU is slow and some CPU ops lack fp16 kernels; bf16 or fp32 suit the CPU.")
        return warnings


class BitsAndBytesMethod(QuantMethod):
    """bitsandbytes, quantizing at load time (or loading its own serialized checkpoint)."""

    packages = (("bitsandbytes", "bitsandbytes"),)
    hub_tags = ("bitsandbytes",)
    card_requirements = "Loading needs `bitsandbytes` (`pip install bitsandbytes`)."

    def loads_checkpoint(self, checkpoint_quantization):
        if saved_method_name(checkpoint_quantization) == "bitsandbytes":
            return self.name == self._saved_variant(checkpoint_quantization)
        return super().loads_checkpoint(checkpoint_quantization)

    @staticmethod
    def _saved_variant(checkpoint_quantization: dict) -> str:
        if checkpoint_quantization.get("load_in_8bit"):
            return "int8"
        return checkpoint_quantization.get("bnb_4bit_quant_type", "fp4")

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if not on_cuda:
            warnings.append(f"{self.name} runs on bitsandbytes' CPU backend here: it saves memory but is slower than "
                            "on a GPU.")
        return warnings

    @property
    def card_name(self):
        return f"bitsandbytes-{self.name}"

    def card_tags(self, recipe):
        return [*self.hub_tags, "8-bit" if self.name == "int8" else "4-bit"]

    def saving_options(self, on_cuda):
        return QuantOptions(bnb4_compute_dtype="fp16" if on_cuda else "bf16")


class Int8Method(BitsAndBytesMethod):
    name = "int8"
    description = "bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns"
    options = (SKIP_MODULES, INT8_THRESHOLD, INT8_CPU_OFFLOAD)
    quantize_label = "bnb-int8"

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if not 0 < options.int8_threshold <= 1000:
            raise UnsupportedModeError("The int8 outlier threshold must be a positive number (6.0 is the default).")
        return warnings

    def dtype(self, options, on_cuda):
        if options.compute_dtype:
            return DTYPES[options.compute_dtype]
        return torch.float16  # LLM.int8() matmuls run in fp16; other dtypes are cast on every call

    def config(self, options, checkpoint_quantization, on_cuda):
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=options.int8_threshold,
            llm_int8_skip_modules=list(options.int8_skip_modules) or None,
            llm_int8_enable_fp32_cpu_offload=options.int8_cpu_offload,
        )

    def bytes_per_weight(self, checkpoint_quantization):
        return 1.0

    def compile_refusal(self, options):
        return "LLM.int8 (bitsandbytes int8) cannot be compiled: its outlier split is data-dependent"


class FourBitMethod(BitsAndBytesMethod):
    """bitsandbytes 4-bit: NormalFloat (nf4) or float (fp4)."""

    options = (SKIP_MODULES, BNB4_DOUBLE_QUANT, BNB4_COMPUTE_DTYPE, BNB4_QUANT_STORAGE)

    def __init__(self, name: str, description: str, quantize_label: str | None) -> None:
        self.name, self.description, self.quantize_label = name, description, quantize_label

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if on_cuda and "bf16" in (options.bnb4_compute_dtype, options.compute_dtype) \
                and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16 (or fp16 compute dtype).")
        return warnings

    def config(self, options, checkpoint_quantization, on_cuda):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.name,
            bnb_4bit_use_double_quant=options.bnb4_double_quant,
            bnb_4bit_compute_dtype=DTYPES[options.bnb4_compute_dtype],
            bnb_4bit_quant_storage=QUANT_STORAGE[options.bnb4_quant_storage],
            llm_int8_skip_modules=list(options.int8_skip_modules) or None,
        )

    def bytes_per_weight(self, checkpoint_quantization):
        return 0.53  # 4 bits and a 32-bit absmax per 64 weights (nested: 8-bit absmax, less)


GPTQ_BACKENDS: dict[str, str] = {
    "gptq_torch": "PyTorch kernel: CPU and GPU, no build; the compiled fast path on a GPU",
    "gptq_int4pack": "PyTorch's int4 matmul (tinygemm): CPU and GPU, 4-bit, group size 32-256, no build; bf16",
    "gptq_triton": "Triton kernel: GPU, compiled in seconds",
    "gptq_exllama_v2": "ExLlamaV2: GPU, 4-bit, built on first use (~30 s)",
    "gptq_marlin": "Marlin: GPU (Ampere+), 4/8-bit, built on first use (~3.5 min); fastest for batches",
}
"""Kernels a GPTQ checkpoint can be loaded with. 'auto' is not offered: on Hopper it picks Machete, which downloads
CUTLASS at run time and fails offline."""

GPTQ_BACKEND = Option("gptq_backend", "--gptq-backend", "choice",
                      "GPTQ kernel (default: gptq_int4pack for 4-bit with group size 32-256, else gptq_torch)",
                      (("", "automatic"), *GPTQ_BACKENDS.items()))


class GPTQMethod(QuantMethod):
    """A checkpoint already quantized with GPTQ, loaded through gptqmodel with the kernel the user picks."""

    name = "gptq"
    description = "a checkpoint already quantized with GPTQ"
    options = (GPTQ_BACKEND,)
    needs_quantized_checkpoint = True
    packages = (("gptqmodel", "gptqmodel"), ("optimum", "optimum"))
    quantize_label = "GPTQ"
    calibrated = True
    hub_tags = ("gptq",)
    card_requirements = "Loading needs `optimum` and `gptqmodel` (`pip install optimum gptqmodel`)."
    CPU_BACKENDS = ("gptq_torch", "gptq_int4pack")
    TRACEABLE_BACKENDS = ("gptq_marlin", "gptq_torch", "gptq_int4pack")
    """Kernels that trace under torch.compile (the compiled decode path): torch ops (gptqmodel builds Marlin as
    torch.ops) or plain torch code. Each measured faster through the compiled decode loop on an H100, Llama-8B shape,
    batch 1 / 32 tok/s (gpu-bench-8b-allmodes.md): Marlin eager 27.3 / 674 -> compiled 204.0 / 2,729; int4pack
    36.4 / 984 -> 272.7 / 1,580 (PyTorch's own int4 matmul, quant.int4pack, made for CUDA graphs like gpt-fast's)."""

    def loads_checkpoint(self, checkpoint_quantization):
        return saved_method_name(checkpoint_quantization) == "gptq"

    @staticmethod
    def int4pack_refusal(checkpoint_quantization: dict | None, on_cuda: bool) -> str | None:
        """Why PyTorch's int4 kernel (gptq_int4pack) cannot run this checkpoint here, or None."""
        saved = checkpoint_quantization or {}
        bits, group_size = saved.get("bits"), saved.get("group_size")
        if bits != 4 or group_size not in INT4PACK_GROUP_SIZES:
            return (f"PyTorch's int4 kernel runs 4-bit GPTQ with group size "
                    f"{', '.join(map(str, INT4PACK_GROUP_SIZES))}; this checkpoint is {bits}-bit with group size "
                    f"{group_size}.")
        if on_cuda and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
            return "PyTorch's int4 kernel needs an Ampere or newer GPU."
        return None

    @classmethod
    def default_backend(cls, checkpoint_quantization: dict | None = None, on_cuda: bool = False) -> str:
        """gptq_int4pack where PyTorch's int4 kernel takes the checkpoint (4-bit, group size 32-256; on a GPU, Ampere
        or newer), else gptq_torch. Neither needs a build or a download, and both compile (static cache + CUDA graphs).

        On an H100, Llama-8B shape, batch 1 tok/s: int4pack 25.9 eager and 152.1 compiled, on the same decode path
        as the torch kernel's 15.3 and 40.0 (bench/results/gpu-bench-8b-int4pack.md, gpu-bench-8b-compiled.md;
        int4pack compiles to 272.7 with the decode loop of quant.decode, gpu-bench-8b-allmodes.md); on the CPU, 30.0
        against 0.27 (gptq-kernels-cpu-1b-4layers.md). ExLlamaV2 does not compile. Marlin compiles and is the batch
        kernel (204.0 tok/s at batch 1, 2,729 at batch 32 against int4pack's 1,580: gpu-bench-8b-allmodes.md), but
        needs a 3.5-minute build and is not the faster at batch 1, the chat's size.
        """
        return "gptq_torch" if cls.int4pack_refusal(checkpoint_quantization, on_cuda) else "gptq_int4pack"

    @staticmethod
    def loading_backend(backend: str) -> str:
        """The gptqmodel kernel transformers loads the checkpoint with: gptq_int4pack loads with gptq_torch and is
        repacked afterwards (quant.int4pack)."""
        return "gptq_torch" if backend == "gptq_int4pack" else backend

    def resolve(self, options, checkpoint_quantization, on_cuda):
        if options.gptq_backend:
            return options
        return replace(options, gptq_backend=self.default_backend(checkpoint_quantization, on_cuda))

    def check(self, options, checkpoint_quantization, on_cuda):
        if saved_method_name(checkpoint_quantization) != "gptq":
            raise UnsupportedModeError(
                "Mode gptq loads a checkpoint that is already GPTQ-quantized, and this one is not.",
                "Quantize it first (Quantize tab, or `python -m quant quantize`), or pick int8 / nf4 / fp4.",
            )
        for module, package in self.packages:
            if not is_installed(module):
                raise UnsupportedModeError(f"Loading GPTQ needs the {package} package.", f"pip install {package}")
        backend = options.gptq_backend or self.default_backend(checkpoint_quantization, on_cuda)
        if backend not in GPTQ_BACKENDS:
            raise UnsupportedModeError(f"Unknown GPTQ kernel {backend!r}.", f"Choose one of {', '.join(GPTQ_BACKENDS)}.")
        if not on_cuda and backend not in self.CPU_BACKENDS:
            raise UnsupportedModeError(
                f"The GPTQ kernel {backend} needs a CUDA GPU, and the model is placed on the CPU.",
                "Use gptq_int4pack or gptq_torch, which run on the CPU.",
            )
        bits = checkpoint_quantization.get("bits")
        if backend == "gptq_exllama_v2" and bits != 4:
            raise UnsupportedModeError(f"ExLlamaV2 runs 4-bit GPTQ only; this checkpoint is {bits}-bit.",
                                       "Use gptq_torch or gptq_triton.")
        refusal = self.int4pack_refusal(checkpoint_quantization, on_cuda) if backend == "gptq_int4pack" else None
        if refusal:
            raise UnsupportedModeError(refusal, "Use gptq_torch or gptq_triton.")
        if backend == "gptq_marlin" and bits not in (4, 8):
            raise UnsupportedModeError(f"Marlin runs 4- and 8-bit GPTQ only; this checkpoint is {bits}-bit.",
                                       "Use gptq_torch or gptq_triton.")
        if on_cuda and options.compute_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16 (or fp16 compute dtype).")
        return []

    def dtype(self, options, on_cuda):
        if options.compute_dtype:
            return DTYPES[options.compute_dtype]
        if options.gptq_backend == "gptq_int4pack":
            return torch.bfloat16  # the int4 kernel computes in bf16 only: fp16 would cast at every layer
        return super().dtype(options, on_cuda)

    def config(self, options, checkpoint_quantization, on_cuda):
        saved = dict(checkpoint_quantization or {})
        return GPTQConfig(
            bits=saved["bits"],
            group_size=saved.get("group_size", 128),
            desc_act=saved.get("desc_act", False),
            sym=saved.get("sym", True),
            backend=self.loading_backend(options.gptq_backend or self.default_backend(saved, on_cuda)),
        )

    def bytes_per_weight(self, checkpoint_quantization):
        return (checkpoint_quantization or {}).get("bits", 4) / 8 + 0.02  # + a scale and a zero per group

    def load_note(self, options):
        """Kernels that gptqmodel compiles on first use: that load takes minutes once."""
        if options.gptq_backend not in ("gptq_marlin", "gptq_exllama_v2"):
            return ""
        minutes = "about 3.5 min" if options.gptq_backend == "gptq_marlin" else "about 30 s"
        return (f" (the {options.gptq_backend} kernel is built on its first use: {minutes}, then cached in "
                f"{os.environ.get('GPTQMODEL_TORCH_EXTENSIONS_DIR', 'the kernel cache')})")

    def before_load(self, options):
        _mark_gptq_weights_as_loaded()

    def after_load(self, model, options, progress):
        if options.gptq_backend != "gptq_int4pack":
            return []
        progress(0.85, "Repacking the GPTQ layers for PyTorch's int4 kernel")
        from .int4pack import repack_model
        from .settings import load_settings

        result = repack_model(model, dequantize_from_rows=load_settings().int4_dequantize_rows)
        gc.collect()  # the torch-kernel layers just replaced
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        warnings = [f"Long prompts use tinygemm: {result.dequantize_reason}."] if result.dequantize_reason else []
        if result.reason is None:
            return warnings
        return warnings + [f"{result.left} GPTQ layers stay on the gptq_torch kernel ({result.layers} moved to the "
                           f"int4 kernel): {result.reason}."]

    def report_record(self, record, options):
        """gptq_int4pack loads through gptq_torch, so the config itself names that one: name the kernel that runs."""
        if isinstance(record, dict):
            record = {**record, "backend": options.gptq_backend}
        return record

    def compile_refusal(self, options):
        if options.gptq_backend in self.TRACEABLE_BACKENDS:
            return None
        return (f"the {options.gptq_backend} kernel does not trace under torch.compile (choose gptq_int4pack, "
                "gptq_marlin or gptq_torch for the compiled path)")

    def kernel(self, options):
        return options.gptq_backend

    def quantize_refusal(self, config, kind):
        from .families import gptq_refusal
        from .gptq import GPTQ_REFUSAL_HINT

        if kind != "causal":
            return ("GPTQ quantization here supports causal LMs only.",
                    "Quantize T5/BART with int8 or nf4 (bitsandbytes) instead.")
        refusal = gptq_refusal(config, kind)
        return (refusal, GPTQ_REFUSAL_HINT) if refusal else None

    def output_label(self, recipe):
        group = recipe.group_size if recipe.group_size != -1 else "col"
        return f"GPTQ-{recipe.bits}bit-g{group}"

    def card_tags(self, recipe):
        return [*self.hub_tags, f"{recipe.get('bits')}-bit"]

    def quantize(self, job):
        from .gptq import quantize_gptq

        quantize_gptq(job.source_folder, job.recipe, job.calibration_texts or [], job.out_dir, device=job.device,
                      progress=lambda f, m: job.progress(0.05 + 0.75 * f, m), stop=job.stop)
        return QuantizeOutcome(asdict(job.recipe), job.calibration_description)


def _mark_gptq_weights_as_loaded() -> None:
    """Let transformers' weight initialisation skip gptqmodel's stand-in `weight` of its torch-kernel layers.

    TorchLinear.weight is a shape/dtype shim (gptqmodel/nn_modules/qlinear/torch.py, `_LinearWeightMetadata`), not a
    tensor, and carries no `_is_hf_initialized` flag. After loading, transformers runs each model's `_init_weights`
    on modules not marked initialised, and GPT-2's reaches into its children (modeling_gpt2.py,
    GPT2PreTrainedModel._init_weights: `init.normal_(module.c_proj.weight, ...)` for every attention and MLP block),
    so every GPT-2 GPTQ load failed with "'_LinearWeightMetadata' object has no attribute 'normal_'". The quantized
    weights always come from the checkpoint (a missing one is refused by the loader), so marking the shim
    initialised is exact.
    """
    try:
        from gptqmodel.nn_modules.qlinear.torch import _LinearWeightMetadata
    except ImportError:  # another gptqmodel layout: nothing to mark
        return
    _LinearWeightMetadata._is_hf_initialized = True


# --- the mapping ----------------------------------------------------------------------------------------------------

METHODS: dict[str, QuantMethod] = {
    method.name: method
    for method in (
        FloatMethod("fp32", "full precision (4 bytes a weight)"),
        FloatMethod("fp16", "half precision (2 bytes)"),
        FloatMethod("bf16", "bfloat16 (2 bytes)"),
        Int8Method(),
        FourBitMethod("nf4", "bitsandbytes 4-bit NormalFloat", "bnb-nf4"),
        FourBitMethod("fp4", "bitsandbytes 4-bit float", None),
        GPTQMethod(),
    )
}
"""Every load mode by name, in the order the UI and the CLI list them."""


class _ModeBase(str, Enum):
    @property
    def method(self) -> QuantMethod:
        return METHODS[self.value]

    @property
    def description(self) -> str:
        return self.method.description


Mode = _ModeBase("Mode", [(name.upper(), name) for name in METHODS])
"""A mode's name as a value (`Mode.NF4`, `Mode("nf4")`), one per entry of METHODS."""

ALL_OPTIONS: tuple[Option, ...] = tuple({o.field: o for m in METHODS.values() for o in m.options}.values())
"""Every option of every method, once each, in the order methods list them."""


def load_time_methods() -> list[str]:
    """Modes that load any unquantized checkpoint (the Compare tab's and "Measure these modes" boxes)."""
    return [name for name, method in METHODS.items() if not method.needs_quantized_checkpoint]


def quantize_methods() -> list[str]:
    """Methods the Quantize tab can write to disk, by name."""
    return [name for name, method in METHODS.items() if method.quantize_label]


def parse_mode(value: str | Mode) -> Mode:
    try:
        return Mode(str(getattr(value, "value", value)).strip().lower())
    except ValueError:
        raise UnsupportedModeError(
            f"Unknown mode {value!r}.", f"Modes: {', '.join(m.value for m in Mode)}."
        ) from None


def method_of(mode: str | Mode) -> QuantMethod:
    return parse_mode(mode).method


def checkpoint_refusal(method: QuantMethod, checkpoint_quantization: dict | None) -> None:
    """Refuse loading a quantized checkpoint in a mode other than the one that loads it."""
    saved = saved_method_name(checkpoint_quantization)
    if not saved or method.loads_checkpoint(checkpoint_quantization):
        return
    loader = next((m for m in METHODS.values() if m.loads_checkpoint(checkpoint_quantization)), None)
    if loader is None:
        raise UnsupportedModeError(
            f"This checkpoint is quantized with {saved}, which this tool does not load.",
            f"Use a checkpoint of one of these methods, or an unquantized one: "
            f"{', '.join(m.name for m in METHODS.values() if m.quantizes_weights)}.",
        )
    what = f"GPTQ ({checkpoint_quantization.get('bits')}-bit)" if saved == "gptq" else f"{saved} ({loader.name})"
    raise UnsupportedModeError(
        f"This checkpoint is already quantized with {what}; it cannot be loaded as {method.name}.",
        f"Load it in mode {loader.name}"
        + (", or load the original unquantized model for other modes." if saved == "gptq" else "."),
    )


def check_mode(mode: str | Mode, options: QuantOptions, *, checkpoint_quantization: dict | None,
               on_cuda: bool) -> list[str]:
    """Refuse a mode that cannot run here for this checkpoint (UnsupportedModeError); warnings for one that runs
    badly."""
    method = method_of(mode)
    checkpoint_refusal(method, checkpoint_quantization)
    return method.check(options, checkpoint_quantization, on_cuda)
