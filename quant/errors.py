"""Errors that reach users: each says what went wrong and, where there is one, what would work instead.

The UI shows them with `gr.Error`, the CLI prints them on stderr and exits 2; neither shows a traceback.
"""

from __future__ import annotations


class QuantError(Exception):
    """An error the user can act on. `hint` says what would work."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ModelSourceError(QuantError):
    """The model reference cannot be resolved: missing folder, unknown or gated repo, not a text model..."""


class UnsupportedModeError(QuantError):
    """The requested mode cannot run here or with this checkpoint; refused before any weight is loaded."""


class PlacementError(QuantError):
    """An invalid `device_map` / `max_memory`, or a model that does not fit where it was asked to go."""


class ModelBusyError(QuantError):
    """A loaded model is in use by a generation and cannot be unloaded right now."""


class ModelNotLoadedError(QuantError):
    """A model key that the registry does not hold (never loaded, or already unloaded or evicted)."""
