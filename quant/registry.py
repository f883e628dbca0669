"""The one owner of loaded models in the process.

Several browser sessions (and the CLI) share one process and its memory. They hold keys, not models; a model is
used through a lease (`with registry.use(key) as loaded:`), so a model in use is never freed under a user. When a
new load needs room, the least recently used idle model goes first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import psutil
import torch
from accelerate import init_empty_weights
from accelerate.utils import convert_file_size_to_int
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from .errors import ModelBusyError, ModelNotLoadedError, PlacementError
from .loader import LoadedModel, LoadRequest, ProgressFn, load_model, prepare, release_memory
from .modes import Mode
from .placement import check_fits
from .report import MiB, LoadReport
from .settings import load_settings
from .source import ModelSource

_BYTES_PER_WEIGHT = {Mode.FP32: 4.0, Mode.INT8: 1.0, Mode.NF4: 0.53, Mode.FP4: 0.53}


def estimate_footprint(source: ModelSource, mode: Mode) -> int:
    """Bytes the weights will take in `mode`, from the config alone (the model is built on the meta device).

    Linear layers inside the blocks are quantized; embeddings, norms and the output head stay in 16 bits.
    """
    model_class = AutoModelForSeq2SeqLM if source.kind == "seq2seq" else AutoModelForCausalLM
    try:
        with init_empty_weights():
            skeleton = model_class.from_config(source.config)
    except Exception:  # noqa: BLE001 - an estimate must never block a load; fall back to "unknown"
        return 0
    out_head = skeleton.get_output_embeddings()
    quantized = sum(
        m.weight.numel() for m in skeleton.modules() if isinstance(m, torch.nn.Linear) and m is not out_head
    )
    total = sum(p.numel() for p in skeleton.parameters())
    if mode is Mode.GPTQ:
        per_weight = (source.checkpoint_quantization or {}).get("bits", 4) / 8 + 0.02
    else:
        per_weight = _BYTES_PER_WEIGHT.get(mode, 2.0)
    rest_bytes = 4.0 if mode is Mode.FP32 else 2.0
    return int(quantized * per_weight + (total - quantized) * rest_bytes)


@dataclass
class _Entry:
    loaded: LoadedModel
    estimate: int
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ModelRegistry:
    """Loads, lends, evicts and unloads models. Thread-safe; one load runs at a time (loads are memory peaks)."""

    def __init__(self, *, max_models: int | None = None, memory_budget: int | str | None = None) -> None:
        settings = load_settings()
        self.max_models = max_models or settings.max_loaded_models
        budget = memory_budget if memory_budget is not None else settings.memory_budget
        self.memory_budget = convert_file_size_to_int(budget) if budget else None
        self._state = threading.Condition()
        self._load_lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._history: list[LoadReport] = []
        self.evicted: list[str] = []
        """Labels of models evicted to make room, newest last (shown to users)."""

    # --- loading -------------------------------------------------------------------------------------------------
    def load(self, request: LoadRequest, progress: ProgressFn | None = None) -> LoadedModel:
        """Return the model for `request`, loading it (and evicting idle models for room) if it is not loaded."""
        with self._load_lock:
            with self._state:
                entry = self._entries.get(request.key)
                if entry is not None:
                    entry.last_used = time.monotonic()
                    self._entries.move_to_end(request.key)
                    return entry.loaded
            prepared = prepare(request)
            estimate = estimate_footprint(prepared.source, request.mode)
            check_fits(prepared.kwargs.get("max_memory"), estimate)
            self._make_room(request, estimate)
            loaded = load_model(request, progress)
            with self._state:
                self._entries[loaded.key] = _Entry(loaded, estimate)
                self._history.append(loaded.report)
            return loaded

    def _make_room(self, request: LoadRequest, needed: int) -> None:
        while True:
            with self._state:
                held = sum(e.loaded.report.footprint_bytes for e in self._entries.values())
                over_count = len(self._entries) >= self.max_models
                over_budget = self.memory_budget is not None and held + needed > self.memory_budget
                short = needed > _free_memory(request) * 0.9
                if not (over_count or over_budget or short):
                    return
                idle = [k for k, e in self._entries.items() if e.leases == 0]
                if not idle:
                    if not self._entries and not over_budget:
                        raise PlacementError(
                            f"{request.label} needs about {needed / MiB:,.0f} MiB and only "
                            f"{_free_memory(request) / MiB:,.0f} MiB are free.",
                            "Pick a smaller mode (nf4) or a smaller model.",
                        )
                    busy = ", ".join(e.loaded.label for e in self._entries.values())
                    raise PlacementError(
                        f"Not enough room to load {request.label}: every loaded model is in use ({busy}).",
                        "Try again when a generation finishes, or pick a smaller mode.",
                    )
                victim_key = min(idle, key=lambda k: self._entries[k].last_used)
                victim = self._entries.pop(victim_key)
                self.evicted.append(victim.loaded.label)
            victim.loaded.path.close()
            del victim
            release_memory()

    # --- using ---------------------------------------------------------------------------------------------------
    @contextmanager
    def use(self, key: str) -> Iterator[LoadedModel]:
        """Lend a loaded model; it cannot be unloaded or evicted until the block ends."""
        with self._state:
            entry = self._entries.get(key)
            if entry is None:
                raise ModelNotLoadedError(
                    "That model is no longer loaded (it was unloaded, or evicted to make room).", "Load it again."
                )
            entry.leases += 1
            entry.last_used = time.monotonic()
        try:
            yield entry.loaded
        finally:
            with self._state:
                entry.leases -= 1
                entry.last_used = time.monotonic()
                self._state.notify_all()

    def unload(self, key: str) -> str:
        """Free a model now; refused while a generation uses it. Returns its label."""
        with self._state:
            entry = self._entries.get(key)
            if entry is None:
                raise ModelNotLoadedError("That model is not loaded.")
            if entry.leases:
                raise ModelBusyError(
                    f"{entry.loaded.label} is in use by {entry.leases} generation(s).",
                    "Unload it when they finish.",
                )
            del self._entries[key]
        label = entry.loaded.label
        entry.loaded.path.close()  # compiled graphs and static caches hold GPU memory of their own
        del entry
        release_memory()
        return label

    def unload_all(self) -> None:
        for key in list(self._entries):
            try:
                self.unload(key)
            except ModelBusyError:
                pass

    # --- looking -------------------------------------------------------------------------------------------------
    def get(self, key: str) -> LoadedModel:
        with self._state:
            if key not in self._entries:
                raise ModelNotLoadedError("That model is not loaded.", "Load it first.")
            return self._entries[key].loaded

    def loaded(self) -> list[LoadedModel]:
        """Loaded models, least recently used first."""
        with self._state:
            return [e.loaded for e in sorted(self._entries.values(), key=lambda e: e.last_used)]

    def in_use(self, key: str) -> int:
        with self._state:
            entry = self._entries.get(key)
            return entry.leases if entry else 0

    def history(self) -> list[LoadReport]:
        """Reports of every load in this process, oldest first, including models since unloaded."""
        with self._state:
            return list(self._history)


def _free_memory(request: LoadRequest) -> int:
    """Free memory where the weights will go: GPU memory (all GPUs) or, on the CPU, available RAM."""
    from .placement import parse_device_map, target_is_cuda

    if target_is_cuda(parse_device_map(request.device_map)):
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    return psutil.virtual_memory().available


_default: ModelRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ModelRegistry:
    """The process-wide registry that the app and the CLI share."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ModelRegistry()
        return _default
