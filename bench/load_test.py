"""Drive a running app from many concurrent gradio_client sessions, as many browser users would (the driver,
`app_client.run_sessions`, lives beside app.py: tests/app/test_load.py uses it too).

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

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app_client import load_over_http, run_sessions  # noqa: E402
from bench.common import bench_parser, write_json  # noqa: E402


def server_memory() -> dict:
    import torch

    from quant.report import process_rss

    memory = {"rss_mib": process_rss() / 2**20}
    if torch.cuda.is_available():
        memory["gpu_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
    return memory


def main() -> None:
    parser = bench_parser(__doc__, out=None, model="demo:tiny-llama-chat", mode="nf4", device_map="auto",
                          helps={"out": "the JSON file to write (a file, not a folder: this result has no table)",
                                 "model": "with `serve`: the model to load", "mode": "with `serve`",
                                 "device_map": "with `serve`"})
    parser.add_argument("url", help="a running app's URL, or `serve`")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
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
        write_json(args.out, summary)


if __name__ == "__main__":
    main()
