"""GPTQ quantization with gptqmodel: calibration data in, a saved GPTQ checkpoint out.

The kernel is never left to gptqmodel's automatic choice (on Hopper it picks Machete, which downloads CUTLASS at run
time): packing uses the portable torch kernel, and the checkpoint is in the standard `gptq` format that every kernel
(torch, triton, ExLlamaV2, Marlin) loads.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import QuantError

TEXTSETS_DIR = Path(__file__).resolve().parent / "textsets"


@dataclass(frozen=True)
class GPTQRecipe:
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False
    sym: bool = True
    damp_percent: float = 0.05
    num_samples: int = 128
    seq_len: int = 512

    def validate(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise QuantError(f"GPTQ bits must be 2, 3, 4 or 8, not {self.bits}.")
        if self.group_size != -1 and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise QuantError(f"Group size {self.group_size} is not a power of two >= 16 (or -1 for per-column).")
        if not 0 < self.damp_percent < 1:
            raise QuantError("damp_percent must lie between 0 and 1 (0.01-0.1 are usual).")
        if self.num_samples < 1 or self.seq_len < 16:
            raise QuantError("Calibration needs at least 1 sample of at least 16 tokens.")


def builtin_textsets() -> dict[str, Path]:
    """Calibration and evaluation texts that ship with the project (no download at run time)."""
    return {p.stem: p for p in sorted(TEXTSETS_DIR.glob("*.txt"))}


def calibration_samples(texts: list[str], tokenizer, num_samples: int, seq_len: int) -> list[dict[str, list[int]]]:
    """Cut the texts into `num_samples` windows of `seq_len` tokens (fewer if the text is short)."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= num_samples * seq_len:
            break
    windows = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)][:num_samples]
    if not windows:
        raise QuantError(
            f"The calibration text is too short: {len(ids)} tokens, and one sample needs {seq_len}.",
            "Give more text or a shorter sample length.",
        )
    return [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]


@dataclass
class GPTQResult:
    out_dir: Path
    seconds: float
    samples: int
    recipe: dict


def quantize_gptq(model_location: str, recipe: GPTQRecipe, texts: list[str], out_dir: Path,
                  device: str = "cpu") -> GPTQResult:
    """Quantize `model_location` with `recipe` on `texts`, save the checkpoint with its tokenizer to `out_dir`."""
    recipe.validate()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_location)
    samples = calibration_samples(texts, tokenizer, recipe.num_samples, recipe.seq_len)
    config = QuantizeConfig(bits=recipe.bits, group_size=recipe.group_size, desc_act=recipe.desc_act,
                            sym=recipe.sym, damp_percent=recipe.damp_percent)
    started = time.perf_counter()
    model = GPTQModel.load(model_location, config, device=device)
    model.quantize(samples, batch_size=1, backend=BACKEND.GPTQ_TORCH)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)  # a folder under its final name is always complete
    return GPTQResult(out_dir, time.perf_counter() - started, len(samples), asdict(recipe))
