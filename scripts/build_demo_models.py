"""Build the two tiny demo models that ship in `quant/demo_models/` and the text sets in `quant/textsets/`.

The Hub cannot be reached where this project is developed and tested, so the app, the tests and the CI use
models made here: a Llama-shaped causal LM (Llama-3 style chat template and `<|eot_id|>` terminator) and a T5,
each with a byte-level BPE tokenizer trained locally with `tokenizers`. Both are briefly trained on real English
text (the Python language reference that ships with CPython, `pydoc_data.topics`), so perplexity means something.

Run once on a CPU (about 5 minutes on 2 cores); the results are committed (< 5 MB each):

    python scripts/build_demo_models.py
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "quant" / "demo_models"
TEXT_DIR = ROOT / "quant" / "textsets"

# Topics held out of training: the held-out perplexity text.
HELD_OUT_TOPICS = {"with", "try", "lambda", "while", "import", "global", "return", "yield"}

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SYSTEM_PROMPT = "You are a helpful assistant who explains the Python language."


def write_text_sets() -> tuple[list[tuple[str, str]], str]:
    """Split the CPython language reference into train topics and a held-out text; write the shipped text sets."""
    import pydoc_data.topics

    topics = sorted(pydoc_data.topics.topics.items())
    train = [(name, text) for name, text in topics if name not in HELD_OUT_TOPICS]
    held_out = "\n\n".join(text for name, text in topics if name in HELD_OUT_TOPICS)
    TEXT_DIR.mkdir(parents=True, exist_ok=True)
    (TEXT_DIR / "python-reference.txt").write_text("\n\n".join(text for _, text in train))
    (TEXT_DIR / "python-reference-heldout.txt").write_text(held_out)
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def chat_sample(name: str, text: str) -> list[dict[str, str]]:
    first_paragraphs = "\n\n".join(text.split("\n\n")[1:3]).strip()[:700]
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Explain {name.replace('-', ' ')} in Python."},
        {"role": "assistant", "content": first_paragraphs},
    ]


def train_loop(model, batches, steps: int, lr: float, label: str) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    start = time.time()
    for step in range(steps):
        scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"[{label}] step {step:4d} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()


def build_llama(train: list[tuple[str, str]], held_out: str, steps: int) -> None:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    raw = train_tokenizer([t for _, t in train], 2048, specials)
    raw.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", raw.token_to_id("<|begin_of_text|>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", model_max_length=512
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,  # a multiple of 128, so GPTQ group size 128 applies to every layer
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)

    # Training stream: raw reference text and the same topics as chat turns (so the template means something).
    ids: list[int] = []
    for name, text in train:
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        ids += tokenizer.apply_chat_template(chat_sample(name, text), tokenize=True, return_dict=True)["input_ids"]
    data = torch.tensor(ids)
    seq, batch = 512, 4  # train on the full context the config declares, so long prompts stay in distribution
    print(f"llama: {sum(p.numel() for p in model.parameters())} params, {len(ids)} training tokens")

    def batches():
        gen = torch.Generator().manual_seed(0)
        while True:
            starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
            x = torch.stack([data[s : s + seq] for s in starts])
            yield {"input_ids": x, "labels": x}

    train_loop(model, batches(), steps, 3e-3, "llama")
    with torch.no_grad():
        held_ids = tokenizer(held_out)["input_ids"]
        held = torch.tensor(held_ids[: len(held_ids) // seq * seq]).view(-1, seq)
        ppl = math.exp(model(input_ids=held, labels=held).loss.item())
    print(f"llama held-out perplexity: {ppl:.1f}")

    out = DEMO_DIR / "tiny-llama-chat"
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, max_new_tokens=64
    )
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "BUILD.json").write_text(json.dumps({"steps": steps, "held_out_perplexity": round(ppl, 2)}, indent=1))


def build_t5(train: list[tuple[str, str]], steps: int) -> None:
    specials = ["<pad>", "</s>", "<unk>"]
    raw = train_tokenizer([t for _, t in train], 2048, specials)
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", raw.token_to_id("</s>"))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    # A task that a tiny T5 learns in minutes: give the first sentence of a paragraph back with its words reversed.
    sentences = [s.strip() for _, t in train for s in t.replace("\n", " ").split(". ") if 20 < len(s.strip()) < 120]
    rng = random.Random(0)
    print(f"t5: {sum(p.numel() for p in model.parameters())} params, {len(sentences)} sentences")

    def batches():
        while True:
            picked = rng.sample(sentences, 16)
            enc = tokenizer(["reverse: " + s for s in picked], padding=True, return_tensors="pt")
            labels = tokenizer([" ".join(reversed(s.split())) for s in picked], padding=True, return_tensors="pt")
            label_ids = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
            yield {**enc, "labels": label_ids}

    train_loop(model, batches(), steps, 3e-3, "t5")
    out = DEMO_DIR / "tiny-t5"
    model.generation_config = GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=48,
    )
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "BUILD.json").write_text(json.dumps({"steps": steps, "task": "reverse: <sentence>"}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-steps", type=int, default=1200)
    parser.add_argument("--t5-steps", type=int, default=1000)
    parser.add_argument("--only", choices=["llama", "t5"], help="rebuild one model only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, held_out = write_text_sets()
    if args.only != "t5":
        build_llama(train, held_out, args.llama_steps)
    if args.only != "llama":
        build_t5(train, args.t5_steps)


if __name__ == "__main__":
    main()
