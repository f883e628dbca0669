"""Unquantized weights in one dtype: fp32, fp16, bf16."""

from __future__ import annotations

import torch

from ..errors import UnsupportedModeError
from .base import DTYPES, QuantMethod


class FloatMethod(QuantMethod):
    """Unquantized weights in one dtype."""

    quantizes_weights = False
    tensor_parallel_refusal = None

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
