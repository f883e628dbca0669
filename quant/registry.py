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
from dataclasses import dataclass, field, replace
from typing import Iterator

import psutil
import torch
from accelerate.utils import convert_file_size_to_int

from .errors import ModelBusyError, ModelNotLoadedError, PlacementError, QuantError
from .loader import (
    LoadedModel,
    LoadRequest,
    Prepared,
    ProgressFn,
    attach_generation_path,
    load_weights,
    prepare,
    release_memory,
)
from .methods import Mode, method_of
from .placement import STRATEGY_CHOICES, check_fits
from .planner import footprint, meta_skeleton, refuse_unplaceable, weight_bytes
from .report import MiB, LoadReport
from .settings import load_settings
from .source import ModelSource, check_hub_access

def estimate_footprint(source: ModelSource, mode: Mode | str, quantization_config=None) -> int:
    """Bytes the weights will take in `mode`, from the config alone (the model is built on the meta device).

    Linear layers inside the blocks are quantized; embeddings, norms and the output head stay in 16 bits.
    `quantization_config`: the config the load passes to `from_pretrained`, for a method that quantizes at load
    time (its options, a group size say, set the bytes per weight); a quantized checkpoint's own config comes first.
    quant.planner places the same bytes per device.
    """
    try:
        skeleton = meta_skeleton(source)
    except Exception:  # noqa: BLE001 - an estimate must never block a load; fall back to "unknown"
        return 0
    return footprint(skeleton, weight_bytes(source, method_of(mode), skeleton, quantization_config))


@dataclass
class _Entry:
    loaded: LoadedModel
    estimate: int
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def owner(self) -> str | None:
        """The visitor this model belongs to (loaded with their token, not readable without one), or None: shared."""
        return self.loaded.request.owner

    def visible_to(self, visitor: str | None) -> bool:
        """`visitor` None is the process's own user (the CLI, tests): it sees every model."""
        return visitor is None or self.owner is None or self.owner == visitor


def _check_access(prepared: Prepared, request: LoadRequest) -> bool:
    """Check with the Hub that the requester may read the model (every load, also of a model in memory: cached files
    are no proof), and return whether it needs their token (gated or private): then it is the requester's alone.
    A public model loaded with a token is shared like any other (memory is scarce). Local folders were checked
    against the folder rule when the request was prepared."""
    if prepared.source.is_local:
        return False
    check_hub_access(prepared.source.location, prepared.source.revision, request.token)
    if not request.token:
        return False
    try:
        asked = check_hub_access(prepared.source.location, prepared.source.revision, False)
    except QuantError:
        return True
    return not asked  # when the Hub cannot be asked, a load made with a token stays its requester's


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
        self._history: list[tuple[str | None, LoadReport]] = []
        """(who asked, the report) per load."""
        self.evicted: list[str] = []
        """Labels of models evicted to make room, newest last (shown to users)."""

    # --- loading -------------------------------------------------------------------------------------------------
    def load(self, request: LoadRequest, progress: ProgressFn | None = None) -> LoadedModel:
        """Return the model for `request`, loading it (and evicting idle models for room) if it is not loaded.

        The source is resolved with the requester's own token (and folder rule) every time, also when the model is
        loaded already: that is the access check. A model only readable with that token is kept for the request's
        owner (its key carries the owner); others get their own copy after their own check, or are refused.
        """
        requester = request.owner
        with self._load_lock:
            prepared = prepare(request)
            request = replace(request, owner=requester if _check_access(prepared, request) else None)
            with self._state:
                entry = self._entries.get(request.key)
                if entry is not None:
                    entry.last_used = time.monotonic()
                    self._entries.move_to_end(request.key)
                    self._history.append((requester, entry.loaded.report))  # served from memory, still this ask
                    return entry.loaded
            estimate = estimate_footprint(prepared.source, request.mode, prepared.kwargs.get("quantization_config"))
            device_map, max_memory = prepared.kwargs["device_map"], prepared.kwargs.get("max_memory")
            spread = isinstance(device_map, str) and device_map in STRATEGY_CHOICES
            check_fits(max_memory, estimate)
            if spread and max_memory:  # per device, before anything is evicted for a load that cannot happen
                refuse_unplaceable(prepared.source, request.mode.value, prepared.kwargs.get("quantization_config"),
                                   device_map, max_memory)
            self._make_room(request, estimate)
            if spread and not max_memory:  # per device, within what is free once idle models made room
                refuse_unplaceable(prepared.source, request.mode.value, prepared.kwargs.get("quantization_config"),
                                   device_map, None)
            loaded = attach_generation_path(load_weights(request, progress, prepared=prepared), progress)
            with self._state:
                self._entries[loaded.key] = _Entry(loaded, estimate)
                self._history.append((requester, loaded.report))
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
            victim.loaded.close()
            del victim
            release_memory()

    # --- using ---------------------------------------------------------------------------------------------------
    def _entry(self, key: str, visitor: str | None) -> _Entry | None:
        """The entry under `key` if `visitor` may see it (call with the state lock held). Another visitor's model
        is answered as not loaded: nothing tells that it exists."""
        entry = self._entries.get(key)
        return entry if entry is not None and entry.visible_to(visitor) else None

    @contextmanager
    def use(self, key: str, visitor: str | None = None) -> Iterator[LoadedModel]:
        """Lend a loaded model; it cannot be unloaded or evicted until the block ends."""
        with self._state:
            entry = self._entry(key, visitor)
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

    def unload(self, key: str, visitor: str | None = None) -> str:
        """Free a model now; refused while a generation uses it. Returns its label."""
        with self._state:
            entry = self._entry(key, visitor)
            if entry is None:
                raise ModelNotLoadedError("That model is not loaded.")
            if entry.leases:
                raise ModelBusyError(
                    f"{entry.loaded.label} is in use by {entry.leases} generation(s).",
                    "Unload it when they finish.",
                )
            del self._entries[key]
        label = entry.loaded.label
        entry.loaded.close()  # compiled graphs and static caches hold GPU memory of their own
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
    def get(self, key: str, visitor: str | None = None) -> LoadedModel:
        with self._state:
            entry = self._entry(key, visitor)
            if entry is None:
                raise ModelNotLoadedError("That model is not loaded.", "Load it first.")
            return entry.loaded

    def loaded(self, visitor: str | None = None) -> list[LoadedModel]:
        """Loaded models `visitor` may use (None: all), least recently used first."""
        with self._state:
            return [e.loaded for e in sorted(self._entries.values(), key=lambda e: e.last_used)
                    if e.visible_to(visitor)]

    def in_use(self, key: str) -> int:
        with self._state:
            entry = self._entries.get(key)
            return entry.leases if entry else 0

    def history(self, visitor: str | None = None) -> list[LoadReport]:
        """Reports of the loads `visitor` asked for in this process (None: everyone's), oldest first, including
        models since unloaded and loads served by a model already in memory."""
        with self._state:
            return [report for requester, report in self._history if visitor is None or requester == visitor]


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
