"""Why is sdpa slower than eager in HF generate here? Time the pieces of one decode step on the GPU. It prints what it
finds and writes no result files.

    python bench/sdpa_probe.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_parser  # noqa: E402


def timed(fn, n=200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    bench_parser(__doc__).parse_args()  # no options: --help
    dev, dt = "cuda", torch.float16
    q = torch.randn(1, 32, 1, 64, device=dev, dtype=dt)
    k = torch.randn(1, 8, 300, 64, device=dev, dtype=dt)
    v = torch.randn_like(k)
    mask = torch.ones(1, 1, 1, 300, device=dev, dtype=torch.bool)
    kr, vr = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
    print(f"sdpa gqa no mask     {timed(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)):8.1f} us")
    print(f"sdpa gqa bool mask   {timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)):8.1f} us")
    print(f"sdpa repeated kv     {timed(lambda: F.scaled_dot_product_attention(q, kr, vr)):8.1f} us")
    print(f"sdpa repeated + mask {timed(lambda: F.scaled_dot_product_attention(q, kr, vr, attn_mask=mask)):8.1f} us")
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(backend):
                t = timed(lambda: F.scaled_dot_product_attention(q, kr, vr, attn_mask=None))
            print(f"  {backend.name:<22}{t:8.1f} us")
        except RuntimeError as exc:
            print(f"  {backend.name:<22} unavailable ({str(exc).splitlines()[0][:60]})")
    eager = lambda: torch.softmax((q @ kr.transpose(-1, -2)) / 8.0, -1) @ vr  # noqa: E731
    print(f"eager matmul-softmax {timed(eager):8.1f} us")

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256)
    for attn in ("eager", "sdpa"):
        model = LlamaForCausalLM(config).to(dev, dt).eval()
        model.config._attn_implementation = attn
        ids = torch.randint(0, 2000, (1, 32), device=dev)
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=64, min_new_tokens=64, do_sample=False)
            torch.cuda.synchronize()
            t = time.perf_counter() - start
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
        print(f"{attn}: generate b1 {64 / t:.1f} tok/s")
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
