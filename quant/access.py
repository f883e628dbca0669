"""Who may use what in one shared process: local folders, models loaded with a visitor's own token, outputs.

The CLI runs for the machine's own user: it may name any folder (or those under QUANT_LOCAL_MODELS_ROOT when the
operator set one). A served app is reached by visitors: it loads local folders only under a root the operator named,
keeps a model that a visitor loaded with their own token to that visitor, and writes each visitor's quantized
models into a folder of their own. The UI decides who a visitor is (a signed-in user, else a browser session);
this module only says what follows from it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalFolders:
    """Which local folders a model reference may name."""

    allowed: bool = True
    root: Path | None = None
    """With `allowed`: only folders under it (symlinks followed); None: any folder."""


ANY_FOLDER = LocalFolders()
"""Any folder: the CLI, and paths the code made itself (a download in the HF cache, a quantized output)."""
NO_FOLDER = LocalFolders(allowed=False)
"""Only Hub ids and the shipped demo models."""


def local_models_root() -> Path | None:
    """QUANT_LOCAL_MODELS_ROOT: the only folder tree local models may be loaded from (CLI and app alike)."""
    value = os.environ.get("QUANT_LOCAL_MODELS_ROOT", "").strip()
    return Path(value).expanduser().resolve() if value else None


def cli_folders() -> LocalFolders:
    """The machine's own user: any folder, or those under QUANT_LOCAL_MODELS_ROOT when it is set."""
    root = local_models_root()
    return LocalFolders(root=root) if root else ANY_FOLDER


def served_folders() -> LocalFolders:
    """Visitors of a served app: folders under QUANT_LOCAL_MODELS_ROOT, none when it is unset (the default: a
    visitor must not read the server's disk)."""
    root = local_models_root()
    return LocalFolders(root=root) if root else NO_FOLDER


def visitor_folder_name(visitor: str) -> str:
    """A visitor's own folder name under the output folder: a digest, so no visitor id (a user name, a session)
    becomes a path or is shown in one."""
    return "v-" + hashlib.sha256(visitor.encode()).hexdigest()[:16]
