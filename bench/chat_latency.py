"""Does the Chat tab stream at the rate of the generation underneath? Time to first token and decode rate seen by an
HTTP client of the real app (gradio_client, streaming, in a process of its own) against
`quant.generation.stream_chat` called directly in the server's process, on the same loaded model, same greedy
prompts. Tokens and their timing come from the counts the generation reports (the Chat tab's "N tokens…" line), not
from re-encoding the text: a random-weight model's text does not encode back to its tokens.

    python bench/chat_latency.py --model demo:tiny-llama-chat --mode fp32 --out bench/results      # CPU
    python bench/chat_latency.py --browser --out bench/results          # also in Debian's chromium (Playwright)
    python bench/chat_latency.py --model /tmp/bench/llama-8b --mode bf16 --device-map cuda:0 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_parser, result_stem, write_json  # noqa: E402

PROMPTS = ["Explain what a generator is in Python.", "What does the with statement do?",
           "Describe how a class definition is executed.", "What is a decorator?"]


def direct(loaded, prompt: str, new_tokens: int) -> dict:
    """One reply through `stream_chat` in this process: the first chunk that carries a token, and the last."""
    from quant.generation import GenerationSettings, stream_chat

    started = time.perf_counter()
    first = last = None
    final = None
    for chunk in stream_chat(loaded, [{"role": "user", "content": prompt}],
                             settings=GenerationSettings(max_new_tokens=new_tokens)):
        now = time.perf_counter()
        if chunk.stats.new_tokens and first is None:
            first = now
        last, final = now, chunk
    return _row(final.text, final.stats.new_tokens, started, first, last, final.stats.path)


def over_http(url: str, prompt: str, new_tokens: int) -> dict:
    """One reply through the Chat tab's endpoints, as a browser gets it: the first update whose footer counts a token
    ("N tokens…", shown while the reply streams), and the update with the finished reply's statistics line."""
    from gradio_client import Client

    client = Client(url, verbose=False)  # a new session: a fresh conversation
    client.predict(prompt, api_name="/chat_add_message")
    submitted_at = time.time()  # wall clock: comparable with the server's log records, in another process
    started = time.perf_counter()
    job = client.submit("", new_tokens, False, 0.7, 0.9, 50, 1.0, 0, "", api_name="/chat_respond")
    first = last = None
    text = footer = ""
    for update in _updates(job):
        now = time.perf_counter()
        history = update[0] if isinstance(update, (list, tuple)) and isinstance(update[0], list) else update
        reply = history[-1] if history and history[-1]["role"] == "assistant" else None
        if reply is None:
            continue
        content = reply["content"]
        if isinstance(content, list):  # Gradio 6 sends message content as typed parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        text, footer = _split_footer(content)
        counted = re.match(r"(\d+) tokens", footer)
        if counted and int(counted.group(1)) and first is None:
            first, first_at = now, time.time()
        if "first token" in footer:  # the statistics line of the finished reply
            last, last_at = now, time.time()
    job.result()
    counted = re.match(r"(\d+) tokens", footer)
    row = _row(text, int(counted.group(1)) if counted else 0, started, first, last, footer)
    row.update(submitted_at=submitted_at, first_at=first_at if first else None, last_at=last_at if last else None)
    return row


def _updates(job, poll_s: float = 0.002):
    """A streaming job's updates as they arrive.

    Not `for update in job`: gradio_client 2.7's `Job.__next__` sleeps while it holds the lock that its SSE reader
    thread needs to hand over each message, so on a many-core host the reader waits, at random, for up to seconds
    (16-core H100 host: every update of a reply arrived together, 2.4 s after the server sent the first). Polling
    `job.outputs()` takes that lock only briefly. A browser has no such lock.
    """
    seen = 0
    while True:
        done = job.done()  # read before the outputs: nothing can be appended after done
        outputs = job.outputs()
        while seen < len(outputs):
            yield outputs[seen]
            seen += 1
        if done:
            return
        time.sleep(poll_s)


def _split_footer(content: str) -> tuple[str, str]:
    """The reply and the line under it ("---", then "*N tokens…*" while streaming or "*N tokens · first token …*"
    when done). A reply of only whitespace (random weights) comes back stripped, with the rule first."""
    match = re.search(r"(?:^|\n)---\n\*(\d+ tokens[^\n]*)\*\s*$", content)
    return (content[:match.start()], match.group(1)) if match else (content, "")


def http_client(url: str, new_tokens: int, runs: int) -> list[dict]:
    """Every prompt `runs` times over HTTP; the first pass (warming the connection pool and the queue) is marked."""
    rows = []
    for run in range(runs):
        for prompt in PROMPTS:
            rows.append({**over_http(url, prompt, new_tokens), "warm_up": run == 0})
    return rows


class _ServerTimeline(logging.Handler):
    """Collects the server's "chat reply started / first text / finished" log records of `quant.generation`."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for event in ("started", "first text", "finished"):
            if message.startswith(f"chat reply {event}") or message.startswith(f"chat reply: {event}"):
                self.events.append((event, record.created))

    def replies(self, since: float) -> list[dict]:
        replies = []
        for event, at in self.events:
            if at < since:
                continue
            if event == "started":
                replies.append({})
            if replies:
                replies[-1][event] = at
        return replies


def _where_the_time_went(rows: list[dict], replies: list[dict]) -> None:
    """Split each HTTP reply's time into: request to the server's start of generation (queue, Gradio, the handler's
    set-up), and the server's first text / finished reply to the client's receipt of it (delivery)."""
    if len(rows) != len(replies):
        print(f"warning: {len(rows)} HTTP replies but {len(replies)} server timelines; not split", file=sys.stderr)
        return
    for row, reply in zip(rows, replies):
        row["server_start_s"] = reply["started"] - row["submitted_at"] if "started" in reply else None
        row["first_delivery_s"] = (row["first_at"] - reply["first text"]
                                   if row.get("first_at") and "first text" in reply else None)
        row["last_delivery_s"] = (row["last_at"] - reply["finished"]
                                  if row.get("last_at") and "finished" in reply else None)
        row["server_whole_s"] = (reply["finished"] - reply["started"]
                                 if "finished" in reply and "started" in reply else None)


_WATCH_REPLY = """() => {
  // Times, on the page's own clock, the Send click, the first rendering of the reply (its running footer "N tokens…"
  // comes with the first text) and the finished footer ("… tok/s").
  const t = window.__reply = {clicked: null, first: null, done: null, text: ""};
  document.addEventListener("click", () => { if (t.clicked === null) t.clicked = performance.now(); },
                            {capture: true, once: true});
  const seen = () => {
    const bots = document.querySelectorAll('[data-testid="bot"]');
    if (!bots.length || t.clicked === null) return;
    const text = bots[bots.length - 1].innerText;
    if (t.first === null && /\\d+ tokens/.test(text)) t.first = performance.now();
    if (t.done === null && /tok\\/s/.test(text)) { t.done = performance.now(); t.text = text; observer.disconnect(); }
  };
  const observer = new MutationObserver(seen);
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


def browser_client(url: str, new_tokens: int, runs: int) -> list[dict]:
    """Every prompt `runs` times in a real browser (Debian's chromium through Playwright), each in a fresh page: from
    the click on Send to the reply's first rendering and to its finished footer, timed in the page."""
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        for run in range(runs):
            for prompt in PROMPTS:
                page = browser.new_page()
                page.set_default_timeout(120_000)
                page.goto(url, wait_until="domcontentloaded")
                page.get_by_role("tab", name="Chat").click()
                tab = page.get_by_role("tabpanel")
                page.get_by_role("button", name="Generation settings").click()
                box = tab.get_by_label("number input for Max new tokens", exact=True)
                slider = tab.get_by_label("range slider for Max new tokens", exact=True)
                for _ in range(4):  # a box in a just-opened accordion can be reset while it mounts: type again
                    box.fill(str(new_tokens))
                    box.press("Tab")
                    page.wait_for_timeout(200)
                    if slider.input_value() == str(new_tokens):
                        break
                tab.get_by_placeholder("Message").fill(prompt)
                page.evaluate(_WATCH_REPLY)
                page.get_by_role("button", name="Send", exact=True).click()
                page.wait_for_function("() => window.__reply.done !== null")
                t = page.evaluate("() => window.__reply")
                page.close()
                text, footer = t["text"].rsplit("\n", 1) if "\n" in t["text"] else ("", t["text"])
                footer = footer.strip()
                counted = re.match(r"(\d+) tokens", footer)
                server_rate = re.search(r"([\d.]+) tok/s", footer)
                row = _row(text.strip(), int(counted.group(1)) if counted else 0, t["clicked"] / 1000,
                           t["first"] / 1000, t["done"] / 1000, footer)  # the page's clock is in ms
                rows.append({**row, "server_tok_s": float(server_rate.group(1)) if server_rate else None,
                             "warm_up": run == 0})
        browser.close()
    return rows


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


def _row(text: str, tokens: int, started: float, first: float | None, last: float | None, path: str) -> dict:
    """Tokens are the generation's own count (re-encoding a random-weight model's text does not give it back)."""
    ttft = (first - started) if first else None
    rate = (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None
    whole = (last - started) if last else None  # request to complete reply: no throttling window can hide in it
    return {"tokens": tokens, "ttft_s": ttft, "tok_s": rate, "whole_s": whole, "path": path, "text": text}


def main() -> None:
    parser = bench_parser(__doc__, out=None, tag="", model="demo:tiny-llama-chat", mode="fp32", device_map="auto",
                          new_tokens=64, helps={"out": "folder for the result file (<stem>.json); required"})
    parser.add_argument("--runs", type=int, default=3, help="passes over the prompts (the first is a warm-up)")
    parser.add_argument("--switch-interval", type=float, help="the server process's sys.setswitchinterval (s)")
    parser.add_argument("--browser", action="store_true",
                        help="also time the tab in Debian's chromium (Playwright): click to first rendering")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # the HTTP client's own process
    args = parser.parse_args()
    if args.client:
        measured = {"noop": _noop_round_trip(args.client), "rows": http_client(args.client, args.new_tokens, args.runs)}
        if args.browser:
            measured["browser"] = browser_client(args.client, args.new_tokens, args.runs)
        print(json.dumps(measured))
        return
    if args.out is None:
        parser.error("--out is required")

    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    import torch
    from quant.loader import LoadRequest
    from quant.registry import default_registry
    from app import serve_in_process

    loaded = default_registry().load(LoadRequest(model=args.model, mode=args.mode, device_map=args.device_map))
    timeline = _ServerTimeline()
    generation_log = logging.getLogger("quant.generation")
    generation_log.setLevel(logging.DEBUG)
    generation_log.addHandler(timeline)
    generation_log.propagate = False
    rows = {"direct": [], "http": []}
    with serve_in_process() as url:
        for run in range(args.runs):  # the first pass warms caches: dropped
            for prompt in PROMPTS:
                row = direct(loaded, prompt, args.new_tokens)
                if run:
                    rows["direct"].append(row)
        # The client in a process of its own, as a browser is: in this one it would compete with the server for the
        # interpreter lock, and the measurement would show that rather than the app.
        client_started = time.time()
        client = subprocess.run([sys.executable, __file__, "--client", url, "--new-tokens", str(args.new_tokens),
                                 "--runs", str(args.runs), *(["--browser"] if args.browser else [])],
                                capture_output=True, text=True, timeout=1800)
        if client.returncode:
            raise SystemExit(f"the HTTP client failed:\n{client.stderr[-3000:]}")
        measured = json.loads(client.stdout.strip().splitlines()[-1])
        # the HTTP client's replies come first, then the browser's
        _where_the_time_went(measured["rows"], timeline.replies(since=client_started)[:len(measured["rows"])])
        rows["http"], noop = [r for r in measured["rows"] if not r["warm_up"]], measured["noop"]
        if args.browser:
            rows["browser"] = [r for r in measured["browser"] if not r["warm_up"]]
    for d, h in zip(rows["direct"], rows["http"]):
        assert d["text"].strip() == h["text"].strip() and d["tokens"] == h["tokens"], \
            f"the UI showed a different reply:\n{d}\n{h}"
    for d, b in zip(rows["direct"], rows.get("browser", [])):  # rendered markdown: compare the counts only
        assert d["tokens"] == b["tokens"], f"the browser showed a different reply:\n{d}\n{b}"

    def median(kind: str, key: str) -> float | None:
        values = [r[key] for r in rows[kind] if r.get(key) is not None]
        return statistics.median(values) if values else None

    summary = {"model": args.model, "mode": args.mode, "device": torch.cuda.get_device_name(0)
               if torch.cuda.is_available() else "cpu", "generation_path": loaded.path.describe(),
               "new_tokens": args.new_tokens, "samples": len(rows["direct"]),
               "switch_interval_s": sys.getswitchinterval(),
               **{f"{kind}_{key}": median(kind, key) for kind in rows for key in ("ttft_s", "tok_s", "whole_s")},
               **{f"http_{key}": median("http", key)
                  for key in ("server_start_s", "first_delivery_s", "last_delivery_s", "server_whole_s")}}
    summary["http_over_direct_tok_s"] = summary["http_tok_s"] / summary["direct_tok_s"]
    summary["http_minus_direct_ttft_s"] = summary["http_ttft_s"] - summary["direct_ttft_s"]
    summary["http_over_direct_whole"] = summary["http_whole_s"] / summary["direct_whole_s"]
    if "browser" in rows:
        summary["browser_over_direct_tok_s"] = summary["browser_tok_s"] / summary["direct_tok_s"]
        summary["browser_minus_direct_ttft_s"] = summary["browser_ttft_s"] - summary["direct_ttft_s"]
        # the server's own rate for the same replies (their footers): a browser on the same CPUs slows generation
        summary["browser_server_tok_s"] = median("browser", "server_tok_s")
    summary["http_noop_round_trip_s"] = noop  # what any call costs through gradio_client here, generation aside
    stem = result_stem("chat-latency", summary["device"].replace(" ", "-").lower(), args.mode, str(args.new_tokens),
                       tag=args.tag)
    write_json(args.out / f"{stem}.json", {"summary": summary, "rows": rows})
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
