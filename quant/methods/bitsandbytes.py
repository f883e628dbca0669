"""bitsandbytes: LLM.int8() and 4-bit nf4 / fp4, quantized at load time (or loaded from their serialized checkpoints)."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

from ..errors import UnsupportedModeError
from .base import DTYPES, QUANT_STORAGE, Option, QuantMethod, QuantOptions, is_installed, saved_method_name

SKIP_MODULES = Option("int8_skip_modules", "--skip-modules", "names", "Modules kept unquantized")
INT8_THRESHOLD = Option("int8_threshold", "--int8-threshold", "number", "The LLM.int8 outlier threshold")
INT8_CPU_OFFLOAD = Option("int8_cpu_offload", "--int8-cpu-offload", "bool", "Keep CPU-offloaded modules in fp32")
BNB4_DOUBLE_QUANT = Option("bnb4_double_quant", "--double-quant", "bool", "4-bit: quantize the scales too",
                           negative_flag="--no-double-quant")
BNB4_COMPUTE_DTYPE = Option("bnb4_compute_dtype", "--compute-dtype", "choice", "4-bit compute dtype",
                            (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")))
BNB4_QUANT_STORAGE = Option("bnb4_quant_storage", "--quant-storage", "choice", "Quant storage",
                            tuple((name, name) for name in QUANT_STORAGE))
BNB4_KERNELS = {"bitsandbytes": "bitsandbytes' own kernels: CPU and GPU",
                "triton": "quant's Triton kernel for decode (1-8 rows) on the same 4-bit weights: GPU; experimental, "
                          "slower so far (0.6x at 8B on an H200)"}
BNB4_KERNEL = Option("bnb4_kernel", "--bnb4-kernel", "choice", "4-bit decode kernel (GPU)",
                     tuple(BNB4_KERNELS.items()))



class BitsAndBytesMethod(QuantMethod):
    """bitsandbytes, quantizing at load time (or loading its own serialized checkpoint)."""

    packages = (("bitsandbytes", "bitsandbytes"),)
    hub_tags = ("bitsandbytes",)
    quantizes_what = "bitsandbytes quantizes nn.Linear layers only"
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

    options = (SKIP_MODULES, BNB4_DOUBLE_QUANT, BNB4_COMPUTE_DTYPE, BNB4_QUANT_STORAGE, BNB4_KERNEL)
    backend_option = "bnb4_kernel"
    TRACEABLE_BACKENDS = tuple(BNB4_KERNELS)
    """bitsandbytes' 4-bit matmul is a torch op (`bitsandbytes::gemm_4bit`); the Triton kernel a custom op with a fake
    implementation (quant.gemv4bit)."""

    def __init__(self, name: str, description: str, quantize_label: str | None) -> None:
        self.name, self.description, self.quantize_label = name, description, quantize_label

    def check(self, options, checkpoint_quantization, on_cuda):
        warnings = super().check(options, checkpoint_quantization, on_cuda)
        if options.bnb4_kernel == "triton":
            if not on_cuda:
                raise UnsupportedModeError("The triton 4-bit kernel runs on a CUDA GPU, and the model is placed on "
                                           "the CPU.", "Pick the bitsandbytes kernel, or place the model on a GPU.")
            if not is_installed("triton"):
                raise UnsupportedModeError("The triton 4-bit kernel needs the triton package.", "pip install triton")
        if on_cuda and "bf16" in (options.bnb4_compute_dtype, options.compute_dtype) \
                and not torch.cuda.is_bf16_supported():
            raise UnsupportedModeError("This GPU does not support bfloat16.", "Use fp16 (or fp16 compute dtype).")
        return warnings

    def dtype(self, options, on_cuda):
        """On a GPU, the 16-bit compute dtype: bitsandbytes' Linear4bit casts its input to the compute dtype and its
        output back on every call, two copies a layer (18% of an 8B nf4 prefill on an H200 with the model in fp16 and
        compute in bf16, bench/results/prefill-profile-8b-nf4-nf4-bitsandbytes.md). fp32 compute keeps the rest in
        16 bits; on the CPU the rest stays bf16 (the default compute too)."""
        if on_cuda and not options.compute_dtype and options.bnb4_compute_dtype in ("bf16", "fp16"):
            return DTYPES[options.bnb4_compute_dtype]
        return super().dtype(options, on_cuda)  # the operator's compute_dtype, else the 16-bit default

    def config(self, options, checkpoint_quantization, on_cuda):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.name,
            bnb_4bit_use_double_quant=options.bnb4_double_quant,
            bnb_4bit_compute_dtype=DTYPES[options.bnb4_compute_dtype],
            bnb_4bit_quant_storage=QUANT_STORAGE[options.bnb4_quant_storage],
            llm_int8_skip_modules=list(options.int8_skip_modules) or None,
        )

    def after_load(self, model, options, progress):
        if options.bnb4_kernel != "triton":
            return _dequantize_long_inputs(model)
        from ..gemv4bit import convert_model

        progress(0.85, "Giving the 4-bit layers the Triton decode kernel")
        converted, warnings = convert_model(model)
        return [f"{converted} 4-bit layers decode (1-8 rows) on quant's Triton kernel; longer inputs use "
                "bitsandbytes' own path. It keeps a float32 absmax per 64 weights beside the weight's own (about "
                "8% more memory).", *warnings]

    def bytes_per_weight(self, checkpoint_quantization):
        return 0.53  # 4 bits and an absmax per 64 weights: 8-bit nested on a GPU, bf16 after the CPU kernel's repack


def _dequantize_long_inputs(model) -> list[str]:
    """QUANT_NF4_DEQUANTIZE_ROWS=N (32 by default) on a GPU: the 4-bit layers dequantize inputs of N rows or more with
    quant.nf4_dequant and multiply with cuBLAS (0: off). Returns the load report's warnings: none where the layers
    were converted (the report's layer classes say Dequantizing4bitLinear), the reason where the kernel was refused."""
    from ..settings import load_settings

    from_rows = load_settings().nf4_dequantize_rows
    parameter = next(model.parameters(), None)
    if not from_rows or parameter is None or not parameter.is_cuda:
        return []
    from .. import nf4_dequant

    refused = nf4_dequant.CHECK.reason()
    if refused:
        return [f"QUANT_NF4_DEQUANTIZE_ROWS={from_rows} is not used: {refused}."]
    nf4_dequant.convert_model(model, from_rows)
    return []
