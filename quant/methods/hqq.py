"""HQQ: 8/4/3/2-bit weights without calibration, quantized while the model loads (the `hqq` package; quant.hqq says
how, and why not through transformers' HqqConfig)."""

from __future__ import annotations

import gc
from dataclasses import replace

import torch

from ..errors import QuantError, UnsupportedModeError
from ..hqq import BACKENDS, BITS, GROUP_SIZES
from ..int4pack import kernel_refusal
from ..hqq import bytes_per_weight as hqq_bytes_per_weight
from .base import DTYPES, Option, QuantMethod, is_installed

HQQ_BITS = Option("hqq_bits", "--hqq-bits", "choice", "HQQ bits",
                  tuple((str(bits), f"{bits}-bit") for bits in BITS))
HQQ_GROUP_SIZE = Option("hqq_group_size", "--hqq-group-size", "choice", "HQQ group size",
                        tuple((str(size), f"a scale and a zero per {size} weights") for size in GROUP_SIZES))
HQQ_BACKEND = Option("hqq_backend", "--hqq-backend", "choice",
                     "HQQ kernel (default: hqq_int4pack for 4-bit, else hqq_torch)",
                     (("", "automatic"), *BACKENDS.items()))
GEMLITE_BITS = (8, 4)
"""What hqq_gemlite runs here. gemlite has 2-bit kernels too, but its split-K kernel for 2-bit weights with groups
of 32 faulted on an H200 (2026-12-01, tests/gpu/test_gpu_methods.py, the demo model's batch-4 prefill: "an illegal
memory access"), which leaves the CUDA context unusable for every model of the process: refused, not risked."""


GEMLITE_WARNING = ("hqq_gemlite gave NaN logits on an H200 in 2 of 3 GPU sessions (the demo model, 4-bit, "
                   "2026-12-02: once in the compiled step, once eager) and was slower than hqq_int4pack at batch 1 "
                   "and 128: check its replies against hqq_int4pack's before relying on it.")
"""The load report's line for hqq_gemlite, kept on request for comparison (bench/results/INDEX.md, Kernels)."""


class HQQMethod(QuantMethod):
    """Any unquantized checkpoint, loaded in 16 bits, then each linear layer quantized with HQQ on its device."""

    name = "hqq"
    description = "HQQ: 8/4/3/2-bit without calibration, quantized at load (hqq)"
    options = (HQQ_BITS, HQQ_GROUP_SIZE, HQQ_BACKEND)
    packages = (("hqq", "hqq"),)
    hub_tags = ("hqq",)
    backend_option = "hqq_backend"
    TRACEABLE_BACKENDS = ("hqq_int4pack", "hqq_torch", "hqq_gemlite")
    """hqq_int4pack is quant.int4pack's layer (the one GPTQ's default kernel compiles with); hqq_torch is plain torch
    code (unpack, scale, matmul); gemlite's matmul is a torch custom op (`gemlite::forward_functional`) with a fake
    implementation for tracing. tests/gpu/test_gpu_methods.py checks each against the eager path on the GPU."""

    @staticmethod
    def int4pack_refusal(bits: int, group_size: int, on_cuda: bool) -> str | None:
        return kernel_refusal(bits, group_size, on_cuda)

    @classmethod
    def default_backend(cls, bits: int, group_size: int, on_cuda: bool) -> str:
        """hqq_int4pack where PyTorch's int4 kernel takes the layers (4-bit; on a GPU, Ampere or newer): it reads the
        packed weight directly, on the CPU and the GPU, and compiles. Else hqq_torch, which dequantizes at each call.
        gemlite is only taken on request (a Triton kernel tuned per GPU, checked on the device)."""
        return "hqq_torch" if cls.int4pack_refusal(bits, group_size, on_cuda) else "hqq_int4pack"

    def resolve(self, options, checkpoint_quantization, on_cuda):
        if options.hqq_backend:
            return options
        return replace(options, hqq_backend=self.default_backend(options.hqq_bits, options.hqq_group_size, on_cuda))

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        bits, group_size = options.hqq_bits, options.hqq_group_size
        backend = options.hqq_backend or self.default_backend(bits, group_size, on_cuda)
        if bits not in BITS or group_size not in GROUP_SIZES:
            raise UnsupportedModeError(f"HQQ runs {', '.join(map(str, BITS))} bits with group size "
                                       f"{', '.join(map(str, GROUP_SIZES))}; not {bits}-bit with group size "
                                       f"{group_size}.")
        if backend not in BACKENDS:
            raise UnsupportedModeError(f"Unknown HQQ kernel {backend!r}.", f"Choose one of {', '.join(BACKENDS)}.")
        if backend == "hqq_int4pack":
            refusal = self.int4pack_refusal(bits, group_size, on_cuda)
            if refusal:
                raise UnsupportedModeError(refusal, "Use the hqq_torch kernel.")
        if backend == "hqq_gemlite":
            if not on_cuda:
                raise UnsupportedModeError("The hqq_gemlite kernel needs a CUDA GPU, and the model is placed on the "
                                           "CPU.", "Use hqq_int4pack (4-bit) or hqq_torch, which run on the CPU.")
            if bits not in GEMLITE_BITS:
                raise UnsupportedModeError(f"hqq_gemlite runs 8- and 4-bit HQQ here; not {bits}-bit (gemlite's "
                                           "2-bit kernel faulted on an H200, which ends the process's GPU work).",
                                           "Use the hqq_torch kernel.")
            if not is_installed("gemlite"):
                raise UnsupportedModeError("The hqq_gemlite kernel needs the gemlite package.", "pip install gemlite")
            warnings.append(GEMLITE_WARNING)
        if on_cuda and "bf16" in (options.compute_dtype, "bf16" if backend == "hqq_int4pack" else None) \
                and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use hqq_torch with fp16.")
        if backend == "hqq_torch" and not on_cuda:
            warnings.append("hqq_torch dequantizes every weight at every call: on the CPU it runs slower than bf16; "
                            "hqq_int4pack (4-bit) is the fast CPU kernel.")
        return warnings

    def dtype(self, options, on_cuda):
        if options.compute_dtype:
            return DTYPES[options.compute_dtype]
        if options.hqq_backend == "hqq_int4pack":
            return torch.bfloat16  # the int4 kernel computes in bf16 only
        return super().dtype(options, on_cuda)

    def bytes_per_weight(self, checkpoint_quantization):
        """2.0: what the load holds at its peak. The weights load in 16 bits and are quantized layer by layer after
        (see quant.hqq), so the room to make before loading is the 16-bit size; the loaded model then takes
        `quant.hqq.bytes_per_weight(bits, group_size)` (4-bit, group 64: 0.5625 bytes a weight)."""
        return 2.0

    def loaded_bytes_per_weight(self, checkpoint_quantization, options):
        from quant.hqq import bytes_per_weight

        return bytes_per_weight(options.hqq_bits, options.hqq_group_size)

    def load_note(self, options):
        return f" (then quantized with HQQ, {options.hqq_bits}-bit, group size {options.hqq_group_size})"

    def after_load(self, model, options, progress):
        from ..hqq import quantize_model

        bits, group_size, backend = options.hqq_bits, options.hqq_group_size, options.hqq_backend
        progress(0.8, f"Quantizing the linear layers with HQQ ({bits}-bit, group size {group_size}, {backend})")
        result = quantize_model(model, bits, group_size, backend, model.dtype,
                                progress=lambda message: progress(0.85, message))
        gc.collect()  # the 16-bit layers just replaced
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if result.layers == 0:
            why = (f"the input size of each is not a multiple of the group size {group_size}" if result.left else
                   "it quantizes torch.nn.Linear layers; GPT-2's are Conv1D")
            raise QuantError(f"HQQ found no linear layer it can quantize in {type(model).__name__}: {why}.",
                             "Try another group size, or load this model in int8 or nf4 (bitsandbytes).")
        model.config.quantization_config = {
            "quant_method": "hqq", "nbits": bits, "group_size": group_size, "axis": 1, "backend": backend,
            "skip_modules": ["lm_head"], "layers": result.layers, "quantize_seconds": round(result.seconds, 3),
            "bytes_per_weight": hqq_bytes_per_weight(bits, group_size),
        }
        from ..int4pack import kernel_warnings

        warnings = kernel_warnings(model)
        if not result.left:
            return warnings
        from ..families import names_text

        return warnings + [f"{len(result.left)} linear layers stay in {str(model.dtype).removeprefix('torch.')}: their "
                           f"input size is not a multiple of the group size {group_size} ({names_text(result.left)})."]

    def quantize_refusal(self, config, kind):
        return ("HQQ checkpoints are not written here: transformers 5.23 cannot load them back (it builds no HQQ "
                "layers before the weights arrive, so a saved HQQ model loads as plain layers with random weights).",
                "Load the original model in mode hqq: HQQ quantizes at load time, without calibration, in seconds.")

    def card_tags(self, recipe):
        return [*self.hub_tags, f"{recipe.get('nbits')}-bit"]
