"""What every Triton kernel of this package needs before it is used (quant.int4_dequant, quant.decode_attention): a
GPU and Triton, and a check against the torch version it replaces, once a process."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from typing import Callable

import torch


def launch_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """The CUDA device of `tensor` made current around a Triton launch called eagerly: Triton launches on the current
    device, and a layer of a model split over GPUs (device_map over cuda:0 and cuda:1) sits on another one, as
    bitsandbytes guards its own kernels. Compiled code sets the device itself (and Dynamo need not trace this); a CPU
    tensor (Triton's interpreter) needs nothing."""
    if tensor.is_cuda and not torch.compiler.is_compiling():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def refusal() -> str | None:
    """Why a Triton kernel cannot run here (no CUDA GPU, no Triton), or None."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None


class KernelCheck:
    """Whether a Triton kernel is used in this process: where it can run (`refusal`) and `check` (run on the GPU:
    the kernel against the torch version it replaces; returns what differs, or None) finds nothing wrong. Decided at
    the first `reason()`, once a process, the reason logged after `fallback` (what runs instead); a check that raises
    (a Triton or driver failure) refuses with its error. A CUDA kernel built here (quant.awq_gemv) is checked the
    same way: `kernel` names it, and `needs_triton=False` asks only for a GPU."""

    def __init__(self, check: Callable[[], str | None], logger: logging.Logger, fallback: str, *,
                 kernel: str = "the Triton kernel", needs_triton: bool = True):
        self._check, self._log, self._fallback, self._kernel = check, logger, fallback, kernel
        self._needs_triton = needs_triton
        self.decided = False
        self.known_reason: str | None = None
        """Why the kernel is refused, once decided (None: not decided yet, or used)."""

    def reason(self) -> str | None:
        """Why the kernel is not used here, or None; decided now if not yet."""
        if not self.decided:
            reason = refusal() if self._needs_triton else (None if torch.cuda.is_available() else "no CUDA GPU")
            if reason is None:
                try:
                    reason = self._check()
                except Exception as exc:  # noqa: BLE001 - the torch version still works
                    reason = f"{self._kernel} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            self.decided, self.known_reason = True, reason
            if reason:
                self._log.warning("%s: %s", self._fallback, reason)
        return self.known_reason
