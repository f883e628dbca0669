"""Which modules a load left unquantized, or in a wider dtype than its mode's, and why: one group per reason, with
its module count, parameters and bytes, for the load report.

A T5-large loaded in int8 took 1,311 MiB against bf16's 1,407: T5's class keeps its `wo` projections in float32
(`_keep_in_fp32_modules`), a third of its weights, and transformers' quantizers never convert those modules. Nothing
said so. This reads it off the loaded model: which modules hold weights that are neither quantized nor in the mode's
dtype (parameter dtypes and tensor types after the load), and the reason from what decided it: the model class's
`_keep_in_fp32_modules` / `_keep_in_fp32_modules_strict`, the output head, the user's skip list, the quantizer's own
list of modules not to convert (`modules_to_not_convert`, the config's `llm_int8_skip_modules`, HQQ's
`skip_modules`), or the method having left a linear layer as it was. No table per architecture.

Embeddings and norms are never quantized by any method and stay in the mode's dtype: they are not listed unless they
are wider than the mode's dtype.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

KEEP_ATTRIBUTES = ("_keep_in_fp32_modules_strict", "_keep_in_fp32_modules")
"""transformers' class attributes naming modules kept in float32: the strict one in fp16 and bf16 loads, the other in
fp16 loads only (modeling_utils.PreTrainedModel._get_dtype_plan); quantizers skip the modules of the second whatever
the dtype (quantizers/base.py, get_modules_to_not_convert)."""
SKIP_LIST_KEYS = ("modules_to_not_convert", "llm_int8_skip_modules", "skip_modules")
"""Keys of a quantization config that list modules the method leaves as they are."""
EXAMPLES = 3
PACKED_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32)
"""dtypes of quantized codes held in buffers (GPTQ's and AWQ's qweight, int4pack's and HQQ's packed weights)."""


@dataclass
class KeptGroup:
    """Modules left out of the mode for one reason."""

    reason: str
    """keep_fp32 (kept in float32 by the model class), keep_fp32_unquantized (the class's list, unquantized in the
    mode's dtype), head, head_tied, skip_user, skip_method, not_converted, not_linear, wider."""
    dtype: str
    modules: int = 0
    parameters: int = 0
    bytes: int = 0
    names: list[str] = field(default_factory=list)
    source: str = ""
    """Who decided: the model class, the quantizer class, the method."""
    attribute: str = ""
    """The list that named them (`_keep_in_fp32_modules`, `modules_to_not_convert`...), if any."""
    patterns: list[str] = field(default_factory=list)
    """The entries of that list that matched."""

    def to_dict(self, method: str, mode_dtype: torch.dtype) -> dict:
        """A JSON-ready record: the numbers, a few example names, the mode's dtype and the English line."""
        record = asdict(self)
        record["examples"] = examples(record.pop("names"))
        record["mode_dtype"] = str(mode_dtype).removeprefix("torch.")
        record["text"] = kept_line(record, method, "en")
        return record


def _is_quantized(module: nn.Module) -> bool:
    """Whether a module holds quantized weights: a tensor subclass (torchao), integer storage (bitsandbytes int8 and
    4-bit parameters; GPTQ, AWQ, int4pack and HQQ buffers) or a 4-bit weight's quant_state (bitsandbytes with a float
    quant storage). Index and mask buffers (int64, bool: position ids, causal masks) are not weights."""
    params = list(module.parameters(recurse=False))
    buffers = list(module.buffers(recurse=False))
    return (any(is_traceable_wrapper_subclass(t) or not t.is_floating_point()
                or getattr(t, "quant_state", None) is not None for t in params)
            or any(is_traceable_wrapper_subclass(t) or t.dtype in PACKED_DTYPES for t in buffers))


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def skipped_by(name: str, patterns: Iterable[str]) -> list[str]:
    """The patterns under which transformers' quantizers leave module `name` unconverted (the rule of
    quantizers_utils.should_convert_module: a prefix up to a module boundary, a regex, or a suffix)."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return [p for p in patterns if p and not should_convert_module(name, [p])]


def _upcast_by(param_names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The patterns that upcast these parameters to float32 at load: transformers searches each pattern (a glob) in
    the parameter's name (core_model_loading, `dtype_plan`)."""
    param_names = list(param_names)
    return [p for p in patterns if p and any(re.search(p.replace("*", ".*"), n) for n in param_names)]


def _declared_by(model: nn.Module, attribute: str, pattern: str) -> str:
    """The class that asks for `pattern` in `attribute`: the model's own class, or the first sub-model's."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and pattern in (getattr(type(module), attribute, None) or ()):
            return type(module).__name__
    return type(model).__name__


def _skip_lists(model: nn.Module) -> list[tuple[str, str, list[str]]]:
    """(source, attribute, patterns) of every list of modules the quantization leaves as they are: the transformers
    quantizer's (its own defaults, the config's and the class's, merged) and the quantization config's."""
    lists = []
    quantizer = getattr(model, "hf_quantizer", None)
    merged = getattr(quantizer, "modules_to_not_convert", None)
    if merged:
        lists.append((type(quantizer).__name__, "modules_to_not_convert", [str(p) for p in merged]))
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    config = config.to_dict() if hasattr(config, "to_dict") else config
    if isinstance(config, dict):
        for key in SKIP_LIST_KEYS:
            if config.get(key):
                lists.append(("quantization_config", key, [str(p) for p in config[key]]))
    return lists


def kept_groups(model: nn.Module, mode_dtype: torch.dtype, quantized: bool,
                user_skips: Iterable[str] = ()) -> list[KeptGroup]:
    """The modules of a loaded `model` that are not in its mode, grouped by reason, largest first.

    `mode_dtype`: the dtype the load asked for (the weights left unquantized take it); `quantized`: whether the mode
    quantizes weights (else only modules wider than `mode_dtype` are listed); `user_skips`: the modules the user
    asked to keep unquantized.
    """
    from .report import tensor_bytes

    width = torch.finfo(mode_dtype).bits if mode_dtype.is_floating_point else 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inputs = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and inputs is not None and head.weight is inputs.weight
    keep = {attribute: sorted(getattr(model, attribute, None) or ()) for attribute in KEEP_ATTRIBUTES}
    user_skips = [s for s in user_skips if s]
    skip_lists = _skip_lists(model) if quantized else []
    groups: dict[tuple, KeptGroup] = {}

    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if not params or _is_quantized(module):
            continue
        wide = [p for p in params.values() if p.is_floating_point() and torch.finfo(p.dtype).bits > width]
        linear = _is_linear(module)
        weights_outside_linear = (module is not inputs and not isinstance(module, nn.Embedding)
                                  and any(p.dim() >= 2 for p in params.values()))  # MoE experts, routers
        unquantized = quantized and (linear or weights_outside_linear)
        if not (wide or unquantized):
            continue
        full_names = [f"{name}.{p}" if name else p for p in params]
        reason, source, attribute, patterns = None, "", "", []
        for attr, entries in keep.items():
            if wide:
                patterns = _upcast_by(full_names, entries)
                if patterns:
                    reason = "keep_fp32"
            elif unquantized and linear:
                patterns = skipped_by(name, entries)
                if patterns:
                    reason = "keep_fp32_unquantized"
            if reason:
                attribute, source = attr, _declared_by(model, attr, patterns[0])
                break
        if reason is None and unquantized and module is head:
            reason = "head_tied" if tied else "head"
        if reason is None and unquantized and (patterns := skipped_by(name, user_skips)):
            reason, attribute = "skip_user", "skip modules"
        if reason is None and unquantized:
            for list_source, list_attribute, entries in skip_lists:
                patterns = skipped_by(name, entries)
                if patterns:
                    reason, source, attribute = "skip_method", list_source, list_attribute
                    break
        if reason is None and unquantized:
            reason, patterns = ("not_converted", []) if linear else ("not_linear", [])
            source = "" if linear else type(module).__name__
        if reason is None:
            reason, patterns = "wider", []
        dtype = str((wide or list(params.values()))[0].dtype).removeprefix("torch.")
        group = groups.setdefault((reason, source, attribute, dtype),
                                  KeptGroup(reason, dtype, source=source, attribute=attribute))
        group.modules += 1
        group.parameters += sum(p.numel() for p in params.values())
        group.bytes += sum(tensor_bytes(p) for p in params.values())
        group.names.append(name)
        group.patterns += [p for p in patterns if p not in group.patterns]
    return sorted(groups.values(), key=lambda g: -g.bytes)


def examples(names: list[str], limit: int = EXAMPLES) -> str:
    """A few module names, layer numbers folded into ranges: 'encoder.block.{0-23}.layer.1.DenseReluDense.wo'."""
    folded: dict[str, list[list[int]]] = {}
    for name in names:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "{}", name)
        numbers = [int(n) for n in re.findall(r"(?<=\.)\d+(?=\.|$)", name)]
        slots = folded.setdefault(pattern, [[] for _ in numbers])
        for slot, number in zip(slots, numbers):
            if number not in slot:
                slot.append(number)
    parts = [pattern.format(*(_ranges(sorted(slot)) for slot in slots)) for pattern, slots in folded.items()]
    shown = ", ".join(parts[:limit])
    return shown + (f" (+{len(parts) - limit})" if len(parts) > limit else "")


def _ranges(numbers: list[int]) -> str:
    """{0-23}, {0, 1}, 5."""
    if len(numbers) == 1:
        return str(numbers[0])
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and number == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    text = [str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in runs]
    return "{" + ", ".join(text) + "}"


def _count(n: int) -> str:
    """201M, 32.8K, 512."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _size(n: int) -> str:
    """768 MiB, 128 KiB."""
    for size, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= size:
            value = n / size
            return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.3g} {unit}"
    return f"{n} B"


def kept_line(group: dict, method: str, language: str = "en") -> str:
    """One group as a line of the load report, in English or Korean (quant.ui_strings, `kept.*`)."""
    from .ui_strings import EN, KO

    words = KO if language == "ko" else EN
    reason = words[f"kept.{group['reason']}"].format(
        source=group["source"], attribute=group["attribute"], patterns=", ".join(group["patterns"]), method=method,
        dtype=group["dtype"], mode_dtype=group["mode_dtype"])
    modules = words["kept.module" if group["modules"] == 1 else "kept.modules"].format(n=group["modules"])
    return words["kept.line"].format(reason=reason, modules=modules, parameters=_count(group["parameters"]),
                                     size=_size(group["bytes"]), dtype=group["dtype"], examples=group["examples"])


def kept_label(mode: str, language: str = "en") -> str:
    from .ui_strings import EN, KO

    return (KO if language == "ko" else EN)["kept.label"].format(mode=mode)
