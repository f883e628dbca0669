"""What a model family's architecture allows, read before weights are loaded or calibration starts, and what a load
really produced.

- `gptq_refusal`: families gptqmodel cannot quantize into a checkpoint that transformers loads, refused before any work.
- `loading_problems`: weights a load found missing (newly initialised), unexpected or mis-shaped, from transformers'
  own loading info; for a quantized checkpoint that is an error (QuantError), never a silent success.
- `unquantized_weights_note`: modules a quantized mode left in 16-bit (MoE experts held as 3-D tensors), for the
  load report.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

from .report import logical_parameter_count


def skeleton(config: Any, kind: str = "causal") -> nn.Module | None:
    """The transformers model of `config` on the meta device (no memory, no weights), or None where transformers
    cannot build it (remote code, an unknown type)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            return auto.from_config(config)
    except Exception:  # noqa: BLE001 - no skeleton: the checks that need one are skipped, the load-time checks remain
        return None


def fused_expert_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding stacked (3-D or more) weight tensors: the MoE experts of transformers 5 (MixtralExperts,
    Qwen3MoeExperts...), which keeps every expert's projections in one tensor instead of nn.Linear layers."""
    return [(name, module) for name, module in model.named_modules()
            if any(p.dim() >= 3 for p in module.parameters(recurse=False))]


def gptq_refusal(config: Any, kind: str = "causal", method: str = "GPTQ") -> str | None:
    """Why GPTQ (or AWQ, `method`: both through gptqmodel, both loaded by transformers into its linear layers)
    quantization of this architecture is refused (read from the config alone), or None.

    - gptqmodel has no definition for the model type: it would fail after loading the model.
    - The model keeps MoE experts as stacked 3-D tensors (transformers 5's Mixtral, Qwen-MoE...). gptqmodel defuses
      them into one nn.Linear per expert and projection and saves those (gptqmodel.models.loader,
      `_convert_model_with_defuser`), but transformers' GPTQ loader (optimum's GPTQQuantizer.convert_model) replaces
      nn.Linear layers only: the experts would load MISSING, with random weights.
    """
    from importlib.metadata import version

    from gptqmodel.models.auto import MODEL_MAP

    model_type = getattr(config, "model_type", None)
    architecture = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    if model_type not in MODEL_MAP:
        return (f"gptqmodel {version('gptqmodel')} cannot quantize {architecture} (model type {model_type!r}): it has "
                "no definition of that architecture's layers.")
    model = skeleton(config, kind)
    experts = fused_expert_modules(model) if model is not None else []
    if experts:
        return (f"{method} of {architecture} is refused: transformers {version('transformers')} keeps its experts "
                f"as stacked 3-D tensors ({_names(n for n, _ in experts)}, {type(experts[0][1]).__name__}). gptqmodel "
                f"quantizes them as one linear layer per expert, but transformers' {method} loader only fills linear "
                "layers, so the saved checkpoint would load with every expert missing (random weights).")
    return None


def loading_problems(info: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, mismatched) weight names from `from_pretrained(..., output_loading_info=True)`.
    Missing weights are the ones transformers initialised anew (random values)."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(entry[0] if isinstance(entry, tuple) else entry)
                        for entry in info.get("mismatched_keys") or ())
    return missing, unexpected, mismatched


def layout_hint(missing: Iterable[str], unexpected: Iterable[str]) -> str:
    """What a known mismatch of layouts means (gptqmodel saves some fused projections split), or ''."""
    missing, unexpected = " ".join(missing), " ".join(unexpected)
    if ".experts." in missing or ".experts." in unexpected:
        return (" The checkpoint stores one layer per expert where transformers keeps the experts as stacked 3-D "
                "tensors, which its GPTQ loader cannot fill.")
    if "gate_up_proj" in missing and ".gate_proj." in unexpected:
        return (" The checkpoint stores gate_proj and up_proj separately (gptqmodel defuses them to quantize) where "
                "transformers' model has one fused gate_up_proj.")
    return ""


def names_text(keys: Iterable[str], limit: int = 6) -> str:
    """Weight names grouped over layer numbers: 'model.layers.{0, 1}.mlp.gate_up_proj.(g_idx, qweight)'."""
    return _names(keys, limit)


def _names(keys: Iterable[str], limit: int = 6) -> str:
    groups: dict[str, tuple[list[set[str]], set[str]]] = {}
    for key in keys:
        pattern = re.sub(r"(?<=\.)\d+(?=\.)", "{}", key)
        module, _, leaf = pattern.rpartition(".")
        numbers, leaves = groups.setdefault(module or pattern, ([], set()))
        for position, number in enumerate(re.findall(r"(?<=\.)\d+(?=\.)", key)):
            if position == len(numbers):
                numbers.append(set())
            numbers[position].add(number)
        if module:
            leaves.add(leaf)
    parts = []
    for group, (numbers, leaves) in groups.items():
        text = group.format(*("{" + ", ".join(sorted(n, key=int)) + "}" if len(n) > 1 else next(iter(n))
                              for n in numbers))
        parts.append(text + (f".({', '.join(sorted(leaves))})" if len(leaves) > 1 else
                             f".{next(iter(leaves))}" if leaves else ""))
    shown = parts[:limit]
    return ", ".join(shown) + (f" and {len(parts) - limit} more" if len(parts) > limit else "")


def unquantized_weights_note(model: nn.Module, why: str, skipped: Iterable[str] = ()) -> str | None:
    """A report line naming the weight-holding modules a quantized mode left unquantized, or None.

    bitsandbytes and GPTQ quantize linear layers; transformers 5 keeps MoE experts as stacked tensors in modules of
    their own (Mixtral's experts are most of its weights), and a router is a module of its own too. The output head,
    embeddings and modules the user asked to skip are left unquantized on purpose and not named.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skipped = tuple(skipped)
    left: list[tuple[str, nn.Module, int]] = []
    total = logical_parameter_count(model)
    for name, module in model.named_modules():
        kind = type(module).__name__
        if module is head or isinstance(module, (nn.Embedding, nn.Linear)) or "Linear" in kind:
            continue  # quantized layers (bnb, GPTQ, int4pack), and linear layers left as they are on purpose
        if any(part in name.split(".") for part in skipped):
            continue
        count = sum(p.numel() for p in module.parameters(recurse=False) if p.dim() >= 2)
        if count:
            left.append((name, module, count))
    if not left:
        return None
    kept = sum(count for _, _, count in left)
    dtype = str(next(left[0][1].parameters()).dtype).removeprefix("torch.")
    by_class: dict[str, list[str]] = {}
    for name, module, _ in left:
        by_class.setdefault(type(module).__name__, []).append(name)
    listed = "; ".join(f"{len(names)} {cls} ({_names(names, 3)})" for cls, names in by_class.items())
    return (f"{listed} stay in {dtype}, unquantized: {kept / max(total, 1):.0%} of the weights. {why}, and "
            "transformers keeps these as tensors of their own (MoE experts are stacked 3-D tensors).")

