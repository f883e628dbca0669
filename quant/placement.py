"""Where a model's weights go: `device_map` and per-device `max_memory`, validated before anything is loaded."""

from __future__ import annotations

import json
import re

import torch
from accelerate.utils import convert_file_size_to_int

from .errors import PlacementError

TENSOR_PARALLEL = "tensor_parallel"
DEVICE_MAP_CHOICES = ("auto", "balanced", "balanced_low_0", "sequential", "cpu", "cuda", TENSOR_PARALLEL)
"""`auto`/`balanced`/`balanced_low_0`/`sequential` are accelerate's strategies; `cpu`, `cuda` or `cuda:N` put the
whole model on one device; `tensor_parallel` shards every layer over all GPUs (transformers' tp_plan,
quant.tensor_parallel), one process per GPU."""
STRATEGY_CHOICES = DEVICE_MAP_CHOICES[:4]
"""The choices that spread a model over devices."""

_SINGLE_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|\d+)$")


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_max_memory(spec: str | dict | None, *, gpus_present: bool = True) -> dict[int | str, str] | None:
    """Parse per-device memory limits, as accelerate takes them.

    Accepts `0=20GiB, 1=20GiB, cpu=30GiB`, the JSON `{"0": "20GiB", "cpu": "30GiB"}` or a dict. GPU keys become
    ints. Sizes are checked with accelerate's own parser; GPU indices against the GPUs that are really there, unless
    `gpus_present` is False (the memory planner plans for GPUs this machine does not have).
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PlacementError(f"max_memory is not valid JSON ({exc.msg}).", _MAX_MEMORY_HINT) from None
            if not isinstance(items, dict):
                raise PlacementError("max_memory JSON must be an object of device: size.", _MAX_MEMORY_HINT)
        else:
            items = {}
            for part in filter(None, (p.strip() for p in re.split(r"[,\n]", text))):
                key, sep, value = part.partition("=") if "=" in part else part.partition(":")
                if not sep or not key.strip() or not value.strip():
                    raise PlacementError(f"Cannot read {part!r} in max_memory.", _MAX_MEMORY_HINT)
                items[key.strip().strip("'\"")] = value.strip().strip("'\"")
    else:
        items = dict(spec)
    if not items:
        return None

    gpus = cuda_device_count()
    parsed: dict[int | str, str] = {}
    for raw_key, raw_size in items.items():
        size = str(raw_size).strip().replace(" ", "")
        try:
            if convert_file_size_to_int(size) <= 0:
                raise ValueError
        except (ValueError, TypeError, AttributeError):
            raise PlacementError(f"{raw_size!r} is not a memory size (device {raw_key}).", _MAX_MEMORY_HINT) from None
        key = str(raw_key).strip().lower()
        if key.isdigit():
            device: int | str = int(key)
            if gpus_present and device >= gpus:
                have = f"GPUs 0..{gpus - 1}" if gpus else "no GPU"
                raise PlacementError(f"max_memory names GPU {device}, but this machine has {have}.", _MAX_MEMORY_HINT)
        elif key in {"cpu", "disk", "mps"}:
            device = key
        else:
            raise PlacementError(f"Unknown device {raw_key!r} in max_memory.", _MAX_MEMORY_HINT)
        parsed[device] = size
    return parsed


_MAX_MEMORY_HINT = 'Write it as "0=20GiB, cpu=30GiB" (GPU index or cpu = size in GiB/MiB/GB/MB).'


def tensor_parallel_ranks() -> int:
    """The ranks device_map=tensor_parallel shards over here: one per GPU, or on a machine without a GPU the
    operator's QUANT_TENSOR_PARALLEL_CPU_RANKS (0 unless set)."""
    from .settings import load_settings

    return cuda_device_count() or load_settings().tensor_parallel_cpu_ranks


def parse_device_map(spec: str | None) -> str | dict[str, str]:
    """Validate a device_map choice; a single device becomes `{"": device}` so every module goes there."""
    text = (spec or "auto").strip().lower()
    if text in STRATEGY_CHOICES or text == TENSOR_PARALLEL:
        return text
    if not _SINGLE_DEVICE.match(text):
        raise PlacementError(
            f"Unknown device_map {spec!r}.", f"Use one of {', '.join(DEVICE_MAP_CHOICES)} or cuda:N."
        )
    if text.isdigit():
        text = f"cuda:{text}"
    if text.startswith("cuda"):
        index = int(text.partition(":")[2] or 0)
        if index >= cuda_device_count():
            raise PlacementError(
                f"device_map {spec!r} asks for a GPU, but {'there is none' if not cuda_device_count() else 'it does not exist'}.",
                "Use cpu, or auto to let accelerate place the model.",
            )
    return {"": text}


def target_is_cuda(device_map: str | dict[str, str]) -> bool:
    """Whether the weights will live (at least partly) on a GPU."""
    if isinstance(device_map, dict):
        return any(str(d).startswith("cuda") or str(d).isdigit() for d in device_map.values())
    return cuda_device_count() > 0


class WeightBytes:
    """Bytes each parameter will take, answered the way transformers' device-map planner asks a quantizer
    (`HfQuantizer.param_element_size`, read in transformers/integrations/accelerate.py: `compute_module_sizes`):
    `per_weight` for the weights a method quantizes, `rest` for every other parameter and buffer. So the planner
    places modules by the method's own bytes per weight (0.53 for nf4, 1.001 for torchao int8...), which no torch
    dtype can express."""

    def __init__(self, quantized: frozenset[str], per_weight: float, rest: float) -> None:
        self.quantized, self.per_weight, self.rest = quantized, per_weight, rest

    def param_element_size(self, model: torch.nn.Module, name: str, param: torch.Tensor) -> float:
        return self.per_weight if name in self.quantized else self.rest


def plan_placement(skeleton: torch.nn.Module, strategy: str, max_memory: dict[int | str, int | str],
                   sizes: WeightBytes) -> dict[str, int | str]:
    """Where transformers would put each module for `strategy` within `max_memory` (the model on the meta device),
    as `from_pretrained(device_map=strategy)` computes it (`transformers.integrations.accelerate._get_device_map`).

    "sequential" fills the devices in order; "balanced"/"auto" first spread the budget evenly over the GPUs
    (`get_balanced_memory`), "balanced_low_0" keeps GPU 0 light for generation's work. What does not fit anywhere
    is mapped to "disk".
    """
    import logging

    from transformers.integrations.accelerate import get_balanced_memory, infer_auto_device_map

    no_split = getattr(skeleton, "_no_split_modules", None) or []
    quiet = logging.Filter("a name no logger has")  # "Device N is not available": planning for GPUs not here
    accelerate_log = logging.getLogger("accelerate.utils.modeling")
    accelerate_log.addFilter(quiet)
    try:
        budget = dict(max_memory)
        if strategy != "sequential":
            budget = get_balanced_memory(skeleton, max_memory=dict(max_memory), no_split_module_classes=no_split,
                                         hf_quantizer=sizes, low_zero=strategy == "balanced_low_0")
        return dict(infer_auto_device_map(skeleton, max_memory=budget, no_split_module_classes=no_split,
                                          hf_quantizer=sizes))
    finally:
        accelerate_log.removeFilter(quiet)


def check_fits(max_memory: dict[int | str, str] | None, needed_bytes: int) -> None:
    """Refuse before loading when the weights cannot fit in all of max_memory together."""
    if not max_memory or not needed_bytes:
        return
    total = sum(convert_file_size_to_int(v) for k, v in max_memory.items() if k != "disk")
    if total < needed_bytes:
        raise PlacementError(
            f"The model needs about {needed_bytes / 2**20:,.0f} MiB in this mode and max_memory allows "
            f"{total / 2**20:,.0f} MiB in all.",
            "Raise max_memory (add cpu=<size> to offload), or pick a smaller mode such as nf4.")
