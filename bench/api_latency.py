"""Does the OpenAI-compatible API stream at the rate of the generation underneath? Time to first token and decode
rate seen by an HTTP client in a process of its own (streamed `/v1/chat/completions`, greedy) against
`quant.generation.stream_chat` called directly in the server's process, on the same loaded model and prompts, in one
run. Token counts come from the API's `usage` and the generation's own statistics, not from re-encoding text (a
random-weight model's text does not encode back to its tokens). The HTTP round trip is timed with `GET /v1/models`.

The server is `quant.openai_api`'s routes on FastAPI + uvicorn, as the app serves them (without Gradio, which the GPU
image lacks).

    python bench/api_latency.py --model demo:tiny-llama-chat --mode fp32 --out bench/results          # CPU
    python bench/api_latency.py --shape 8b --mode bf16 --device-map cuda:0 --out bench/results       # GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chat_latency import PROMPTS, direct  # noqa: E402 - the same prompts and direct measurement
from bench.common import WORK, bench_parser, result_stem, write_results  # noqa: E402

KEY = "sk-bench-key"


def _rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Decode rate: the tokens after the first over the time after the first (as chat_latency's rows count it)."""
    if first is None or last is None or tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)


def client(url: str, model: str, new_tokens: int, runs: int) -> dict:
    """The HTTP side (run in a process of its own): every prompt `runs` times, and 20 round trips of /v1/models."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    rows = []
    with httpx.Client(timeout=600) as http:
        trips = []
        for _ in range(20):
            started = time.perf_counter()
            http.get(f"{url}/v1/models", headers=headers).raise_for_status()
            trips.append(time.perf_counter() - started)
        for run in range(runs):
            for prompt in PROMPTS:
                body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                        "max_tokens": new_tokens, "stream": True, "stream_options": {"include_usage": True}}
                started = time.perf_counter()
                first = last = first_wall = None
                tokens = 0
                with http.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
                    response.raise_for_status()
                    for line in response.iter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        now = time.perf_counter()
                        if event.get("choices") and event["choices"][0]["delta"].get("content"):
                            if first is None:
                                first, first_wall = now, time.time()
                            last = now
                        if event.get("usage"):
                            tokens = event["usage"]["completion_tokens"]
                rows.append({"tokens": tokens, "ttft_s": (first - started) if first else None,
                             "tok_s": _rate(tokens, first, last), "warm_up": run == 0, "first_wall": first_wall})
    return {"round_trip_s": statistics.median(trips), "rows": rows}


class FirstText(logging.Handler):
    """When the server's generation produced each reply's first text (`quant.generation`'s debug record), on the wall
    clock that the client process shares: the client's receipt minus this is what HTTP delivery cost that reply."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "chat reply: first text":
            self.times.append(record.created)


def serve(registry) -> tuple[str, object]:
    """The API's routes on uvicorn, on a free local port, in this process (the model's process)."""
    import socket

    import uvicorn
    from fastapi import FastAPI

    from quant.openai_api import OpenAIService, build_router

    with socket.socket() as probe:  # a free port (app.free_port: importing app imports gradio, absent on the GPU image)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = FastAPI(routes=build_router(OpenAIService(lambda: registry)).routes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def main() -> None:
    parser = bench_parser(__doc__, out=Path("bench/results"), tag="", work=WORK, model="demo:tiny-llama-chat",
                          shape=None, mode="bf16", device_map="auto", new_tokens=128,
                          helps={"shape": "build a random-weight Llama of this shape (bench/llama_shapes.py) in "
                                          "--work instead of --model"})
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client", help=argparse.SUPPRESS)  # URL: run as the HTTP client process
    parser.add_argument("--served-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.client, args.served_model, args.new_tokens, args.runs)))
        return

    import torch

    from quant.loader import LoadRequest
    from quant.registry import ModelRegistry

    os.environ["QUANT_API_KEY"] = KEY
    model = args.model
    if args.shape:
        from bench.llama_shapes import build_checkpoint

        model = str(build_checkpoint(args.shape, args.work / f"llama-{args.shape}"))
    registry = ModelRegistry(max_models=1)
    loaded = registry.load(LoadRequest(model=model, mode=args.mode, device_map=args.device_map))
    print(f"loaded {loaded.label}: {loaded.report.generation_path}", flush=True)
    direct_rows = []
    for run in range(args.runs):
        for prompt in PROMPTS:
            direct_rows.append({**direct(loaded, prompt, args.new_tokens), "warm_up": run == 0})  # chat_latency's
    first_text = FirstText()
    generation_log = logging.getLogger("quant.generation")
    generation_log.setLevel(logging.DEBUG)
    generation_log.addHandler(first_text)
    url, server = serve(registry)
    process = subprocess.run([sys.executable, __file__, "--client", url, "--served-model", loaded.label,
                              "--new-tokens", str(args.new_tokens), "--runs", str(args.runs)],
                             capture_output=True, text=True, timeout=1800)
    if process.returncode:
        raise SystemExit(process.stderr)
    http = json.loads(process.stdout)
    server.should_exit = True
    # Replies run one after another: the n-th first text on the server is the n-th reply's.
    for row, produced in zip(http["rows"], first_text.times):
        row["delivery_s"] = row["first_wall"] - produced if row["first_wall"] else None

    def median(rows, field):
        values = [r[field] for r in rows if not r["warm_up"] and r[field] is not None]
        return statistics.median(values) if values else None

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    d_rate, a_rate = median(direct_rows, "tok_s"), median(http["rows"], "tok_s")
    d_ttft, a_ttft = median(direct_rows, "ttft_s"), median(http["rows"], "ttft_s")
    delivery = median(http["rows"], "delivery_s")
    data = {"device": device, "delivery_s": delivery, "model": loaded.label, "generation_path": loaded.report.generation_path,
            "new_tokens": args.new_tokens, "runs": args.runs, "direct": direct_rows, "api": http["rows"],
            "round_trip_s": http["round_trip_s"], "direct_rate": d_rate, "api_rate": a_rate,
            "direct_ttft_s": d_ttft, "api_ttft_s": a_ttft}
    ratio = a_rate / d_rate if a_rate and d_rate else None
    markdown = "\n".join([
        f"# OpenAI-compatible API vs `stream_chat`, {loaded.label}, {device}",
        "",
        f"`python bench/api_latency.py {' '.join(sys.argv[1:])}`; generation path: {loaded.report.generation_path}; "
        f"greedy, {args.new_tokens} new tokens, {len(PROMPTS)} prompts x {args.runs} runs (the first run is a "
        "warm-up, left out of the medians). The HTTP client runs in a process of its own.",
        "",
        "| | time to first token (s) | decode (tok/s) |",
        "|---|---|---|",
        f"| `stream_chat` in the server's process | {d_ttft:.4f} | {d_rate:.1f} |" if d_rate and d_ttft else "",
        f"| `/v1/chat/completions`, streamed, HTTP client | {a_ttft:.4f} | {a_rate:.1f} |" if a_rate and a_ttft else "",
        "",
        f"- API decode rate / direct: **{ratio:.3f}x** (goal: within 5%)" if ratio else "",
        f"- The first words reached the client **{delivery * 1000:.2f} ms** after the server's generation produced "
        f"them (median; server log record against the client's receipt, one wall clock); one HTTP round trip "
        f"(`GET /v1/models`, median of 20): {http['round_trip_s'] * 1000:.2f} ms" if delivery is not None else "",
        f"- Time to first words, API - direct: {(a_ttft - d_ttft) * 1000:.1f} ms (separate replies: with random "
        "weights the first word boundary falls after a different number of tokens from reply to reply, so this "
        "difference is noisy; the delivery line above is the same reply's)" if a_ttft and d_ttft else "",
    ])
    on = "cuda" if "cuda" in device.lower() or torch.cuda.is_available() else "cpu"
    stem = result_stem("api-latency", args.shape or Path(model).name.replace("demo:", ""), args.mode, on, tag=args.tag)
    write_results(args.out, stem, data, markdown)


if __name__ == "__main__":
    main()
