"""Resolve what the user typed (a Hub id, a local folder or a shipped demo model) into a checkpoint we can load.

Everything here reads only the config: the model kind (causal or seq2seq), the architecture and any quantization
the checkpoint already carries are known before a single weight is loaded, so refusals come early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import AutoConfig, PretrainedConfig

from .access import LocalFolders, cli_folders
from .errors import ModelSourceError

DEMO_PREFIX = "demo:"
DEMO_DIR = Path(__file__).resolve().parent / "demo_models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

ModelKind = Literal["causal", "seq2seq"]

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_SEQ2SEQ_SUFFIXES = ("ForConditionalGeneration",)


def demo_models() -> list[str]:
    """The demo models that ship with the package, as `demo:<name>` references."""
    return sorted(f"{DEMO_PREFIX}{p.name}" for p in DEMO_DIR.iterdir() if (p / "config.json").is_file())


@dataclass
class ModelSource:
    """A resolved checkpoint: where it is, what it is, and what quantization it already has."""

    ref: str
    """What the user typed."""
    location: str
    """A local folder or a Hub repo id: what `from_pretrained` receives."""
    is_local: bool
    revision: str | None
    config: PretrainedConfig = field(repr=False)
    kind: ModelKind
    architecture: str
    checkpoint_quantization: dict | None
    """The `quantization_config` the checkpoint was saved with (GPTQ, bitsandbytes...), or None."""

    @property
    def checkpoint_quant_method(self) -> str | None:
        return (self.checkpoint_quantization or {}).get("quant_method")

    @property
    def name(self) -> str:
        return self.ref.removeprefix(DEMO_PREFIX) if self.ref.startswith(DEMO_PREFIX) else self.ref.rstrip("/")


MAX_REFERENCE_CHARS = 1000
"""Longer than any Hub id (96 + 1 + 96) or sensible path: refused before it reaches the file system or the Hub."""


def _not_allowed(ref: str, folders: LocalFolders) -> ModelSourceError:
    """The one refusal for every path a visitor may not read, whether or not it exists, so that the message tells
    nothing about the server's disk."""
    where = (f"local models must be under {folders.root}" if folders.root is not None
             else "this server loads no local folders")
    return ModelSourceError(f"{ref[:100]!r} is not a model this server can load: {where}.",
                            f"Give a Hub id such as Qwen/Qwen2.5-0.5B-Instruct or a demo model "
                            f"({', '.join(demo_models())}).")


def _inside_root(path: Path, folders: LocalFolders, ref: str) -> Path:
    """The real path of `path` (symlinks followed) if it lies under the root; refuse `..` tricks and links out."""
    root = folders.root
    candidate = (root / path) if not path.is_absolute() else path
    real = candidate.resolve()
    if real != root and root not in real.parents:
        raise _not_allowed(ref, folders)
    return real


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or "\\" in ref or ref in (".", "..")


def resolve_location(ref: str, folders: LocalFolders | None = None) -> tuple[str, bool]:
    """Map a reference to (location, is_local) without touching the network. `folders` says which local folders it
    may name (default: the CLI's, `access.cli_folders`)."""
    ref = ref.strip()
    if not ref:
        raise ModelSourceError("No model given.", "Type a Hub id such as Qwen/Qwen2.5-0.5B-Instruct or a local folder.")
    if len(ref) > MAX_REFERENCE_CHARS:
        raise ModelSourceError(f"The model reference is {len(ref):,} characters long; the limit is "
                               f"{MAX_REFERENCE_CHARS:,}.", "Give a Hub id such as org/model or a folder.")
    if ref.startswith(DEMO_PREFIX):
        # Only the shipped names: `demo:/abs/path` or `demo:../..` would otherwise reach any folder on the server,
        # past QUANT_LOCAL_MODELS_ROOT.
        if ref not in demo_models():
            raise ModelSourceError(f"There is no demo model {ref[:100]!r}.",
                                   f"Demo models: {', '.join(demo_models())}.")
        return str(DEMO_DIR / ref.removeprefix(DEMO_PREFIX)), True
    folders = folders or cli_folders()
    if not folders.allowed:
        if _looks_like_path(ref) or not _HUB_ID.match(ref):
            raise _not_allowed(ref, folders)
        return ref, False  # a Hub id: a folder of that name under the server's working folder is never read
    path = Path(ref).expanduser()
    if folders.root is not None:
        candidate = path if path.is_absolute() else folders.root / path
        if candidate.exists() or _looks_like_path(ref):
            path = _inside_root(path, folders, ref)
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{ref} is a file, not a model folder.", "Give the folder that holds config.json.")
        if not (path / "config.json").is_file():
            raise ModelSourceError(
                f"The folder {ref} has no config.json, so it is not a saved transformers model.",
                "Give the folder that `save_pretrained` wrote (config.json, weights, tokenizer).",
            )
        return str(path.resolve()), True
    if _looks_like_path(ref) or not _HUB_ID.match(ref):
        raise ModelSourceError(f"No such folder: {ref}.", "Check the path, or give a Hub id such as org/model.")
    return ref, False


def _detect_kind(config: PretrainedConfig, ref: str) -> tuple[ModelKind, str]:
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        generative = [a for a in architectures if a.endswith(_SEQ2SEQ_SUFFIXES)]
        if architectures and not generative:
            raise ModelSourceError(
                f"{ref} is an encoder-decoder model without a generation head ({', '.join(architectures)}).",
                "Pick a ...ForConditionalGeneration checkpoint (T5, BART...).",
            )
        return "seq2seq", (generative or [type(config).__name__])[0]
    generative = [a for a in architectures if a.endswith(_CAUSAL_SUFFIXES)]
    if generative:
        return "causal", generative[0]
    if architectures:
        raise ModelSourceError(
            f"{ref} is not a text-generation model: it is a {', '.join(architectures)}.",
            "This tool loads causal LMs (…ForCausalLM) and seq2seq models (T5, BART).",
        )
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "causal", MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
    raise ModelSourceError(
        f"{ref} is not a model type that generates text.",
        "This tool loads causal LMs and seq2seq models (T5, BART).",
    )


def _hub_error(ref: str, revision: str | None, exc: BaseException) -> ModelSourceError:
    cause = exc if isinstance(exc, HfHubHTTPError) else (exc.__cause__ or exc)  # transformers wraps hub errors
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if isinstance(cause, GatedRepoError):
        who = "this token has no access to it" if status == 403 else "it needs the token of an account with access"
        return ModelSourceError(
            f"{ref} is a gated repository: {who}.",
            "Accept its licence on the Hub, then give a token of that account (HF_TOKEN or the token field).",
        )
    if isinstance(cause, HfHubHTTPError) and status == 401 and not isinstance(cause, RepositoryNotFoundError):
        # The Hub's answer to a token it does not know (mistyped, revoked); transformers words it "connection error".
        return ModelSourceError(
            f"The Hub rejected the token given for {ref} (401): it is mistyped, expired or revoked.",
            "Give a valid token, or none for a public model.",
        )
    if isinstance(cause, RepositoryNotFoundError):
        return ModelSourceError(
            f"{ref} was not found on the Hub (or it is private).", "Check the id; a private repo needs a token."
        )
    if isinstance(cause, RevisionNotFoundError):
        return ModelSourceError(f"{ref} has no revision {revision!r}.", "Give a branch, tag or commit that exists.")
    if isinstance(cause, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError)) or (
        "couldn't connect" in str(exc).lower()
    ):
        return ModelSourceError(
            f"The Hub cannot be reached to fetch {ref}, and it is not in the local cache.",
            f"Use a local folder or a demo model ({', '.join(demo_models())}).",
        )
    if isinstance(cause, HFValidationError):
        return ModelSourceError(f"{ref!r} is not a valid Hub repo id.", "A Hub id looks like org/model.")
    return ModelSourceError(f"Cannot read the config of {ref}: {str(exc).splitlines()[0]}")


def resolve_source(
    ref: str, *, revision: str | None = None, token: str | None = None, trust_remote_code: bool = False,
    folders: LocalFolders | None = None,
) -> ModelSource:
    """Resolve a model reference and read its config; raise ModelSourceError with a clear message otherwise."""
    location, is_local = resolve_location(ref, folders)
    try:
        config = AutoConfig.from_pretrained(
            location, revision=None if is_local else revision, token=token, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text or "custom code" in text:
            raise ModelSourceError(
                f"{ref} ships its own modelling code, and running remote code is off on this server.",
                "The operator can allow it with QUANT_TRUST_REMOTE_CODE=1 after reading that code.",
            ) from None
        raise ModelSourceError(f"Cannot read the config of {ref}: {text.splitlines()[0]}") from None
    except OSError as exc:
        if is_local:
            raise ModelSourceError(f"Cannot read the config in {ref}: {str(exc).splitlines()[0]}") from None
        raise _hub_error(ref, revision, exc) from None
    kind, architecture = _detect_kind(config, ref)
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None and not isinstance(quantization, dict):
        quantization = quantization.to_dict()
    return ModelSource(
        ref=ref.strip(),
        location=location,
        is_local=is_local,
        revision=None if is_local else revision,
        config=config,
        kind=kind,
        architecture=architecture,
        checkpoint_quantization=quantization,
    )


def check_hub_access(ref: str, revision: str | None, token: str | bool | None) -> bool:
    """Ask the Hub now whether `token` may read the repo `ref` (False: no token at all; None: the implicit one).

    Loading is no such check: when the Hub refuses a gated or private file (401/403), huggingface_hub serves the
    copy already in the local cache, so on a shared server a model one visitor's token fetched would load for anyone.
    Returns False when the Hub cannot be asked (offline, unreachable): then nothing is known either way. Raises
    ModelSourceError when the Hub refuses.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        get_hf_file_metadata(hf_hub_url(ref, "config.json", revision=revision), token=token, timeout=10)
    except (OfflineModeIsEnabled, ConnectionError, TimeoutError):
        return False
    except HfHubHTTPError as exc:
        raise _hub_error(ref, revision, exc) from None
    except Exception as exc:  # noqa: BLE001 - httpx's connection errors are not ConnectionError subclasses
        if "connect" in type(exc).__name__.lower() or "timeout" in type(exc).__name__.lower():
            return False
        raise _hub_error(ref, revision, exc) from None
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (False at once when offline mode is on)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    import httpx

    try:
        httpx.head(f"{constants.ENDPOINT}/api/models", timeout=timeout)
    except httpx.HTTPError:
        return False
    return True
