"""GPTQ quantization with gptqmodel: calibration data in, a saved GPTQ checkpoint out.

The kernel is never left to gptqmodel's automatic choice (on Hopper it picks Machete, which downloads CUTLASS at run
time): packing uses the portable torch kernel, and the checkpoint is in the standard `gptq` format that every kernel
(torch, triton, ExLlamaV2, Marlin) loads.
"""

from __future__ import annotations

import errno
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

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


class QuantizationCancelled(QuantError):
    """The user stopped the quantization; nothing was saved."""


ProgressFn = Callable[[float, str], None]


@dataclass
class GPTQResult:
    out_dir: Path
    seconds: float
    samples: int
    recipe: dict


def _layer_count(model) -> int:
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def save_atomically(write: Callable[[Path], None], out_dir: Path) -> Path:
    """Write a folder under a temporary name, then rename it: a folder under its final name is always complete.

    Any failure removes the partial folder; a write error says what the disk said (`_save_error`).
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write(partial)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _save_error(exc, out_dir) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _save_error(exc: OSError, out_dir: Path) -> QuantError:
    """The message for a failed save: what the disk said, or what the library said when it was not the disk.

    Only a full disk (or quota) is told to free space. An OSError without an errno is raised by library code about its
    own files (gptqmodel's "Offloaded tensor 'lm_head.weight' not found in offload directory"), not by the disk."""
    if exc.errno in _DISK_FULL:
        return QuantError(f"Saving to {out_dir} failed: the disk is full. Nothing was kept.",
                          "Free some space (or choose another output folder) and run again.")
    if exc.errno in _NOT_WRITABLE:
        return QuantError(f"Saving to {out_dir} failed: {exc.strerror or exc} (the folder is not writable). "
                          "Nothing was kept.", "Choose an output folder you can write to.")
    if exc.errno is not None:
        return QuantError(f"Saving to {out_dir} failed: {exc.strerror or exc}. Nothing was kept.",
                          "Check the output folder and run again.")
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return QuantError(f"Saving to {out_dir} failed inside gptqmodel, not on the disk: {first_line} Nothing was kept.",
                      "This is a fault of gptqmodel with this model family; freeing space will not help.")


@contextmanager
def _checkpoint_names_for_gptqmodel(config) -> Iterator[None]:
    """Give gptqmodel the checkpoint-name renames that transformers registers under the model's class name.

    gptqmodel materializes each module's weights from the checkpoint by its runtime name, translated through
    transformers' checkpoint conversion mapping, which it looks up by model type only
    (gptqmodel/utils/structure.py, LazyTurtle.infer_hf_conversion_map_reversed, `get_checkpoint_conversion_mapping(
    model_type)`). transformers 5.23 files some renames under the class name instead (conversion_mapping.py:
    "GPTNeoXForCausalLM": `embed_out.` -> `lm_head.`), so for GPT-NeoX (Pythia) the output head `lm_head` was never
    found under the checkpoint's `embed_out.weight`, stayed on the meta device, and saving failed with "Offloaded
    tensor 'lm_head.weight' not found in offload directory". For the duration of one quantization, the model's
    gptqmodel definition gets the class's renames, reversed as gptqmodel expects them (HF_CONVERSION_MAP_REVERSED).
    """
    from gptqmodel.models.auto import MODEL_MAP
    from gptqmodel.utils.structure import LazyTurtle
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    definition = MODEL_MAP.get(getattr(config, "model_type", None))
    renames = None
    if (definition is not None and "HF_CONVERSION_MAP_REVERSED" not in vars(definition)
            and getattr(definition, "HF_CONVERSION_MAP_REVERSED", None) is None
            and not getattr(definition, "hf_conversion_model_type_alias", None)
            and get_checkpoint_conversion_mapping(config.model_type) is None):
        for architecture in getattr(config, "architectures", None) or []:
            by_class = get_checkpoint_conversion_mapping(architecture)
            if by_class:
                renames = LazyTurtle.reverse_hf_conversion_map(by_class)
                break
    if not renames:
        yield
        return
    definition.HF_CONVERSION_MAP_REVERSED = renames
    try:
        yield
    finally:
        del definition.HF_CONVERSION_MAP_REVERSED


GPTQ_REFUSAL_HINT = ("Quantize it with bitsandbytes (int8 or nf4) instead: its linear layers are quantized and the "
                     "load report names what stays 16-bit. Or load it in bf16.")


def quantize_gptq(model_location: str, recipe: GPTQRecipe, texts: list[str], out_dir: Path,
                  device: str = "cpu", progress: ProgressFn | None = None,
                  stop: threading.Event | None = None) -> GPTQResult:
    """Quantize `model_location` with `recipe` on `texts`, save the checkpoint with its tokenizer to `out_dir`.

    A family gptqmodel cannot quantize into a checkpoint that transformers loads is refused first (QuantError, from
    the config alone: quant.families.gptq_refusal). `progress(fraction, message)` is called as each layer finishes;
    setting `stop` ends the work after the current layer and raises QuantizationCancelled (nothing is saved).
    """
    recipe.validate()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from gptqmodel.looper.module_looper import StopMainLoop
    from transformers import AutoConfig, AutoTokenizer

    from .families import gptq_refusal

    progress = progress or (lambda fraction, message: None)
    stop = stop or threading.Event()
    model_config = AutoConfig.from_pretrained(model_location)
    refusal = gptq_refusal(model_config)
    if refusal:
        raise QuantError(refusal, GPTQ_REFUSAL_HINT)
    tokenizer = AutoTokenizer.from_pretrained(model_location)
    samples = calibration_samples(texts, tokenizer, recipe.num_samples, recipe.seq_len)
    config = QuantizeConfig(bits=recipe.bits, group_size=recipe.group_size, desc_act=recipe.desc_act,
                            sym=recipe.sym, damp_percent=recipe.damp_percent)
    started = time.perf_counter()
    with _checkpoint_names_for_gptqmodel(model_config):
        progress(0.0, f"Loading {model_location} for quantization")
        model = GPTQModel.load(model_location, config, device=device)
        layers = _layer_count(model) or 1
        quant_started = time.perf_counter()

        def on_layer(layer_idx: int, submodule_finalized: bool):
            if stop.is_set():
                return StopMainLoop
            if submodule_finalized:
                done = layer_idx + 1
                elapsed = time.perf_counter() - quant_started
                remaining = elapsed / done * (layers - done)
                progress(done / layers, f"Layer {done}/{layers} · {elapsed:.0f} s elapsed · ~{remaining:.0f} s left")
            return None

        model.layer_callback = on_layer
        progress(0.0, f"Quantizing {layers} layers on {len(samples)} samples")
        model.quantize(samples, batch_size=1, backend=BACKEND.GPTQ_TORCH)
        if stop.is_set():
            del model
            raise QuantizationCancelled("Quantization stopped; nothing was saved.")
        progress(1.0, "Saving")

        def write(folder: Path) -> None:
            model.save(str(folder))
            tokenizer.save_pretrained(folder)

        save_atomically(write, out_dir)
    return GPTQResult(Path(out_dir), time.perf_counter() - started, len(samples), asdict(recipe))
