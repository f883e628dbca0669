"""Facts about a checkpoint read independently of quant (safetensors headers, the config's widths), and what the
method tests check on any loaded model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from quant.generation import GenerationSettings, generate_batch

PROMPTS = ["The with statement is used to", "A class definition defines", "def main():"]


def safetensors_parameter_count(folder: Path) -> int:
    """Count weights from the safetensors header alone: an independent measure of the model's size."""
    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            n = 1
            for d in meta["shape"]:
                n *= d
            total += n
    return total


def block_and_rest(folder: Path) -> tuple[int, int]:
    """Weights in the blocks' linear layers (what HQQ quantizes) and the rest (embeddings, norms, output head)."""
    config = json.loads((folder / "config.json").read_text())
    h, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    block = layers * (h * h * 2 + h * kv * 2 + 3 * h * ff)
    return block, safetensors_parameter_count(folder) - block


def assert_batch_matches_one_by_one(loaded, prompts: list[str], settings: GenerationSettings) -> None:
    """A greedy batch gives each prompt's reply alone, or differs first where that reply's top two logits were within
    bf16 rounding: the int4 kernel (tinygemm's CPU twin) rounds differently with the number of rows it multiplies."""
    batch = generate_batch(loaded, prompts, settings)
    assert len(batch) == len(prompts) and all(text.strip() for text, _ in batch)
    for prompt, (text, _) in zip(prompts, batch):
        alone = generate_batch(loaded, [prompt], settings)[0][0]
        if text == alone:
            continue
        ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
        reply = loaded.tokenizer(alone, add_special_tokens=False, return_tensors="pt").input_ids[0]
        other = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
        split = next(i for i, (a, b) in enumerate(zip(reply.tolist(), other.tolist())) if a != b)
        with torch.inference_mode():
            logits = loaded.model(torch.cat([ids[0], reply[:split]])[None]).logits[0, -1].float()
        top = logits.topk(2).values
        assert top[0] - top[1] < 8 * torch.finfo(torch.bfloat16).eps * top[0].abs(), (prompt, alone, text)
