"""What a model family's architecture allows, read before weights are loaded or calibration starts, and what a load
really produced.

- `loading_problems`: weights a load found missing (newly initialised), unexpected or mis-shaped, from transformers'
  own loading info; for a quantized checkpoint that is an error (QuantError), never a silent success.
"""

from __future__ import annotations

import re
from typing import Iterable


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


