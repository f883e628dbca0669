"""What every Triton kernel of this package needs before it can run (quant.int4_dequant, quant.decode_attention)."""

from __future__ import annotations

import importlib.util

import torch


def refusal() -> str | None:
    """Why a Triton kernel cannot run here (no CUDA GPU, no Triton), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None
