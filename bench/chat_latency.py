"""Does the Chat tab stream at the rate of the generation underneath? Time to first token and decode rate seen by an
HTTP client of the real app (gradio_client, streaming) against `quant.generation.stream_chat` called directly, on
the same loaded model in the same process, same greedy prompts.

    python bench/chat_latency.py --model demo:tiny-llama-chat --mode fp32 --out bench/results      # CPU
    python bench/chat_latency.py --model /tmp/bench/llama-8b --mode bf16 --device-map cuda:0 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["Explain what a generator is in Python.", "What does the with statement do?",
           "Describe how a class definition is executed.", "What is a decorator?"]


def direct(loaded, prompt: str, new_tokens: int) -> dict:
    from quant.generation import GenerationSettings, stream_chat

    started = time.perf_counter()
    first = last = None
    final = None
    for chunk in stream_chat(loaded, [{"role": "user", "content": prompt}],
                             settings=GenerationSettings(max_new_tokens=new_tokens)):
        now = time.perf_counter()
        if chunk.text and first is None:
            first = now
        last, final = now, chunk
    return _row(loaded, final.text, started, first, last, final.stats.path)


def over_http(url: str, loaded, prompt: str, new_tokens: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)  # a new session: a fresh conversation
    client.predict(prompt, api_name="/chat_add_message")
    started = time.perf_counter()
    job = client.submit("", new_tokens, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    first = last = None
    text = footer = ""
    for update in job:
        now = time.perf_counter()
        history = update[0] if isinstance(update, (list, tuple)) and isinstance(update[0], list) else update
        reply = history[-1] if history and history[-1]["role"] == "assistant" else None
        if reply is None:
            continue
        content = reply["content"]
        if isinstance(content, list):  # Gradio 6 sends message content as typed parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        body, _, footer = content.partition("\n\n---\n")
        if body and first is None:
            first = now
        if body != text:
            last, text = now, body
    job.result()
    return _row(loaded, text, started, first, last, footer.strip("*"))


def _noop_round_trip(url: str, calls: int = 10) -> float:
    """Median time of the Stop endpoint (no queue, no work): the HTTP client's own floor on this machine."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        client.predict(api_name="/stop")
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def _row(loaded, text: str, started: float, first: float | None, last: float | None, path: str) -> dict:
    tokens = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    ttft = (first - started) if first else None
    rate = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    return {"tokens": tokens, "ttft_s": ttft, "tok_s": rate, "path": path, "text": text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo:tiny-llama-chat")
    parser.add_argument("--mode", default="fp32")
    parser.add_argument("--device-map", default="auto")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3, help="passes over the prompts (the first is a warm-up)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from quant.loader import LoadRequest
    from quant.registry import default_registry
    from tests.conftest import serve_app

    loaded = default_registry().load(LoadRequest(model=args.model, mode=args.mode, device_map=args.device_map))
    rows = {"direct": [], "http": []}
    with serve_app() as url:
        noop = _noop_round_trip(url)
        for run in range(args.runs):
            for prompt in PROMPTS:
                d, h = direct(loaded, prompt, args.new_tokens), over_http(url, loaded, prompt, args.new_tokens)
                if run:  # the first pass warms caches, the HTTP connection pool and the queue
                    rows["direct"].append(d)
                    rows["http"].append(h)
                assert d["text"].strip() == h["text"].strip(), \
                    f"the UI showed a different reply:\n{d['text']!r}\n{h['text']!r}"

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind] if r[key] is not None)

    summary = {"model": args.model, "mode": args.mode, "device": torch.cuda.get_device_name(0)
               if torch.cuda.is_available() else "cpu", "generation_path": loaded.path.describe(),
               "new_tokens": args.new_tokens, "samples": len(rows["direct"]),
               **{f"{kind}_{key}": median(kind, key) for kind in rows for key in ("ttft_s", "tok_s")}}
    summary["http_over_direct_tok_s"] = summary["http_tok_s"] / summary["direct_tok_s"]
    summary["http_minus_direct_ttft_s"] = summary["http_ttft_s"] - summary["direct_ttft_s"]
    summary["http_noop_round_trip_s"] = noop  # what any call costs through gradio_client here, generation aside
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"chat-latency-{summary['device'].replace(' ', '-').lower()}-{args.mode}"
    (args.out / f"{stem}.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
