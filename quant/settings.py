"""Operator settings, read from environment variables (documented in README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_HUB_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    default_model: str
    """QUANT_DEFAULT_MODEL: the model the app proposes first (a Hub id, a local folder or `demo:<name>`)."""
    trust_remote_code: bool
    """QUANT_TRUST_REMOTE_CODE=1: allow checkpoints that ship their own modelling code. Off unless the operator says so."""
    memory_budget: str | None
    """QUANT_MEMORY_BUDGET (e.g. "16GiB"): the most that all loaded models together may take; LRU idle ones are evicted."""
    max_loaded_models: int
    """QUANT_MAX_LOADED_MODELS: how many models stay loaded at once (default 3)."""


def load_settings() -> Settings:
    return Settings(
        default_model=os.environ.get("QUANT_DEFAULT_MODEL", DEFAULT_HUB_MODEL),
        trust_remote_code=_flag("QUANT_TRUST_REMOTE_CODE"),
        memory_budget=os.environ.get("QUANT_MEMORY_BUDGET") or None,
        max_loaded_models=int(os.environ.get("QUANT_MAX_LOADED_MODELS", "3")),
    )
