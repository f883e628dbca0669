"""Is a chat starved while a Batch job runs on the same model? (issue 26: "a chat on the same model while a batch job
runs is not starved: its first token within 1 s").

One load (the app's registry). First a few chats alone (`quant.generation.stream_chat`, greedy): time to the first
token. Then, per batch engine, a Batch job (`quant.batching.run_batch`, forced to that engine) runs in a thread of its
own, as the Batch tab runs it, and once it has started generating the same chats run one after another: time to
their first token while the job runs (a chat whose first token came after the job ended is flagged, not counted).
The job is stopped after the chats.

    python bench/chat_during_batch.py --shape 8b --mode bf16 --device-map cuda:0 --prompts 128 --new-tokens 128 \\
        --batch-size 32 --out bench/results                                                      # the GPU run
    python bench/chat_during_batch.py --model demo:tiny-llama-chat --mode fp32 --device-map cpu --prompts 64 \\
        --new-tokens 64 --batch-size 8 --out /tmp/chat-during-batch                              # a CPU check
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import WORK, bench_parser, result_stem, write_results  # noqa: E402
from quant.batching import run_batch  # noqa: E402
from quant.generation import GenerationSettings, stream_chat  # noqa: E402
from quant.gptq import builtin_textsets  # noqa: E402
from quant.loader import LoadRequest  # noqa: E402
from quant.registry import ModelRegistry  # noqa: E402

GOAL_S = 1.0
CHATS = ["What does the with statement do?", "Explain a generator in one paragraph.",
         "When should I use a dataclass?", "What is a context manager?", "How do I read a file line by line?"]


def batch_prompts(count: int, seed_words: int = 40) -> list[tuple[int, str]]:
    """Ragged prompts from the built-in reference text: 1x to 8x `seed_words` words."""
    words = builtin_textsets()["python-reference"].read_text().split()
    prompts = []
    for i in range(count):
        length = seed_words * (1 + i % 8)
        start = (i * 211) % max(1, len(words) - length)
        prompts.append((i + 1, " ".join(words[start:start + length])))
    return prompts


def first_token(loaded, prompt: str, new_tokens: int) -> tuple[float, float, str]:
    """A whole chat of `new_tokens`: seconds to its first token (the streamer's clock, from the reply's submission to
    the model's path), seconds to its first text (a random-weight model's tokens often decode to nothing: text may
    come several tokens later, so that is not the first token), and the path that served it ("eager" while it
    yields to a compiled batch)."""
    started = time.perf_counter()
    first_text, last = float("nan"), None
    for chunk in stream_chat(loaded, [{"role": "user", "content": prompt}],
                             settings=GenerationSettings(max_new_tokens=new_tokens)):
        if chunk.text and math.isnan(first_text):
            first_text = time.perf_counter() - started
        last = chunk
    ttft = last.stats.time_to_first_token if last and last.stats.time_to_first_token is not None else float("nan")
    return ttft, first_text, last.stats.path if last else ""


def during(loaded, engine: str, args) -> dict:
    stop = threading.Event()
    state = {"started": None, "ended": None, "done": 0, "error": None, "engine": None}

    def job():
        try:
            for progress in run_batch(loaded, batch_prompts(args.prompts),
                                      GenerationSettings(max_new_tokens=args.new_tokens), batch_size=args.batch_size,
                                      stop=stop, engine=engine):
                state["done"] = progress.done
                state["engine"] = progress.totals()
        except Exception as exc:  # noqa: BLE001 - a failing job is a result row
            state["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            state["ended"] = time.perf_counter()

    state["started"] = time.perf_counter()
    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    time.sleep(args.head_start)  # the job is generating
    chats = []
    for prompt in CHATS[:args.chats]:
        seconds, text_seconds, path = first_token(loaded, prompt, args.chat_tokens)
        chats.append({"prompt": prompt, "first_token_s": seconds, "first_text_s": text_seconds, "path": path,
                      "while_job_ran": state["ended"] is None})
    stop.set()
    thread.join()
    counted = [c["first_token_s"] for c in chats if c["while_job_ran"]]
    texts = [c["first_text_s"] for c in chats if c["while_job_ran"] and not math.isnan(c["first_text_s"])]
    return {"engine": engine, "chats": chats, "prompts_done_at_stop": state["done"], "error": state["error"],
            "job": state["engine"], "median_s": statistics.median(counted) if counted else None,
            "first_text_median_s": statistics.median(texts) if texts else None,
            "max_s": max(counted) if counted else None, "counted": len(counted),
            "paths": sorted({c["path"] for c in chats if c["while_job_ran"]})}


def markdown(data: dict) -> str:
    jobs = max(row.get("job_number", 1) for row in data["engines"])
    lines = [f"# A chat during a Batch job on the same model: {data['model']} [{data['mode']}]", "",
             f"Batch job: {data['prompts']} ragged prompts, {data['new_tokens']} new tokens, batch size "
             f"{data['batch_size']}; chats: {len(data['alone_s'])} one after another, {data['chat_tokens']} new "
             f"tokens, greedy; generation path: {data['generation_path']}. First token: the streamer's clock, from the "
             "reply's submission to its first generated token; first text: when the reply's first visible text reached "
             "the caller (a random-weight model's tokens often decode to nothing). Chats alone ran on the "
             f"{data['alone_path']} path."
             + ("" if "chats_first" not in data else  # the ninth session's experiment, since removed
                f" Chats first (batch work paused while a chat waited; removed since): "
                f"{'on' if data['chats_first'] else 'off'}."), "",
             "| batch engine | chat first token alone, median s | during the job, median s | max s | first text during "
             f"the job, median s | chats counted | chat path during the job | goal <= {GOAL_S:.0f} s | job |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in data["engines"]:
        verdict = "n/a" if row["max_s"] is None else ("met" if row["max_s"] <= GOAL_S else "NOT met")
        engine = row["engine"] + (f", job {row['job_number']}" if jobs > 1 else "")
        seconds = [row[key] if row[key] is None else format(row[key], ".3f")
                   for key in ("median_s", "max_s", "first_text_median_s")]
        lines.append(f"| {engine} | {data['alone_median_s']:.3f} | {' | '.join(str(s) for s in seconds)} | "
                     f"{row['counted']} | "
                     f"{', '.join(row.get('paths', []))} | {verdict} | {row['error'] or row['job']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=WORK / "chat-during-batch", tag="", model="demo:tiny-llama-chat", shape=None,
                          mode="bf16", device_map="auto", new_tokens=64)
    parser.add_argument("--engines", default="continuous,padded")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chats", type=int, default=5)
    parser.add_argument("--chat-tokens", type=int, default=16)
    parser.add_argument("--head-start", type=float, default=1.0, help="seconds the job runs before the first chat")
    parser.add_argument("--jobs", type=int, default=1,
                        help="jobs per engine, one after another: the first padded job of a compiled model compiles "
                             "its batch size (the chats meet the compile), the next ones run it compiled")
    args = parser.parse_args()
    model = args.model
    if args.shape:
        from bench.llama_shapes import build_checkpoint

        model = str(build_checkpoint(args.shape, WORK / f"llama-{args.shape}",
                                     device="cuda" if args.device_map.startswith("cuda") else "cpu"))
    registry = ModelRegistry(max_models=1)
    loaded = registry.load(LoadRequest(model=model, mode=args.mode, device_map=args.device_map))
    first_token(loaded, CHATS[0], 4)  # warm-up
    alone_chats = [first_token(loaded, prompt, args.chat_tokens) for prompt in CHATS[:args.chats]]
    alone = [seconds for seconds, _, _ in alone_chats]
    rows = []
    for engine in args.engines.split(","):
        for job in range(1, args.jobs + 1):
            rows.append({**during(loaded, engine, args), "job_number": job})
    data = {"model": model, "mode": args.mode, "generation_path": loaded.path.describe(), "prompts": args.prompts,
            "new_tokens": args.new_tokens, "batch_size": args.batch_size, "chat_tokens": args.chat_tokens,
            "alone_s": alone, "alone_median_s": statistics.median(alone), "alone_path": alone_chats[0][2],
            "goal_s": GOAL_S, "engines": rows}
    write_results(args.out, result_stem("chat-during-batch", Path(model).name.replace("demo:", ""), args.mode,
                                        tag=args.tag), data, markdown)


if __name__ == "__main__":
    main()
