"""Drive a running app from many concurrent gradio_client sessions, as many browser users would.

Each session loads nothing (it uses the model already loaded on the server), sends its own numbered message and
streams a reply. Every request must be answered or refused cleanly by the queue; a reply must land in the session
that asked (each session's conversation must hold its own message and no other session's).

    python bench/load_test.py http://127.0.0.1:7860/ --sessions 50 --turns 2 --out bench/results/load.json

`serve` instead of a URL starts the app in this process, loads --model in --mode through its own /load_model API,
and adds the server's memory before and after the sessions (GPU allocated and process RSS) to the result:

    python bench/load_test.py serve --model /tmp/bench/llama-1b --mode bf16 --device-map cuda:0 --sessions 64 \
        --turns 2 --out bench/results/load-gpu-1b-bf16-64-sessions.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gradio_client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@dataclass
class LoadResult:
    sessions: int
    requests: int = 0
    answered: int = 0
    refused_busy: int = 0
    failed: list[str] = field(default_factory=list)
    wrong_session: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("latencies")
        if self.latencies:
            data["latency_p50_s"] = statistics.median(self.latencies)
            data["latency_max_s"] = max(self.latencies)
        return data


def _text(message) -> str:
    content = message["content"]
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def run_sessions(url: str, sessions: int, turns: int = 1, max_new_tokens: int = 16) -> LoadResult:
    """Run `sessions` concurrent users, each sending `turns` messages; count what happened to every request."""
    result = LoadResult(sessions)
    lock = threading.Lock()
    start_gate = threading.Barrier(sessions)

    def user(index: int) -> None:
        client = Client(url, verbose=False)
        start_gate.wait()
        for turn in range(turns):
            marker = f"session-{index}-turn-{turn}"
            started = time.perf_counter()
            with lock:
                result.requests += 1
            try:
                client.predict(f"Explain {marker}", api_name="/chat_add_message")
                history = client.predict("", max_new_tokens, False, 0.7, 0.9, 50, 1.0, 0, None,
                                         api_name="/chat_respond")
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    if "queue is full" in str(exc).lower():  # Gradio's queue refusing cleanly (QueueError)
                        result.refused_busy += 1
                    else:
                        result.failed.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            users = [_text(m) for m in history if m["role"] == "user"]
            own = [f"session-{index}-turn-{t}" for t in range(turn + 1)]
            mine = all(any(o in u for u in users) for o in own) and len(users) == turn + 1
            strangers = any(f"session-{j}-" in u for u in users for j in range(sessions) if j != index)
            with lock:
                result.latencies.append(time.perf_counter() - started)
                if mine and not strangers and history[-1]["role"] == "assistant":
                    result.answered += 1
                else:
                    result.wrong_session += 1

    threads = [threading.Thread(target=user, args=(i,)) for i in range(sessions)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    result.seconds = time.perf_counter() - started
    return result


def load_over_http(url: str, model: str, mode: str, device_map: str) -> dict:
    """Load `model` as the Model tab does; returns the status line and the load report."""
    status, report, *_ = Client(url, verbose=False).predict(
        model=model, revision="", token="", mode=mode, skip_modules="", device_map=device_map, max_memory="",
        api_name="/load_model")
    return {"status": status, "report": report}


def server_memory() -> dict:
    import torch

    from quant.report import process_rss

    memory = {"rss_mib": process_rss() / 2**20}
    if torch.cuda.is_available():
        memory["gpu_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="a running app's URL, or `serve`")
    parser.add_argument("--model", default="demo:tiny-llama-chat", help="with `serve`: the model to load")
    parser.add_argument("--mode", default="nf4", help="with `serve`")
    parser.add_argument("--device-map", default="auto", help="with `serve`")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.url != "serve":
        summary = run_sessions(args.url, args.sessions, args.turns, args.max_new_tokens).summary()
    else:
        import gc

        from app import serve_in_process

        with serve_in_process() as url:
            loaded = load_over_http(url, args.model, args.mode, args.device_map)
            print(loaded["status"], flush=True)
            before = server_memory()
            summary = run_sessions(url, args.sessions, args.turns, args.max_new_tokens).summary()
            gc.collect()
            summary |= {"model": args.model, "mode": args.mode, "load": loaded, "memory_before": before,
                        "memory_after": server_memory()}
    print(json.dumps({k: v for k, v in summary.items() if k != "load"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
