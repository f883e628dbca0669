"""`python -m quant ...`: the app's work without a browser. Errors print one clear line and exit with status 2."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import traceback
from typing import Callable, Iterator, TextIO

from .errors import QuantError
from .loader import LoadRequest
from .forms import GenerationForm, LoadForm, QuantizeForm, add_option_arguments
from .methods import GPTQ_BACKENDS, METHODS, quantize_methods

DEVICE_MAP_HELP = "auto, balanced, balanced_low_0, sequential, cpu, cuda:N, tensor_parallel"
"""--device-map's choices, for `load`-style commands and `plan`."""


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that say how to load a model, shared by every subcommand that loads one; each method's own flags
    come from its options (quant.methods)."""
    parser.add_argument("model", help="Hub id (org/name), local folder, or demo:<name>")
    parser.add_argument("--mode", default="bf16", choices=list(METHODS))
    parser.add_argument("--revision", help="branch, tag or commit on the Hub")
    parser.add_argument("--device-map", default="auto", help=DEVICE_MAP_HELP)
    parser.add_argument("--max-memory", help='per-device limits, e.g. "0=20GiB,cpu=30GiB"')
    parser.add_argument("--attn", dest="attn_implementation",
                        help="attention implementation: sdpa, eager, flash_attention_2, flex_attention "
                             "(default: flash_attention_2 where installed on a GPU, else sdpa)")
    add_option_arguments(parser)


def load_request_from_args(args: argparse.Namespace) -> LoadRequest:
    return LoadForm.from_args(args).to_request()


def _stderr_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def cmd_load(args: argparse.Namespace) -> int:
    from .loader import load_model

    loaded = load_model(load_request_from_args(args), progress=None if args.json else _stderr_progress)
    print(json.dumps(loaded.report.to_dict(), indent=2) if args.json else loaded.report.to_text(), file=args.results)
    return 0


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=256)
    group.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=0.7)
    group.add_argument("--top-p", type=float, default=0.9)
    group.add_argument("--top-k", type=int, default=50)
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--no-repeat-ngram-size", type=int, default=0)
    group.add_argument("--seed", type=int)
    group.add_argument("--system", help="system prompt")


def generation_settings_from_args(args: argparse.Namespace):
    return GenerationForm.from_args(args).to_settings()


def cmd_chat(args: argparse.Namespace) -> int:
    """Interactive chat streaming to the terminal. Ctrl-C stops a reply; /reset clears; /exit or EOF quits."""
    import threading

    from .generation import stream_chat
    from .loader import load_model

    settings = generation_settings_from_args(args)
    loaded = load_model(load_request_from_args(args), progress=_stderr_progress)
    print(f"{loaded.label} ready. /reset clears the conversation, /exit quits.", file=sys.stderr)
    history: list[dict] = []
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            return 0
        if message in {"/exit", "/quit"}:
            return 0
        if message == "/reset":
            history = []
            continue
        if not message:
            continue
        history.append({"role": "user", "content": message})
        stop = threading.Event()
        print("assistant> ", end="", flush=True)
        shown = ""
        chunk = None
        try:
            for chunk in stream_chat(loaded, history, system_prompt=args.system, settings=settings, stop=stop):
                print(chunk.text[len(shown):], end="", flush=True)
                shown = chunk.text
        except KeyboardInterrupt:
            stop.set()
        print()
        if chunk is not None:
            for notice in chunk.notices:
                print(f"note: {notice}", file=sys.stderr)
            print(f"[{chunk.stats.summary()}]", file=sys.stderr)
        history.append({"role": "assistant", "content": shown})


def cmd_batch(args: argparse.Namespace) -> int:
    """Run a prompt file on the model's batching engine (quant.batching) and write the results (.jsonl or .csv by
    the output's extension)."""
    from pathlib import Path

    from tqdm import tqdm

    from .batching import run_batch
    from .loader import load_model
    from .prompts import read_prompt_file, write_results

    settings = generation_settings_from_args(args)
    prompts = read_prompt_file(args.input, args.column)
    output = Path(args.output)
    if output.suffix.lower() not in {".jsonl", ".csv"}:
        print("error: --output must end in .jsonl or .csv", file=sys.stderr)
        return 2
    loaded = load_model(load_request_from_args(args), progress=_stderr_progress)
    bar = tqdm(total=len(prompts), unit="prompt", file=sys.stderr)
    result = None
    for result in run_batch(loaded, prompts, settings, batch_size=args.batch_size,
                            use_chat_template=args.chat_template, system_prompt=args.system):
        bar.update(result.done - bar.n)
    bar.close()
    csv_path, jsonl_path = write_results(result.rows, output.parent, output.stem)
    (jsonl_path if output.suffix.lower() == ".csv" else csv_path).unlink()
    print(result.totals(), file=sys.stderr)
    failed = [r for r in result.rows if r.error]
    for row in failed:
        print(f"line {row.line}: {row.error}", file=sys.stderr)
    if args.json:
        print(json.dumps({"output": str(output), "prompts": result.total, "done": result.done,
                          "generated_tokens": result.generated_tokens, "seconds": round(result.seconds, 3),
                          "engine": result.engine.engine, "engine_reason": result.engine.reason,
                          "failed": [{"line": r.line, "error": r.error} for r in failed]}, indent=2), file=args.results)
    else:
        print(output, file=args.results)
    return 1 if failed else 0


def _tqdm_progress(total_label: str):
    """A progress callback (fraction, message) drawn as a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=total_label, file=sys.stderr, bar_format="{l_bar}{bar}| {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message[:60])
        bar.refresh()

    return bar, update


class LayerErrorLines:
    """The calibrated methods' per-layer quantization error, one line per layer as layers finish (the Quantize tab's
    live plot, for a terminal). A layer is printed once a later layer has rows (or at `flush`), so each line is whole.
    """

    def __init__(self, write) -> None:
        self.write = write
        self.printed = -1

    def __call__(self, errors: list[dict]) -> None:
        if errors:
            self._print(errors, below=max(e["layer"] for e in errors))

    def flush(self, errors: list[dict]) -> None:
        self._print(errors, below=None)

    def _print(self, errors: list[dict], below: int | None) -> None:
        layers = sorted({e["layer"] for e in errors
                         if e["layer"] > self.printed and (below is None or e["layer"] < below)})
        for layer in layers:
            rows = [e for e in errors if e["layer"] == layer]
            losses = [e for e in rows if e["loss"] is not None]
            if losses:
                worst = max(losses, key=lambda e: e["loss"])
                mean = sum(e["loss"] for e in losses) / len(losses)
                self.write(f"layer {layer:>3}: {len(rows)} modules, error mean {mean:.3e}, max {worst['loss']:.3e} "
                           f"({worst['module']})")
            else:
                self.write(f"layer {layer:>3}: {len(rows)} modules, no error reported")
            self.printed = layer


def cmd_quantize(args: argparse.Namespace) -> int:
    """Quantize (GPTQ, AWQ, HQQ, torchao, bitsandbytes), save with a model card, print the comparison; the calibrated
    methods print each layer's quantization error as it finishes."""
    from .quantize import quantize

    form = QuantizeForm.from_args(args)
    recipe, calibration = form.recipe(), form.calibration()
    bar, update = _tqdm_progress("quantize")
    lines = LayerErrorLines(lambda line: bar.write(line, file=sys.stderr))
    try:
        result = quantize(form.model, method=form.method, recipe=recipe, calibration=calibration,
                          out_dir=args.out, revision=form.revision, evaluate=not args.no_eval, progress=update,
                          on_layer_errors=lines)
        lines.flush(result.layer_errors)
    finally:
        bar.close()
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2), file=args.results)
        return 0
    for name, size, ppl in result.comparison_rows():
        print(f"{name:<22} {size:>10} MiB   perplexity {ppl}", file=args.results)
    if result.quality:
        print(f"next-token quality vs the original: {result.quality['verdict']}", file=args.results)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"saved to {result.out_dir} in {result.seconds:.0f} s" + (f" (loads as {result.kernel})" if result.kernel else ""),
          file=args.results)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Push a quantized folder; the token comes from HF_TOKEN or the stored Hugging Face login."""
    from huggingface_hub import get_token

    from .hub import push_folder

    bar, update = _tqdm_progress("push")
    try:
        result = push_folder(args.folder, args.repo, token=get_token(), private=args.private,
                             overwrite=args.overwrite, progress=update)
    finally:
        bar.close()
    print(json.dumps({"repo_id": result.repo_id, "url": result.url, "commit": result.commit}, indent=2) if args.json
          else result.url, file=args.results)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Measure MODEL in each mode (bf16,int8,nf4,gptq:DIR...) and print a table; --json writes the full result."""
    import torch

    from .compare import Comparison, compare, parse_mode_specs, write_json
    from .registry import ModelRegistry

    on_cuda = torch.cuda.is_available() and not str(args.device_map or "").startswith("cpu")
    specs = parse_mode_specs(args.model, args.modes, args.gptq_backend, on_cuda=on_cuda)
    prompts = None
    if args.prompts:
        from .prompts import read_prompt_file

        prompts = [text for _, text in read_prompt_file(args.prompts)]
    bar, update = _tqdm_progress("compare")
    results = []
    try:
        for result in compare(args.model, specs, registry=ModelRegistry(max_models=1), prompts=prompts,
                              batch_size=args.batch_size, new_tokens=args.new_tokens, device_map=args.device_map,
                              max_memory=args.max_memory,
                              progress=update):
            results.append(result)
    finally:
        bar.close()
    table = sys.stderr if args.json == "-" else args.results  # `--json -`: stdout holds the JSON alone
    header = (f"{'mode':<24}{'MiB':>9}{'load s':>8}{'TTFT s':>8}{'b1 tok/s':>10}{'batch tok/s':>12}{'ppl':>9}"
              "  generation path")
    print(header, file=table)
    for r in results:
        if r.error:
            print(f"{r.label:<24} failed: {r.error}", file=table)
            continue
        print(f"{r.label:<24}{r.footprint_bytes / 2**20:>9.1f}{r.load_seconds:>8.2f}{r.time_to_first_token_s:>8.3f}"
              f"{r.decode_tokens_per_s:>10.1f}{r.batch_tokens_per_s:>12.1f}"
              f"{(r.perplexity if r.perplexity is not None else float('nan')):>9.2f}  {r.generation_path}", file=table)
    kept = [(r, group) for r in results if not r.error for group in r.kept]
    if kept:
        from .kept import kept_label

        print("\nleft out of the mode (unquantized or wider dtype):", file=table)
        for r, group in kept:
            print(f"{r.label:<24}{kept_label(r.mode)}: {group['text']}", file=table)
    quality = [r for r in results if not r.error and r.reference]
    if quality:
        r0 = quality[0]
        print(f"\nnext-token quality vs {r0.reference} ({r0.quality_positions} positions, windows of "
              f"{r0.quality_window} tokens, stride {r0.quality_stride}):", file=table)
        for r in quality:
            print(f"{r.label:<24}ppl ×{r.perplexity_ratio or float('nan'):.3f}  KL p99 {r.kl_p99:.4f}  "
                  f"Δp mean {r.dp_mean:+.4f}  Δp p1 {r.dp_p1:+.4f}  {r.verdict}", file=table)
    elif results and results[0].quality_error:
        print(f"\nno next-token quality: {results[0].quality_error}", file=table)
    if args.json:
        from .compare import DEFAULT_PROMPTS

        comparison = Comparison(args.model, prompts or list(DEFAULT_PROMPTS), args.batch_size, args.new_tokens,
                                "cuda" if torch.cuda.is_available() else "cpu", results)
        if args.json == "-":
            print(json.dumps(comparison.to_json(), indent=1), file=args.results)
        else:
            print(f"wrote {write_json(comparison, args.json)}", file=sys.stderr)
    return 1 if any(r.error for r in results) else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Whether MODEL fits, per mode and per device, before loading anything (quant.planner)."""
    from .planner import plan_model

    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    plan = plan_model(args.model, revision=args.revision, device_map=args.device_map, max_memory=args.max_memory,
                      modes=modes, placements_mode=args.placements)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.to_text(), file=args.results)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quant", description="Quantization Playground, headless.")
    commands = parser.add_subparsers(dest="command", required=True)

    load = commands.add_parser("load", help="load a model in a mode and print the load report")
    add_load_arguments(load)
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    load.set_defaults(func=cmd_load)

    chat = commands.add_parser("chat", help="chat with a model in the terminal (streams)")
    add_load_arguments(chat)
    add_generation_arguments(chat)
    chat.set_defaults(func=cmd_chat)

    batch = commands.add_parser("batch", help="run a file of prompts in batches")
    add_load_arguments(batch)
    add_generation_arguments(batch)
    batch.add_argument("--input", required=True, help=".txt (one prompt a line), .csv or .jsonl")
    batch.add_argument("--output", required=True, help="results file: .jsonl or .csv")
    batch.add_argument("--column", help="CSV column / JSONL field holding the prompt (default: prompt)")
    batch.add_argument("--batch-size", type=int, default=8, help="most prompts generating at once")
    batch.add_argument("--chat-template", action="store_true", help="wrap each prompt in the chat template")
    batch.add_argument("--json", action="store_true", help="print a JSON summary (the output file, counts, failures)")
    batch.set_defaults(func=cmd_batch)

    plan = commands.add_parser("plan", help="before loading: does the model fit, per mode and per device?")
    plan.add_argument("model", help="Hub id (org/name), local folder, or demo:<name>; only its config is read")
    plan.add_argument("--revision", help="branch, tag or commit on the Hub")
    plan.add_argument("--device-map", default="auto", help=DEVICE_MAP_HELP)
    plan.add_argument("--max-memory", help='per-device budgets, also for GPUs this machine lacks: "0=80GiB,1=80GiB" '
                                           "(default: the free memory of the GPUs present, and the available RAM)")
    plan.add_argument("--modes", help="comma-separated modes (default: every mode that loads this checkpoint)")
    plan.add_argument("--placements", metavar="MODE",
                      help="also list the placements MODE has on these GPUs (one GPU, split, tensor parallel) and "
                           "what each costs")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=cmd_plan)

    quantize = commands.add_parser("quantize", help="quantize a model and save it with a model card")
    quantize.add_argument("model", help="Hub id, local folder or demo:<name> of an unquantized model")
    quantize.add_argument("--revision")
    quantize.add_argument("--method", default="gptq", choices=quantize_methods())
    quantize.add_argument("--bits", type=int, default=4, choices=[2, 3, 4, 8])
    quantize.add_argument("--group-size", type=int, default=128, help="-1 for per-column")
    quantize.add_argument("--desc-act", action="store_true", help="act-order")
    quantize.add_argument("--asym", action="store_true", help="asymmetric quantization")
    quantize.add_argument("--damp-percent", type=float, default=0.05)
    quantize.add_argument("--samples", type=int, default=128, help="calibration samples")
    quantize.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample")
    quantize.add_argument("--calibration", help=".txt or .jsonl file (default: the built-in text set)")
    quantize.add_argument("--out", help="output folder (default: outputs/<model>-GPTQ-<bits>bit-g<size>-<time>)")
    quantize.add_argument("--no-eval", action="store_true", help="skip the perplexity check")
    quantize.add_argument("--json", action="store_true")
    quantize.set_defaults(func=cmd_quantize)

    cmp = commands.add_parser("compare", help="measure a model in several modes side by side")
    cmp.add_argument("model")
    cmp.add_argument("--modes", default="bf16,int8,nf4",
                     help="e.g. bf16,int8,nf4,fp4,gptq:DIR,eager:bf16; all: every mode that runs here")
    cmp.add_argument("--gptq-backend", choices=list(GPTQ_BACKENDS))
    cmp.add_argument("--prompts", help="a .txt/.csv/.jsonl file of prompts (default: built-in)")
    cmp.add_argument("--batch-size", type=int, default=8)
    cmp.add_argument("--new-tokens", type=int, default=32)
    cmp.add_argument("--device-map", default="auto")
    cmp.add_argument("--max-memory", help='per-device limits for every mode, e.g. "0=20GiB, 1=20GiB, cpu=64GiB"')
    cmp.add_argument("--json", help="write the full comparison as JSON to this file ('-': to stdout)")
    cmp.set_defaults(func=cmd_compare)

    push = commands.add_parser("push", help="push a quantized folder to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("--repo", required=True, help="user/name")
    push.add_argument("--private", action="store_true")
    push.add_argument("--overwrite", action="store_true", help="push on top of an existing repo")
    push.add_argument("--json", action="store_true", help="print the repo id, URL and commit as JSON")
    push.set_defaults(func=cmd_push)
    return parser


@contextlib.contextmanager
def results_only_on_stdout() -> Iterator[TextIO]:
    """Yield the stream a command's results go to, and send everything else written to stdout to stderr meanwhile.

    Libraries print banners and log lines on stdout (gptqmodel does at import), which would break `--json | jq`.
    When stdout is the process's file descriptor 1, the descriptor itself is pointed at stderr (C code and loggers
    that hold the original stream included) and results go to a duplicate of it; otherwise (a caller that captured
    sys.stdout) Python's own stdout is redirected.
    """
    results = sys.stdout
    try:
        is_fd1 = results.fileno() == 1
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        is_fd1 = False
    if not is_fd1:
        with contextlib.redirect_stdout(sys.stderr):
            yield results
        return
    results.flush()
    saved = os.dup(1)
    stream = os.fdopen(os.dup(saved), "w", encoding=results.encoding or "utf-8", errors="replace")
    os.dup2(sys.stderr.fileno(), 1)
    try:
        yield stream
    finally:
        stream.flush()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        stream.close()


def _unexpected(exc: BaseException) -> str:
    """One line for an error nobody foresaw; its traceback goes to a log file that the line names."""
    folder = os.path.join(tempfile.gettempdir(), "quant-playground")
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "cli-errors.log")
        with open(path, "a", encoding="utf-8") as log:
            log.write("".join(traceback.format_exception(exc)) + "\n")
        where = f" (traceback in {path})"
    except OSError:
        where = ""
    logging.getLogger("quant.cli").debug("unexpected error", exc_info=exc)
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"unexpected {type(exc).__name__}: {first}{where}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if argv is None:  # a process of its own (python -m quant): its imports are done, no model is loaded yet
        from .loader import freeze_startup_objects

        freeze_startup_objects()
    # chat talks to the terminal; every other command keeps stdout for its results alone
    redirect = contextlib.nullcontext(sys.stdout) if args.command == "chat" else results_only_on_stdout()
    with redirect as out:
        args.results = out
        try:
            return func(args)
        except QuantError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback on the terminal
            print(f"error: {_unexpected(exc)}", file=sys.stderr)
            return 2
