"""GPTQ checkpoints, loaded through gptqmodel with the kernel the user picks, and GPTQ quantization (quant.gptq)."""

from __future__ import annotations

import gc
import os
from dataclasses import asdict, replace

import torch
from transformers import GPTQConfig

from .. import awq_gemv
from ..errors import UnsupportedModeError
from ..int4pack import kernel_refusal
from .base import DTYPES, Option, QuantizeOutcome, QuantMethod, is_installed, saved_method_name

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
    backend_option = "gptq_backend"
    TRACEABLE_BACKENDS = ("gptq_marlin", "gptq_torch", "gptq_int4pack")
    """Kernels that trace under torch.compile (the compiled decode path): torch ops (gptqmodel builds Marlin as
    torch.ops) or plain torch code. Each measured faster through the compiled decode loop on an H100, Llama-8B shape,
    batch 1 / 32 tok/s (gpu-bench-8b-allmodes.md): Marlin eager 27.3 / 674 -> compiled 204.0 / 2,729; int4pack
    36.4 / 984 -> 272.7 / 1,580 (PyTorch's own int4 matmul, quant.int4pack, made for CUDA graphs like gpt-fast's)."""
    DEFAULT_STREAM_BACKENDS = ("gptq_exllama_v2",)
    """gptqmodel_ext/exllamav2/cuda/q_gemm.cu launches its kernels without a stream (H200, nineteenth session:
    bench/results/int4-gemv-kernels-uncaptured.md)."""

    def loads_checkpoint(self, checkpoint_quantization):
        return saved_method_name(checkpoint_quantization) == "gptq"

    @staticmethod
    def int4pack_refusal(checkpoint_quantization: dict | None, on_cuda: bool) -> str | None:
        """Why PyTorch's int4 kernel (gptq_int4pack) cannot run this checkpoint here, or None."""
        saved = checkpoint_quantization or {}
        return kernel_refusal(saved.get("bits"), saved.get("group_size"), on_cuda, weights="GPTQ",
                              subject="this checkpoint")

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
        saved = checkpoint_quantization or {}
        return (saved.get("bits", 4) / 8 + 0.02  # + a scale and a zero per group
                + awq_gemv.extra_bytes_per_weight(saved.get("group_size", 128)))

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
        return repack_for_int4_kernel(model, progress, "GPTQ", "gptq_torch")

    def compile_refusal(self, options):
        refusal = super().compile_refusal(options)
        return refusal and f"{refusal} (choose gptq_int4pack, gptq_marlin or gptq_torch for the compiled path)"

    def quantize_refusal(self, config, kind):
        from ..families import gptq_refusal
        from ..gptq import GPTQ_REFUSAL_HINT

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
        from ..gptq import quantize_gptq

        result = quantize_gptq(job.source_folder, job.recipe, job.calibration_texts or [], job.out_dir,
                               device=job.device, progress=lambda f, m: job.progress(0.05 + 0.75 * f, m),
                               stop=job.stop, on_layer_errors=job.on_layer_errors)
        return QuantizeOutcome(asdict(job.recipe), job.calibration_description, result.layer_errors)


def repack_for_int4_kernel(model, progress, method: str, loaded_with: str,
                           hold_in: torch.dtype | None = None) -> list[str]:
    """Move a GPTQ or AWQ model's torch-kernel layers to PyTorch's int4 kernel (quant.int4pack) after loading;
    warnings for long prompts and for layers that stay on `loaded_with`. `hold_in`: once every layer moved, the rest
    of the model is cast to this dtype (the int4 layers compute in bf16: a model held in fp16 casts each layer's input
    to bf16 and its output back, as nf4's did: 0.57 s of its 3.15 s prefill on an H200)."""
    from ..int4pack import kernel_warnings, repack_model
    from ..settings import load_settings

    progress(0.85, f"Repacking the {method} layers for PyTorch's int4 kernel")
    result = repack_model(model, dequantize_from_rows=load_settings().int4_dequantize_rows)
    gc.collect()  # the torch-kernel layers just replaced
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    warnings = [f"Long prompts use tinygemm: {result.dequantize_reason}."] if result.dequantize_reason else []
    warnings += kernel_warnings(model)
    if result.reason is None:
        if hold_in not in (None, torch.float16) and model.dtype == torch.float16:
            _cast_half_tensors(model, hold_in)
        return warnings
    return warnings + [f"{result.left} {method} layers stay on the {loaded_with} kernel ({result.layers} moved to the "
                       f"int4 kernel): {result.reason}."]


def _cast_half_tensors(model, dtype: torch.dtype) -> None:
    """Cast `model`'s fp16 parameters and buffers to `dtype` in place (tied weights stay tied); float32 ones stay, as
    a load in `dtype` keeps them (rotary tables, modules kept in float32), which `model.to(dtype)` would cast."""
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None and param.dtype == torch.float16:
                param.data = param.data.to(dtype)
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.dtype == torch.float16:
                module._buffers[name] = buffer.to(dtype)
    model.config.dtype = dtype


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
