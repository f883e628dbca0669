"""Resolve what the user typed (a Hub id, a local folder or a shipped demo model) into a checkpoint we can load.

Everything here reads only the config: the model kind (causal or seq2seq), the architecture and any quantization
the checkpoint already carries are known before a single weight is loaded, so refusals come early.
"""

from __future__ import annotations

import os
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


def local_models_root() -> Path | None:
    """QUANT_LOCAL_MODELS_ROOT: on a public deployment, the only folder tree local models may be loaded from."""
    value = os.environ.get("QUANT_LOCAL_MODELS_ROOT", "").strip()
    return Path(value).expanduser().resolve() if value else None


def _inside_root(path: Path, root: Path, ref: str) -> Path:
    """The real path of `path` (symlinks followed) if it lies under `root`; refuse `..` tricks and links out."""
    candidate = (root / path) if not path.is_absolute() else path
    real = candidate.resolve()
    if real != root and root not in real.parents:
        raise ModelSourceError(f"{ref} is outside the folder this server loads local models from.",
                               f"Local models must be under {root}; give a Hub id otherwise.")
    return real


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref.count("/") > 1 or "\\" in ref


def resolve_location(ref: str) -> tuple[str, bool]:
    """Map a reference to (location, is_local) without touching the network."""
    ref = ref.strip()
    if not ref:
        raise ModelSourceError("No model given.", "Type a Hub id such as Qwen/Qwen2.5-0.5B-Instruct or a local folder.")
    if ref.startswith(DEMO_PREFIX):
        # Only the shipped names: `demo:/abs/path` or `demo:../..` would otherwise reach any folder on the server,
        # past QUANT_LOCAL_MODELS_ROOT.
        if ref not in demo_models():
            raise ModelSourceError(f"There is no demo model {ref!r}.", f"Demo models: {', '.join(demo_models())}.")
        return str(DEMO_DIR / ref.removeprefix(DEMO_PREFIX)), True
    path = Path(ref).expanduser()
    root = local_models_root()
    if root is not None and (path.exists() or _looks_like_path(ref)):
        path = _inside_root(path, root, ref)
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
        f"{ref} ({config.model_type}) is not a model type that generates text.",
        "This tool loads causal LMs and seq2seq models (T5, BART).",
    )


def _hub_error(ref: str, revision: str | None, exc: BaseException) -> ModelSourceError:
    cause = exc.__cause__ or exc
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
    ref: str, *, revision: str | None = None, token: str | None = None, trust_remote_code: bool = False
) -> ModelSource:
    """Resolve a model reference and read its config; raise ModelSourceError with a clear message otherwise."""
    location, is_local = resolve_location(ref)
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
