"""One object per load mode (a quantization method, or a plain dtype) that answers everything the code asks of it.

Like transformers' quantizers (`AUTO_QUANTIZER_MAPPING`: one class per `quant_method`), `METHODS` maps a mode's name
to its object, and nothing else in the package branches on a mode's name. A method says: its options (which drive
the Model tab's fields and the CLI's flags), the dtype and `quantization_config` handed to `from_pretrained`, what it
needs (packages, a GPU) and its refusals, the checkpoints it loads, bytes per weight for the memory estimate, why the
compiled decode path refuses it, what to do around the load (GPTQ's int4 repack), and whether the Quantize tab can
write it to disk.

Adding a method: a module here with its `QuantMethod` subclass, registered in `METHODS` below; its strings in
`ui_strings` (`mode.<name>`, `option.<field>` for a new option, `quantize.method.<name>` if it writes checkpoints);
its tests.
"""

from __future__ import annotations

from enum import Enum

from ..errors import UnsupportedModeError
from .awq import AWQ_BACKENDS, AWQMethod
from .base import (
    DTYPES,
    QUANT_STORAGE,
    Option,
    QuantizeJob,
    QuantizeOutcome,
    QuantMethod,
    QuantOptions,
    is_installed,
    saved_method_name,
)
from .bitsandbytes import FourBitMethod, Int8Method
from .floats import FloatMethod
from .gptq import GPTQ_BACKENDS, GPTQMethod
from .hqq import HQQMethod
from .torchao import Fp8Method, TorchAoInt4Method, TorchAoInt8Method

__all__ = ["ALL_OPTIONS", "AWQ_BACKENDS", "DTYPES", "GPTQ_BACKENDS", "METHODS", "QUANT_STORAGE", "Mode", "Option",
           "QuantMethod", "QuantOptions", "QuantizeJob", "QuantizeOutcome", "check_mode", "checkpoint_refusal", "is_installed",
           "load_time_methods", "method_of", "modes_that_run_here", "parse_mode", "quantize_methods",
           "saved_method_name"]

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
        TorchAoInt8Method(),
        TorchAoInt4Method(),
        Fp8Method(),
        HQQMethod(),
        AWQMethod(),
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


def modes_that_run_here(on_cuda: bool) -> list[str]:
    """Load-time modes that run on this machine's device (the GPU when `on_cuda`, else the CPU) with their default
    options, each method's own `check` deciding (fp8 needs compute capability 8.9, a missing package refuses its
    modes...): the Compare tab's "every mode that runs here" and `compare --modes all`."""
    here = []
    for name in load_time_methods():
        try:
            check_mode(name, QuantOptions(), checkpoint_quantization=None, on_cuda=on_cuda)
        except UnsupportedModeError:
            continue
        here.append(name)
    return here


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
    bits = checkpoint_quantization.get("bits")
    what = (f"{saved.upper()} ({bits}-bit)" if loader.needs_quantized_checkpoint and bits
            else f"{saved} ({loader.name})")
    raise UnsupportedModeError(
        f"This checkpoint is already quantized with {what}; it cannot be loaded as {method.name}.",
        f"Load it in mode {loader.name}"
        + (", or load the original unquantized model for other modes." if loader.needs_quantized_checkpoint else "."),
    )


def check_mode(mode: str | Mode, options: QuantOptions, *, checkpoint_quantization: dict | None,
               on_cuda: bool) -> list[str]:
    """Refuse a mode that cannot run here for this checkpoint (UnsupportedModeError); warnings for one that runs
    badly."""
    method = method_of(mode)
    checkpoint_refusal(method, checkpoint_quantization)
    return method.check(options, checkpoint_quantization, on_cuda)
