"""The one place that decides how a load mode becomes a dtype and a quantization config, and which modes can run.

A mode is refused here, before any weight is read, when it cannot work: the library is missing, the kernel needs a
GPU that is not there, or the checkpoint is already quantized with another method.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from enum import Enum

import torch
from transformers import BitsAndBytesConfig, GPTQConfig
from transformers.utils.quantization_config import QuantizationConfigMixin

from .errors import UnsupportedModeError
from .int4pack import GROUP_SIZES as INT4PACK_GROUP_SIZES


class Mode(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    NF4 = "nf4"
    FP4 = "fp4"
    GPTQ = "gptq"

    @property
    def is_bitsandbytes(self) -> bool:
        return self in (Mode.INT8, Mode.NF4, Mode.FP4)

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Mode.FP32: "full precision (4 bytes a weight)",
    Mode.FP16: "half precision (2 bytes)",
    Mode.BF16: "bfloat16 (2 bytes)",
    Mode.INT8: "bitsandbytes LLM.int8(): int8 weights, fp16 outlier columns",
    Mode.NF4: "bitsandbytes 4-bit NormalFloat",
    Mode.FP4: "bitsandbytes 4-bit float",
    Mode.GPTQ: "a checkpoint already quantized with GPTQ",
}

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
QUANT_STORAGE = {"uint8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

GPTQ_BACKENDS: dict[str, str] = {
    "gptq_torch": "PyTorch kernel: CPU and GPU, no build; the compiled fast path on a GPU",
    "gptq_int4pack": "PyTorch's int4 matmul (tinygemm): CPU and GPU, 4-bit, group size 32-256, no build; bf16",
    "gptq_triton": "Triton kernel: GPU, compiled in seconds",
    "gptq_exllama_v2": "ExLlamaV2: GPU, 4-bit, built on first use (~30 s)",
    "gptq_marlin": "Marlin: GPU (Ampere+), 4/8-bit, built on first use (~3.5 min); fastest for batches",
}
"""Kernels a GPTQ checkpoint can be loaded with. 'auto' is not offered: on Hopper it picks Machete, which downloads
CUTLASS at run time and fails offline."""
_CPU_GPTQ_BACKENDS = {"gptq_torch", "gptq_int4pack"}


def loading_gptq_backend(backend: str) -> str:
    """The gptqmodel kernel transformers loads the checkpoint with: gptq_int4pack loads with gptq_torch and is
    repacked afterwards (quant.int4pack)."""
    return "gptq_torch" if backend == "gptq_int4pack" else backend


def parse_mode(value: str | Mode) -> Mode:
    try:
        return Mode(str(getattr(value, "value", value)).strip().lower())
    except ValueError:
        raise UnsupportedModeError(
            f"Unknown mode {value!r}.", f"Modes: {', '.join(m.value for m in Mode)}."
        ) from None


@dataclass(frozen=True)
class QuantOptions:
    """Options of the quantized modes; each applies only to the modes named in its prefix."""

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
    """None picks the default for the checkpoint (see default_gptq_backend)."""
    compute_dtype: str | None = field(default=None)
    """dtype of the non-quantized parts for quantized modes (None: fp16 for int8 and on a GPU, else bf16)."""


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def int4pack_refusal(checkpoint_quantization: dict | None, on_cuda: bool) -> str | None:
    """Why PyTorch's int4 kernel (gptq_int4pack) cannot run this checkpoint here, or None."""
    saved = checkpoint_quantization or {}
    bits, group_size = saved.get("bits"), saved.get("group_size")
    if bits != 4 or group_size not in INT4PACK_GROUP_SIZES:
        return (f"PyTorch's int4 kernel runs 4-bit GPTQ with group size {', '.join(map(str, INT4PACK_GROUP_SIZES))}; "
                f"this checkpoint is {bits}-bit with group size {group_size}.")
    if on_cuda and torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
        return "PyTorch's int4 kernel needs an Ampere or newer GPU."
    return None


def default_gptq_backend(checkpoint_quantization: dict | None = None, on_cuda: bool = False) -> str:
    """gptq_int4pack where PyTorch's int4 kernel takes the checkpoint (4-bit, group size 32-256; on a GPU, Ampere or
    newer), else gptq_torch. Neither needs a build or a download, and both compile (static cache + CUDA graphs).

    On an H100, Llama-8B shape, batch 1 tok/s: int4pack 25.9 eager and 152.1 compiled, on the same decode path as
    the torch kernel's 15.3 and 40.0 (bench/results/gpu-bench-8b-int4pack.md, gpu-bench-8b-compiled.md; int4pack
    compiles to 272.7 with the decode loop of quant.decode, gpu-bench-8b-allmodes.md); on the CPU, 30.0 against
    0.27 (gptq-kernels-cpu-1b-4layers.md). ExLlamaV2 does not compile. Marlin compiles and is the batch kernel
    (204.0 tok/s at batch 1, 2,729 at batch 32 against int4pack's 1,580: gpu-bench-8b-allmodes.md), but needs a
    3.5-minute build and is not the faster at batch 1, the chat's size.
    """
    return "gptq_torch" if int4pack_refusal(checkpoint_quantization, on_cuda) else "gptq_int4pack"


def resolve_gptq_backend(options: QuantOptions, mode: Mode, checkpoint_quantization: dict | None,
                         on_cuda: bool) -> QuantOptions:
    """`options` with the GPTQ kernel filled in (the default for this checkpoint when none was chosen)."""
    if mode is not Mode.GPTQ or options.gptq_backend:
        return options
    return replace(options, gptq_backend=default_gptq_backend(checkpoint_quantization, on_cuda))


def torch_dtype(mode: Mode, options: QuantOptions, on_cuda: bool) -> torch.dtype:
    """dtype of the weights that stay unquantized (embeddings, norms, output head)."""
    if mode.value in DTYPES:
        return DTYPES[mode.value]
    if options.compute_dtype:
        return DTYPES[options.compute_dtype]
    if mode is Mode.INT8:
        return torch.float16  # LLM.int8() matmuls run in fp16; other dtypes are cast on every call
    if mode is Mode.GPTQ and options.gptq_backend == "gptq_int4pack":
        return torch.bfloat16  # the int4 kernel computes in bf16 only: fp16 would cast at every layer
    return torch.float16 if on_cuda else torch.bfloat16


def check_mode(
    mode: Mode, options: QuantOptions, *, checkpoint_quantization: dict | None, on_cuda: bool
) -> list[str]:
    """Refuse a mode that cannot run (UnsupportedModeError); return warnings for one that runs badly."""
    warnings: list[str] = []
    method = (checkpoint_quantization or {}).get("quant_method")
    method = getattr(method, "value", method)
    if method == "gptq" and mode is not Mode.GPTQ:
        raise UnsupportedModeError(
            f"This checkpoint is already quantized with GPTQ ({checkpoint_quantization.get('bits')}-bit); "
            f"it cannot be loaded as {mode.value}.",
            "Load it in mode gptq, or load the original unquantized model for other modes.",
        )
    if method == "bitsandbytes":
        saved = Mode.INT8 if checkpoint_quantization.get("load_in_8bit") else Mode(
            checkpoint_quantization.get("bnb_4bit_quant_type", "fp4")
        )
        if mode is not saved:
            raise UnsupportedModeError(
                f"This checkpoint holds serialized bitsandbytes {saved.value} weights; it cannot be loaded as {mode.value}.",
                f"Load it in mode {saved.value}.",
            )
    elif method and method != "gptq":
        raise UnsupportedModeError(
            f"This checkpoint is quantized with {method}, which this tool does not load.",
            "Use a GPTQ, bitsandbytes or unquantized checkpoint.",
        )

    if mode is Mode.GPTQ:
        if method != "gptq":
            raise UnsupportedModeError(
                "Mode gptq loads a checkpoint that is already GPTQ-quantized, and this one is not.",
                "Quantize it first (Quantize tab, or `python -m quant quantize`), or pick int8 / nf4 / fp4.",
            )
        for module, package in (("gptqmodel", "gptqmodel"), ("optimum", "optimum")):
            if not is_installed(module):
                raise UnsupportedModeError(f"Loading GPTQ needs the {package} package.", f"pip install {package}")
        backend = options.gptq_backend or default_gptq_backend(checkpoint_quantization, on_cuda)
        if backend not in GPTQ_BACKENDS:
            raise UnsupportedModeError(
                f"Unknown GPTQ kernel {backend!r}.", f"Choose one of {', '.join(GPTQ_BACKENDS)}."
            )
        if not on_cuda and backend not in _CPU_GPTQ_BACKENDS:
            raise UnsupportedModeError(
                f"The GPTQ kernel {backend} needs a CUDA GPU, and the model is placed on the CPU.",
                "Use gptq_int4pack or gptq_torch, which run on the CPU.",
            )
        bits = (checkpoint_quantization or {}).get("bits")
        if backend == "gptq_exllama_v2" and bits != 4:
            raise UnsupportedModeError(f"ExLlamaV2 runs 4-bit GPTQ only; this checkpoint is {bits}-bit.",
                                       "Use gptq_torch or gptq_triton.")
        refusal = int4pack_refusal(checkpoint_quantization, on_cuda) if backend == "gptq_int4pack" else None
        if refusal:
            raise UnsupportedModeError(refusal, "Use gptq_torch or gptq_triton.")
        if backend == "gptq_marlin" and bits not in (4, 8):
            raise UnsupportedModeError(f"Marlin runs 4- and 8-bit GPTQ only; this checkpoint is {bits}-bit.",
                                       "Use gptq_torch or gptq_triton.")

    if mode.is_bitsandbytes and not is_installed("bitsandbytes"):
        raise UnsupportedModeError(f"Mode {mode.value} needs the bitsandbytes package.", "pip install bitsandbytes")

    wants_bf16 = mode is Mode.BF16 or options.compute_dtype == "bf16" or (
        mode in (Mode.NF4, Mode.FP4) and options.bnb4_compute_dtype == "bf16"
    )
    if on_cuda and wants_bf16 and not torch.cuda.is_bf16_supported():
        raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16 (or fp16 compute dtype).")
    if not on_cuda and mode is Mode.FP16:
        warnings.append("fp16 on the CPU is slow and some CPU ops lack fp16 kernels; bf16 or fp32 suit the CPU.")
    if not on_cuda and mode.is_bitsandbytes:
        warnings.append(f"{mode.value} runs on bitsandbytes' CPU backend here: it saves memory but is slower than on a GPU.")
    if options.bnb4_compute_dtype not in DTYPES:
        raise UnsupportedModeError(f"Unknown compute dtype {options.bnb4_compute_dtype!r}.", "Use fp32, fp16 or bf16.")
    if options.bnb4_quant_storage not in QUANT_STORAGE:
        raise UnsupportedModeError(
            f"Unknown quant storage {options.bnb4_quant_storage!r}.", f"Use one of {', '.join(QUANT_STORAGE)}."
        )
    if not 0 < options.int8_threshold <= 1000:
        raise UnsupportedModeError("The int8 outlier threshold must be a positive number (6.0 is the default).")
    return warnings


def quantization_config(
    mode: Mode, options: QuantOptions, *, checkpoint_quantization: dict | None, on_cuda: bool
) -> QuantizationConfigMixin | None:
    """The quantization config handed to `from_pretrained` for this mode (None for plain dtypes)."""
    if mode is Mode.INT8:
        return BitsAndBytesConfig(
            load_in_8bit=True,
            llm_int8_threshold=options.int8_threshold,
            llm_int8_skip_modules=list(options.int8_skip_modules) or None,
            llm_int8_enable_fp32_cpu_offload=options.int8_cpu_offload,
        )
    if mode in (Mode.NF4, Mode.FP4):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=mode.value,
            bnb_4bit_use_double_quant=options.bnb4_double_quant,
            bnb_4bit_compute_dtype=DTYPES[options.bnb4_compute_dtype],
            bnb_4bit_quant_storage=QUANT_STORAGE[options.bnb4_quant_storage],
            llm_int8_skip_modules=list(options.int8_skip_modules) or None,
        )
    if mode is Mode.GPTQ:
        saved = dict(checkpoint_quantization or {})
        return GPTQConfig(
            bits=saved["bits"],
            group_size=saved.get("group_size", 128),
            desc_act=saved.get("desc_act", False),
            sym=saved.get("sym", True),
            backend=loading_gptq_backend(options.gptq_backend or default_gptq_backend(saved, on_cuda)),
        )
    return None
