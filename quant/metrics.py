"""Quality and size measurements: perplexity on held-out text and a checkpoint's size on disk."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import QuantError
from .loader import LoadedModel

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass
class Perplexity:
    value: float
    tokens: int
    seconds: float


def perplexity(loaded: LoadedModel, text: str, *, max_tokens: int = 8192, window: int | None = None) -> Perplexity:
    """Perplexity of a causal LM on `text`, over consecutive windows of the model's context (at most 512 tokens).

    Windows do not overlap (the first tokens of each window see less context): cheaper than a sliding window and
    the same for every mode, which is what a comparison needs.
    """
    if loaded.source.kind != "causal":
        raise QuantError("Perplexity is measured on causal LMs only.", "Seq2seq models are compared on outputs.")
    loaded.refuse_tensor_parallel("Perplexity")
    tokenizer = loaded.tokenizer
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0][:max_tokens]
    limit = getattr(loaded.model.config, "max_position_embeddings", 512) or 512
    window = min(window or 512, limit)
    if ids.numel() < 2:
        raise QuantError("The evaluation text is too short for a perplexity.")
    total_nll, total_tokens = 0.0, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start : start + window].unsqueeze(0).to(loaded.device)
            if chunk.shape[1] < 2:
                break
            loss = loaded.model(input_ids=chunk, labels=chunk).loss.float().item()
            count = chunk.shape[1] - 1
            total_nll += loss * count
            total_tokens += count
    value = math.exp(total_nll / total_tokens)
    return Perplexity(value, total_tokens, time.perf_counter() - started)


def size_on_disk(folder: str | Path) -> int:
    """Bytes of the weight files in a checkpoint folder (config and tokenizer files are not counted)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
