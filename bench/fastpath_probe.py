"""Why does the compiled path fail or succeed on this GPU? Tries the variants on the tiny demo model, with tracebacks.
It prints what it finds and writes no result files.

    python bench/fastpath_probe.py      # on the device machine
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import StaticCache  # noqa: E402
from transformers.generation import CompileConfig  # noqa: E402

from bench.common import bench_parser  # noqa: E402
from quant.loader import LoadRequest, load_model  # noqa: E402


def attempt(name, fn):
    started = time.perf_counter()
    try:
        out = fn()
        print(f"OK   {name}: {time.perf_counter() - started:.1f}s {out}", flush=True)
    except Exception:  # noqa: BLE001
        print(f"FAIL {name}:\n" + "".join(traceback.format_exc().splitlines(True)[-25:]), flush=True)


def main() -> None:
    bench_parser(__doc__).parse_args()  # no options: --help
    import os
    os.environ["QUANT_FAST_GENERATION"] = "off"
    loaded = load_model(LoadRequest(model="demo:tiny-llama-chat", mode="fp16", device_map="cuda:0"))
    model, tok = loaded.model, loaded.tokenizer
    inputs = tok(["Warm-up"], return_tensors="pt").to("cuda")
    kw = dict(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, temperature=None, top_p=None, top_k=None,
              pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        attempt("static cache_implementation, default compile", lambda: model.generate(
            **kw, cache_implementation="static").shape)
        cache = StaticCache(config=model.config, max_cache_len=256)
        attempt("user StaticCache + CompileConfig()", lambda: model.generate(
            **kw, past_key_values=cache, compile_config=CompileConfig()).shape)
    from concurrent.futures import ThreadPoolExecutor

    runner = ThreadPoolExecutor(max_workers=1)
    cache3 = StaticCache(config=model.config, max_cache_len=256)

    def in_thread():
        with torch.inference_mode():
            return model.generate(**kw, past_key_values=cache3, compile_config=CompileConfig()).shape

    attempt("user StaticCache on a runner thread", lambda: runner.submit(in_thread).result())
    os.environ["QUANT_FAST_GENERATION"] = "auto"
    from quant.fastpath import prepare_generation_path

    attempt("prepare_generation_path", lambda: prepare_generation_path(
        model, tok, method_refusal=loaded.method_refusal, kind="causal", context=2048).describe())


if __name__ == "__main__":
    main()
