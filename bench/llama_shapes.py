"""Llama-shaped checkpoints of real sizes with random weights, for speed and memory measurements on a GPU.

No weights can be downloaded on the benchmark machines; memory and speed depend on shapes, not on values. Quality
is measured on the trained demo model instead. The demo tokenizer is saved beside the weights (its ids are a subset
of the vocabulary), so every code path that needs a tokenizer works. The scripts build theirs in --work; by hand:

    python bench/llama_shapes.py 1b-4layers /tmp/cpu-1b4l --device cpu
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

DEMO_TOKENIZER = Path(__file__).resolve().parent.parent / "quant" / "demo_models" / "tiny-llama-chat"

SHAPES = {
    # Llama-3.2-1B
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
    # Llama-3.1-8B
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    # Llama-3.1-8B's widths and layers with the demo tokenizer's vocabulary: its random tokens decode to text, so a
    # streamed reply arrives word by word (with 128,256 ids most tokens are past the tokenizer and decode to nothing).
    # The head reads 0.017 GB a token instead of 1.05 GB, of 16 GB in all.
    "8b-demo-vocab": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                          num_key_value_heads=8, vocab_size=2048, tie_word_embeddings=False),
    # Llama-3.1-70B's widths (8192 / 28672, 64 heads, 8 KV heads, its vocabulary) in 40 of its 80 layers: 36.3B
    # parameters, 72.7 GB in bf16, so that its checkpoint fits the two-GPU machine's 128 GB disk, and one H200 (139
    # GiB) still holds it whole: the one-GPU run and the split over two compare on the same model (issue 29)
    "70b-40layers": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=40, num_attention_heads=64,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    # A seconds-long CPU check of a benchmark script (bench/methods_bench.py): Llama's layout, widths that every
    # quantization method takes (multiples of 256: int4 groups up to 256, fp8's multiples of 16)
    "tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, tie_word_embeddings=False),
    # CPU-sized: the 1B's attention and MLP shapes in 4 layers, a vocabulary just past the demo tokenizer's
    "1b-4layers": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=8192, tie_word_embeddings=True),
}


def build_checkpoint(shape: str, out: Path, dtype: torch.dtype = torch.float16, device: str = "cuda",
                     seed: int = 0) -> Path:
    """Write a random-weight Llama of `shape` to `out` (skipped if it is already there); `seed`: other weights of the
    same shape."""
    if (out / "config.json").is_file():
        return out
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=8192, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in `dtype` directly: the 70B shape in fp32 would not fit one H200
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    # Initialise like a trained model's scale, so activations stay finite through 16-32 layers.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.02)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"built {shape}: {n / 1e9:.2f}B params in {time.perf_counter() - started:.0f}s -> {out}", flush=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import bench_parser

    parser = bench_parser(__doc__)
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    build_checkpoint(args.shape, args.out, device=args.device)
