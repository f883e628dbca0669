"""How far a mode's next-token distributions are from the 16-bit reference of the same model, on the same windows.

Perplexity alone hides what users care about (a mode can keep perplexity and still pick other tokens). Here every
mode is measured against the reference on the same token windows:

- windows: the evaluation text's first `max_tokens` tokens (4096, as the Compare perplexity) cut into consecutive,
  non-overlapping windows of `window` tokens (default min(512, the model's max_position_embeddings): the recipe of
  `quant.metrics.perplexity`), so stride = window. Each window's positions 0..n-2 predict tokens 1..n-1.
- the reference's log-softmax at every position is written ONCE to disk, float16, in a `.npy` memory map
  (positions × vocabulary; 2 bytes a value: 4096 positions of a 128k vocabulary are 1 GiB on disk, none of it held
  in memory), with the token ids and the window starts beside it. Other modes load afterwards and read it window by
  window, so one Compare run never holds two models.
- each mode's log-softmax is rounded to float16 too before the comparison: the same rounding on both sides, so a mode
  compared with itself gives KL exactly 0 and top-1 agreement exactly 100%.

Metrics (over all predicted positions; p = exp(log-softmax)):
- kl_mean, kl_p99: mean and 99th percentile of KL(ref || mode) = sum_v p_ref(v) (log p_ref(v) - log p_mode(v)),
  computed in float32 and clamped at 0 (the float16 rounding can leave it a hair below);
- top1_agreement: % of positions where argmax p_ref == argmax p_mode;
- dp_mean, dp_p1: mean and 1st percentile of p_mode(next) - p_ref(next), next = the text's actual next token (the
  1st percentile: how much probability the worst 1% of positions lose);
- perplexity ratio: the mode's perplexity (quant.metrics.perplexity, unchanged) / the reference's.

Verdict thresholds (VERDICT_THRESHOLDS): "close" when top-1 agreement >= 95% and mean KL <= 0.02 nats: a bf16 cast
of fp32 weights and 8-bit weights stay well inside this (KL ~1e-3, >98% agreement), so a mode in it behaves as the
reference for practical purposes. "noticeably different" when agreement >= 85% and KL <= 0.1: where good 4-bit
methods (GPTQ) usually land, a change users can see in long generations. Anything else is "far".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import QuantError
from .loader import LoadedModel

DEFAULT_MAX_TOKENS = 4096
"""Tokens of the evaluation text measured (the Compare perplexity's)."""
CLOSE = {"top1": 95.0, "kl": 0.02}
NOTICEABLE = {"top1": 85.0, "kl": 0.1}
VERDICT_THRESHOLDS = {"close": CLOSE, "noticeable": NOTICEABLE}
THRESHOLDS_TEXT = (f"close: top-1 ≥ {CLOSE['top1']:g}% and mean KL ≤ {CLOSE['kl']:g}; noticeably different: "
                   f"top-1 ≥ {NOTICEABLE['top1']:g}% and KL ≤ {NOTICEABLE['kl']:g}; otherwise far")


@dataclass
class Reference:
    """The reference's per-position log-probs on disk (folder) and what they were measured on."""

    folder: Path
    label: str
    window: int
    stride: int
    starts: list[int]
    positions: int
    vocab: int

    @property
    def logprobs_path(self) -> Path:
        return self.folder / "logprobs.npy"

    @property
    def ids_path(self) -> Path:
        return self.folder / "ids.npy"

    @classmethod
    def open(cls, folder: str | Path) -> "Reference":
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        return cls(folder=folder, **meta)


@dataclass
class Quality:
    """One mode against the reference."""

    reference: str
    window: int
    stride: int
    positions: int
    kl_mean: float
    kl_p99: float
    top1_agreement: float
    dp_mean: float
    dp_p1: float
    kl_per_window: list[float] = field(default_factory=list)
    """Mean KL of each window (in window order: window i starts at token i × stride)."""


def eval_ids(loaded: LoadedModel, text: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> torch.Tensor:
    """The evaluation text's token ids, as quant.metrics.perplexity encodes them."""
    ids = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt", verbose=False)["input_ids"][0]
    return ids[:max_tokens]


def window_length(loaded: LoadedModel, window: int | None = None) -> int:
    """quant.metrics.perplexity's window: at most 512 tokens and the model's context."""
    limit = getattr(loaded.model.config, "max_position_embeddings", 512) or 512
    return min(window or 512, limit)


def window_starts(count: int, window: int) -> list[int]:
    """Starts of the non-overlapping windows over `count` tokens that have at least 2 tokens (one prediction)."""
    return [s for s in range(0, count - 1, window) if min(count, s + window) - s >= 2]


def _window_logprobs(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """Log-softmax (float32, on the CPU) of the next-token logits at every position of one window but the last."""
    chunk = ids.unsqueeze(0).to(loaded.device)
    logits = loaded.model(input_ids=chunk).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1).cpu()


def _check_causal(loaded: LoadedModel) -> None:
    if loaded.source.kind != "causal":
        raise QuantError("Next-token quality is measured on causal LMs only.")
    loaded.refuse_tensor_parallel("The quality pass (next-token KL against the 16-bit reference)")


def write_reference(loaded: LoadedModel, text: str, folder: str | Path, *, label: str = "bf16",
                    max_tokens: int = DEFAULT_MAX_TOKENS, window: int | None = None) -> Reference:
    """Compute the reference's float16 log-softmax at every predicted position and write it to `folder` (a memory
    map filled window by window: the whole array is never in memory)."""
    _check_causal(loaded)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = eval_ids(loaded, text, max_tokens)
    window = window_length(loaded, window)
    starts = window_starts(ids.numel(), window)
    if not starts:
        raise QuantError("The evaluation text is too short for a quality measurement.")
    counts = [min(ids.numel(), s + window) - s - 1 for s in starts]
    vocab = None
    out = None
    offset = 0
    with torch.inference_mode():
        for start, count in zip(starts, counts):
            logprobs = _window_logprobs(loaded, ids[start : start + count + 1])
            if out is None:
                vocab = logprobs.shape[-1]
                out = np.lib.format.open_memmap(folder / "logprobs.npy", mode="w+", dtype=np.float16,
                                                shape=(sum(counts), vocab))
            out[offset : offset + count] = logprobs.to(torch.float16).numpy()
            offset += count
    out.flush()
    del out
    np.save(folder / "ids.npy", ids.numpy())
    meta = {"label": label, "window": window, "stride": window, "starts": starts, "positions": sum(counts),
            "vocab": vocab}
    (folder / "meta.json").write_text(json.dumps(meta))
    return Reference(folder=folder, **meta)


def measure_quality(loaded: LoadedModel, reference: Reference) -> Quality:
    """Every next-token metric of `loaded` against the reference file, on the reference's own token ids and windows."""
    _check_causal(loaded)
    ids = torch.from_numpy(np.load(reference.ids_path))
    ref_all = np.load(reference.logprobs_path, mmap_mode="r")
    kls, agree, dps, per_window = [], [], [], []
    offset = 0
    with torch.inference_mode():
        for start in reference.starts:
            end = min(ids.numel(), start + reference.window)
            count = end - start - 1
            mode = _window_logprobs(loaded, ids[start:end]).to(torch.float16).float()
            ref = torch.from_numpy(np.array(ref_all[offset : offset + count], dtype=np.float32))
            offset += count
            if mode.shape[-1] != ref.shape[-1]:
                # a checkpoint whose head is padded to a multiple (or cut): compare the shared vocabulary
                shared = min(mode.shape[-1], ref.shape[-1])
                mode, ref = mode[:, :shared], ref[:, :shared]
            kl = (ref.exp() * (ref - mode)).sum(-1).clamp(min=0)
            nxt = ids[start + 1 : end].unsqueeze(-1)
            dp = mode.gather(-1, nxt).exp().squeeze(-1) - ref.gather(-1, nxt).exp().squeeze(-1)
            kls.append(kl)
            agree.append(ref.argmax(-1) == mode.argmax(-1))
            dps.append(dp)
            per_window.append(kl.mean().item())
    kl_all, dp_all = torch.cat(kls).double(), torch.cat(dps).double()
    return Quality(reference=reference.label, window=reference.window, stride=reference.stride,
                   positions=kl_all.numel(), kl_mean=kl_all.mean().item(),
                   kl_p99=torch.quantile(kl_all, 0.99).item(),
                   top1_agreement=100.0 * torch.cat(agree).double().mean().item(),
                   dp_mean=dp_all.mean().item(), dp_p1=torch.quantile(dp_all, 0.01).item(),
                   kl_per_window=per_window)


def verdict(top1_agreement: float | None, kl_mean: float | None, reference: str = "bf16") -> str:
    """One line: e.g. "top-1 agreement 97.2%, KL 0.012: close to bf16" (thresholds: VERDICT_THRESHOLDS)."""
    if top1_agreement is None or kl_mean is None or math.isnan(kl_mean):
        return ""
    if top1_agreement >= CLOSE["top1"] and kl_mean <= CLOSE["kl"]:
        word = f"close to {reference}"
    elif top1_agreement >= NOTICEABLE["top1"] and kl_mean <= NOTICEABLE["kl"]:
        word = f"noticeably different from {reference}"
    else:
        word = f"far from {reference}"
    return f"top-1 agreement {top1_agreement:.1f}%, KL {kl_mean:.4f}: {word}"
