"""Publishing a quantized folder to the Hugging Face Hub: model card, repo checks, one-commit upload.

The token is used for the calls of one push and goes nowhere else: not into logs, files, the card or errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from huggingface_hub import HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

from .errors import QuantError
from .gptq import layer_error_summary
from .methods import METHODS
from .quality import THRESHOLDS_TEXT

ProgressFn = Callable[[float, str], None]


class PushError(QuantError):
    """A push that did not happen; the local folder is untouched and the push can be retried."""


CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_name }}

This is **{{ base_model }}** quantized with **{{ method }}** by the Quantization Playground.

## Quantization

| setting | value |
|---|---|
{% for key, value in recipe.items() -%}
| {{ key }} | {{ value }} |
{% endfor %}
Calibration data: {{ calibration }}.
{% if layer_errors %}
Quantization error per module (gptqmodel's loss, in `quantization_report.json`): {{ layer_errors }}.
{% endif %}
## Measured

| | size on disk (MiB) | perplexity |
|---|---|---|
{% for row in rows -%}
| {{ row[0] }} | {{ row[1] }} | {{ row[2] }} |
{% endfor %}
Perplexity on {{ eval_text }}. Quantization took {{ seconds }} s.
{% if quality %}
### Next-token quality against the original

Against {{ quality.reference }} on the same {{ quality.positions }} token positions (windows of {{ quality.window }}
tokens, stride {{ quality.stride }}): **{{ quality.verdict }}**.

| perplexity ratio | KL mean | KL p99 | top-1 agreement | Δp mean | Δp p1 |
|---|---|---|---|---|---|
| {{ quality.ratio }} | {{ quality.kl_mean }} | {{ quality.kl_p99 }} | {{ quality.top1 }} | {{ quality.dp_mean }} | {{ quality.dp_p1 }} |

KL = KL(original ‖ quantized) of the next-token distributions (nats); top-1 agreement: positions where both pick
the same most likely token; Δp: p_quantized(next) − p_original(next) of the text's actual next token (p1: 1st
percentile). Verdict thresholds: {{ thresholds }}.
{% endif %}
{% for warning in warnings -%}
> **Warning:** {{ warning }}
{% endfor %}

## Use it with transformers

```python
from transformers import {{ model_class }}, AutoTokenizer

model_id = "{{ repo_id }}"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = {{ model_class }}.from_pretrained(model_id, device_map="auto"{{ extra_kwargs }})
```
{{ requirements }}

## Library versions

{% for name, version in versions.items() -%}
- {{ name }} {{ version }}
{% endfor %}
"""


def _recipe_rows(result) -> dict:
    keep = ("bits", "group_size", "desc_act", "sym", "zero_point", "version", "damp_percent", "num_samples", "seq_len",
            "load_in_8bit",
            "load_in_4bit", "llm_int8_threshold", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
            "bnb_4bit_compute_dtype", "torchao_config", "int4_packing_format", "granularity", "weight_dtype",
            "activation_dtype")
    return {k: v for k, v in result.recipe.items() if k in keep}


def _quality_cells(quality: dict | None) -> dict | None:
    """The card's formatted next-token quality numbers (QuantizeResult.quality)."""
    if not quality:
        return None
    ratio = quality.get("perplexity_ratio")
    return {**quality, "ratio": f"{ratio:.4f}" if ratio is not None else "n/a",
            "kl_mean": f"{quality['kl_mean']:.5f}", "kl_p99": f"{quality['kl_p99']:.5f}",
            "top1": f"{quality['top1_agreement']:.2f}%", "dp_mean": f"{quality['dp_mean']:+.5f}",
            "dp_p1": f"{quality['dp_p1']:+.5f}"}


def build_model_card(result, repo_id: str | None = None) -> ModelCard:
    """The model card of a quantized folder: metadata (base_model, quantized relation) and what was measured."""
    method = METHODS[result.method]
    tags = ["quantized", *method.card_tags(result.recipe)]
    local = result.base_model.startswith("demo:") or Path(result.base_model).expanduser().exists()
    base = None if local else result.base_model  # base_model metadata must be a Hub id
    data = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation", tags=tags,
                         base_model_relation="quantized" if base else None)
    model_class = "AutoModelForSeq2SeqLM" if result.kind == "seq2seq" else "AutoModelForCausalLM"
    return ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, repo_name=(repo_id or Path(result.out_dir).name).split("/")[-1],
        repo_id=repo_id or "<user>/<repo>", base_model=result.base_model,
        method=method.card_name,
        recipe=_recipe_rows(result), calibration=result.calibration, rows=result.comparison_rows(),
        layer_errors=layer_error_summary(getattr(result, "layer_errors", None) or []),
        eval_text=result.eval_text, seconds=f"{result.seconds:.0f}", versions=result.versions,
        quality=_quality_cells(getattr(result, "quality", None)), warnings=getattr(result, "warnings", []),
        thresholds=THRESHOLDS_TEXT,
        model_class=model_class, extra_kwargs="", requirements=method.card_requirements)


def write_model_card(result, folder: str | Path, repo_id: str | None = None) -> Path:
    path = Path(folder) / "README.md"
    build_model_card(result, repo_id).save(path)
    return path


def validate_repo_id(repo_id: str) -> str:
    """A repo id as the Hub accepts it: `user/name`, no path tricks (`..`, leading `/`, `~`, spaces)."""
    repo_id = (repo_id or "").strip()
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise PushError(f"{repo_id!r} is not a valid repo id.", "Write it as user/model-name (letters, digits, - _ .).")
    try:
        hub_validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(f"{repo_id!r} is not a valid repo id: {str(exc).splitlines()[0]}") from None
    return repo_id


def default_repo_id(username: str | None, folder: str | Path) -> str:
    """`<user>/<folder name without its timestamp>`, e.g. alice/Qwen2.5-0.5B-Instruct-GPTQ-4bit-g128."""
    name = re.sub(r"-\d{8}-\d{6}$", "", Path(folder).name)
    return f"{username or '<user>'}/{name}"


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str


def _http_error(exc: HfHubHTTPError, repo_id: str, folder: Path) -> PushError:
    status = exc.response.status_code if exc.response is not None else None
    kept = f"The folder {folder} is intact; the push can be retried."
    if status == 401:
        return PushError("The Hub rejected the token (401).", f"Log in again or give a valid write token. {kept}")
    if status == 403:
        return PushError(f"This token may not write to {repo_id} (403).",
                         f"Use a token with write access to that namespace. {kept}")
    if status == 409:
        return PushError(f"{repo_id} was changed or created by someone else meanwhile (409).", kept)
    return PushError(f"The Hub answered {status or 'an error'} while pushing to {repo_id}.", kept)


def push_folder(folder: str | Path, repo_id: str, *, token: str | None, private: bool = True,
                overwrite: bool = False, progress: ProgressFn | None = None) -> PushResult:
    """Create `repo_id` and upload `folder` in one commit. An existing repo is refused unless `overwrite`."""
    progress = progress or (lambda fraction, message: None)
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PushError(f"{folder} is not a saved model folder (no config.json).")
    repo_id = validate_repo_id(repo_id)
    if not token:
        raise PushError("Pushing needs a Hugging Face token with write access.",
                        "Log in with Hugging Face, type a token, or set HF_TOKEN.")
    api = HfApi(token=token)
    try:
        progress(0.05, "Checking the token")
        user = api.whoami()
        progress(0.1, f"Checking whether {repo_id} exists")
        if api.repo_exists(repo_id) and not overwrite:
            raise PushError(f"{repo_id} already exists.", "Choose another name, or tick 'overwrite' to push a new "
                            "commit on top of it.")
        api.create_repo(repo_id, private=private, exist_ok=overwrite)
        progress(0.2, f"Uploading {folder.name} as {user.get('name', 'you')}")
        write_model_card_repo_id(folder, repo_id)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder,
                                   commit_message=f"Upload {folder.name} (Quantization Playground)",
                                   ignore_patterns=["*.partial", "*.partial/*"])
    except PushError:
        raise
    except HfHubHTTPError as exc:
        raise _http_error(exc, repo_id, folder) from None
    except Exception as exc:  # noqa: BLE001 - transport errors (connection dropped, refused, timed out)
        raise PushError(f"The connection to the Hub failed ({type(exc).__name__}).",
                        f"The folder {folder} is intact; the push can be retried.") from None
    progress(1.0, "Pushed")
    url = str(getattr(commit, "repo_url", "") or f"{api.endpoint}/{repo_id}")
    return PushResult(repo_id, url, getattr(commit, "oid", ""))


def write_model_card_repo_id(folder: Path, repo_id: str) -> None:
    """Put the real repo id in the card's loading snippet (it was written before the name was known)."""
    card_path = folder / "README.md"
    if card_path.is_file():
        card_path.write_text(card_path.read_text(encoding="utf-8").replace("<user>/<repo>", repo_id),
                             encoding="utf-8")
