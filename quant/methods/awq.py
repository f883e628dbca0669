"""AWQ checkpoints, loaded through transformers' AwqConfig (gptqmodel's kernels) with the kernel the user picks, and
AWQ quantization with gptqmodel (quant.gptq.quantize_awq)."""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from .. import awq_gemv
from ..errors import UnsupportedModeError
from ..int4pack import kernel_refusal
from .base import DTYPES, Option, QuantizeOutcome, QuantMethod, is_installed, saved_method_name
from .gptq import repack_for_int4_kernel

AWQ_BACKENDS: dict[str, str] = {
    "awq_int4pack": "PyTorch's int4 matmul (tinygemm): CPU and GPU, 4-bit, group size 32-256, no build; bf16",
    "awq_torch": "gptqmodel's PyTorch kernel: CPU and GPU, dequantizes at every call, no build",
    "awq_marlin": "Marlin: GPU (Ampere+), 4/8-bit, built on first use (~3.5 min); fastest for batches",
}
"""Kernels an AWQ checkpoint can be loaded with. transformers' own choice ('auto') is not offered: on the CPU it is
gptqmodel's ATen kernel, on a GPU it tries Machete first (which downloads CUTLASS at run time, as for GPTQ)."""

AWQ_BACKEND = Option("awq_backend", "--awq-backend", "choice",
                     "AWQ kernel (default: awq_int4pack for 4-bit with group size 32-256, else awq_torch)",
                     (("", "automatic"), *AWQ_BACKENDS.items()))

_TRANSFORMERS_BACKEND = {"awq_int4pack": "torch_awq", "awq_torch": "torch_awq", "awq_marlin": "marlin"}
"""AwqConfig's `backend` for each kernel: awq_int4pack loads with the torch kernel and is repacked (quant.int4pack)."""


class AWQMethod(QuantMethod):
    """A checkpoint already quantized with AWQ (GEMM layout), loaded through transformers and gptqmodel."""

    name = "awq"
    description = "a checkpoint already quantized with AWQ"
    options = (AWQ_BACKEND,)
    needs_quantized_checkpoint = True
    packages = (("gptqmodel", "gptqmodel"),)
    quantize_label = "AWQ"
    calibrated = True
    hub_tags = ("awq",)
    card_requirements = ("Loading needs `gptqmodel` (`pip install gptqmodel`): transformers loads AWQ checkpoints "
                         "with its kernels.")
    CPU_BACKENDS = ("awq_int4pack", "awq_torch")
    backend_option = "awq_backend"
    TRACEABLE_BACKENDS = ("awq_int4pack", "awq_torch", "awq_marlin")
    """awq_int4pack is quant.int4pack's layer, the one GPTQ's default kernel compiles with; gptqmodel's torch kernel is
    plain torch code and its Marlin kernel a torch op, as for GPTQ (tests/gpu/test_gpu_methods.py checks each against the
    eager path on the GPU)."""

    def loads_checkpoint(self, checkpoint_quantization):
        return saved_method_name(checkpoint_quantization) == "awq"

    @staticmethod
    def saved_format(checkpoint_quantization: dict) -> str:
        value = checkpoint_quantization.get("version") or checkpoint_quantization.get("format") or "gemm"
        return str(getattr(value, "value", value)).lower()

    @staticmethod
    def int4pack_refusal(checkpoint_quantization: dict | None, on_cuda: bool) -> str | None:
        """Why PyTorch's int4 kernel (awq_int4pack) cannot run this checkpoint here, or None."""
        saved = checkpoint_quantization or {}
        return kernel_refusal(saved.get("bits"), saved.get("group_size"), on_cuda, weights="AWQ",
                              subject="this checkpoint")

    @classmethod
    def default_backend(cls, checkpoint_quantization: dict | None = None, on_cuda: bool = False) -> str:
        """awq_int4pack where PyTorch's int4 kernel takes the checkpoint: the kernel GPTQ's default compiles with
        (gpu-bench-8b-allmodes.md: 272.7 tok/s at batch 1 on an H100 for GPTQ, 1.9x compiled bf16); AWQ's zero point
        per group maps onto it exactly. Else gptqmodel's torch kernel. Neither needs a build or a download."""
        return "awq_torch" if cls.int4pack_refusal(checkpoint_quantization, on_cuda) else "awq_int4pack"

    def resolve(self, options, checkpoint_quantization, on_cuda):
        if options.awq_backend:
            return options
        return replace(options, awq_backend=self.default_backend(checkpoint_quantization, on_cuda))

    def check(self, options, checkpoint_quantization, on_cuda):
        if saved_method_name(checkpoint_quantization) != "awq":
            raise UnsupportedModeError(
                "Mode awq loads a checkpoint that is already AWQ-quantized, and this one is not.",
                "Quantize it first (Quantize tab, or `python -m quant quantize --method awq`), or pick hqq / nf4.",
            )
        for module, package in self.packages:
            if not is_installed(module):
                raise UnsupportedModeError(f"Loading AWQ needs the {package} package.", f"pip install {package}")
        saved_format = self.saved_format(checkpoint_quantization)
        if saved_format != "gemm":
            raise UnsupportedModeError(
                f"This AWQ checkpoint is in the {saved_format} layout; this tool loads AWQ's GEMM layout (the one "
                "AutoAWQ and gptqmodel write by default).", "Use a GEMM checkpoint, or quantize the original here.")
        backend = options.awq_backend or self.default_backend(checkpoint_quantization, on_cuda)
        if backend not in AWQ_BACKENDS:
            raise UnsupportedModeError(f"Unknown AWQ kernel {backend!r}.", f"Choose one of {', '.join(AWQ_BACKENDS)}.")
        if not on_cuda and backend not in self.CPU_BACKENDS:
            raise UnsupportedModeError(f"The AWQ kernel {backend} needs a CUDA GPU, and the model is placed on the CPU.",
                                       "Use awq_int4pack or awq_torch, which run on the CPU.")
        bits, group_size = checkpoint_quantization.get("bits"), checkpoint_quantization.get("group_size")
        refusal = self.int4pack_refusal(checkpoint_quantization, on_cuda) if backend == "awq_int4pack" else None
        if refusal:
            raise UnsupportedModeError(refusal, "Use awq_torch.")
        if backend == "awq_marlin":
            if bits not in (4, 8) or group_size not in (-1, 32, 64, 128):
                raise UnsupportedModeError(f"Marlin runs 4- and 8-bit AWQ with group size 32, 64, 128 or -1; this "
                                           f"checkpoint is {bits}-bit with group size {group_size}.", "Use awq_torch.")
            if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0):
                raise UnsupportedModeError("Marlin needs an Ampere or newer GPU.", "Use awq_torch.")
        if on_cuda and options.compute_dtype == "bf16" and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16 (or fp16 compute dtype).")
        return []

    def dtype(self, options, on_cuda):
        """The dtype the load asks for: fp16 on a GPU, where transformers' AWQ loader casts every AWQ model to fp16
        anyway (quantizer_awq.py, `update_dtype`); bf16 on the CPU. With awq_int4pack, whose layers compute in bf16,
        `after_load` then holds the model in bf16 unless the operator chose a compute dtype."""
        if options.compute_dtype:
            return DTYPES[options.compute_dtype]
        return torch.float16 if on_cuda else torch.bfloat16

    def config(self, options, checkpoint_quantization, on_cuda):
        from transformers import AwqConfig

        saved = dict(checkpoint_quantization or {})
        backend = options.awq_backend or self.default_backend(saved, on_cuda)
        return AwqConfig(bits=saved["bits"], group_size=saved.get("group_size", 128),
                         zero_point=saved.get("zero_point", True), format=self.saved_format(saved),
                         modules_to_not_convert=saved.get("modules_to_not_convert"),
                         backend=_TRANSFORMERS_BACKEND[backend])

    def bytes_per_weight(self, checkpoint_quantization):
        """The code and, per group, a bf16 scale and zero (awq_int4pack's layout; the checkpoint's own stores a
        16-bit scale and a packed zero code, a little less)."""
        saved = checkpoint_quantization or {}
        group_size = saved.get("group_size", 128)
        return (saved.get("bits", 4) / 8 + 4 / (group_size if group_size and group_size > 0 else 4096)
                + awq_gemv.extra_bytes_per_weight(group_size))

    def load_note(self, options):
        if options.awq_backend != "awq_marlin":
            return ""
        return (" (the Marlin kernel is built on its first use: about 3.5 min, then cached in "
                f"{os.environ.get('GPTQMODEL_TORCH_EXTENSIONS_DIR', 'the kernel cache')})")

    def after_load(self, model, options, progress):
        if options.awq_backend != "awq_int4pack":
            return []
        return repack_for_int4_kernel(model, progress, "AWQ", "awq_torch",
                                      hold_in=None if options.compute_dtype else torch.bfloat16)

    def quantize_refusal(self, config, kind):
        from ..families import gptq_refusal
        from ..gptq import GPTQ_REFUSAL_HINT

        if kind != "causal":
            return ("AWQ quantization here supports causal LMs only.",
                    "Quantize T5/BART with int8 or nf4 (bitsandbytes) instead.")
        refusal = gptq_refusal(config, kind, method="AWQ")
        return (refusal, GPTQ_REFUSAL_HINT) if refusal else None

    def output_label(self, recipe):
        return f"AWQ-{recipe.bits}bit-g{recipe.group_size}"

    def card_tags(self, recipe):
        return [*self.hub_tags, f"{recipe.get('bits')}-bit"]

    def quantize(self, job):
        from ..gptq import quantize_awq

        result = quantize_awq(job.source_folder, job.recipe, job.calibration_texts or [], job.out_dir,
                              device=job.device, progress=lambda f, m: job.progress(0.05 + 0.75 * f, m),
                              stop=job.stop, on_layer_errors=job.on_layer_errors)
        recipe = {"bits": job.recipe.bits, "group_size": job.recipe.group_size, "zero_point": True,
                  "version": "gemm", "num_samples": result.samples, "seq_len": job.recipe.seq_len}
        return QuantizeOutcome(recipe, job.calibration_description, result.layer_errors)
