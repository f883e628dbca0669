"""The running app driven over HTTP by gradio_client, as browser users would drive it: many concurrent chat sessions
(`run_sessions`) and a load through the Model tab's API (`load_over_http`).

It lives beside app.py, not in bench/ nor in tests/, because it is a client of the app's own endpoints
(/chat_add_message, /chat_respond, /load_model): whoever changes their parameters in app.py finds it here. Both
users import it from here: tests/app/test_load.py (the many-sessions checks, against `app.serve_in_process`) and
bench/load_test.py (the same load at other sizes, with the server's memory); tests import nothing from bench/. Like
app.py it is not part of `quant`, which imports no Gradio.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

from gradio_client import Client


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
    """Run `sessions` concurrent users, each sending `turns` messages; count what happened to every request.

    Each session loads nothing (it uses the model already loaded on the server), sends its own numbered message and
    streams a reply. Every request must be answered or refused cleanly by the queue; a reply must land in the session
    that asked (each session's conversation must hold its own message and no other session's)."""
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
    # By name (LoadForm's fields): the fields not named take the Model tab's starting values.
    status, report, *_ = Client(url, verbose=False).predict(model=model, mode=mode, device_map=device_map,
                                                            api_name="/load_model")
    return {"status": status, "report": report}
