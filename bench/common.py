"""What every bench script shares: its command line's common arguments, how a result is named, and how it is written.

- `bench_parser(__doc__, out=REQUIRED, tag="", model=..., ...)`: an argument parser with the common arguments this
  script takes, each with this script's own default (they differ: the demo model on the CPU, a Llama shape on the
  GPU), so every command line in README.md and the notes keeps working. An argument left out is not added.
- `result_stem("gpu-bench", "1b", tag=args.tag)`: the parts joined by "-", then the tag as given (`--tag=-compiled`
  gives `gpu-bench-1b-compiled`), the way every result in bench/results/ is named.
- `write_results(out, stem, data, markdown)`: `out/<stem>.json` (the numbers, plus `machine_facts()` under
  "machine") and `out/<stem>.md` (the table a note quotes, or the function that makes it from the data), and the
  Markdown printed. `write_json` for a script that writes one JSON file only.
- `environment({"QUANT_X": "1", "QUANT_Y": None})`: those variables set (None: unset) inside a `with`, restored after.

Each script runs as `python bench/x.py` (it puts the repository root on sys.path, then imports this as
`bench.common`). Nothing here imports torch or transformers until a result is written: the HTTP client processes of
chat_latency and api_latency import this too, and have no use for them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Callable, Iterator

REQUIRED = object()
"""The value of `out=` (or another keyword of `bench_parser`) for an argument the command line must give."""
_ABSENT = object()
WORK = Path("/tmp/bench")
"""Where the scripts build and keep their random-weight checkpoints (--work)."""

_HELP = {
    "out": "folder for the result files (<stem>.json and <stem>.md)",
    "tag": "appended to the result files' names as given, e.g. --tag=-compiled",
    "work": "folder for the built checkpoints (bench/llama_shapes.py) and their GPTQ copies",
    "model": "model reference: a Hub id, a local folder or demo:NAME",
    "shape": "random-weight Llama shape (bench/llama_shapes.py)",
    "shapes": "random-weight Llama shapes, comma-separated (bench/llama_shapes.py)",
    "mode": "load mode, as the Model tab and `python -m quant` name it",
    "modes": "modes, comma-separated",
    "device_map": "device map: cpu, cuda:0, auto",
    "new_tokens": "new tokens per generation (greedy, fixed length)",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written (its example command lines), and each argument's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        nothing_to_say = action.default == "" or any(action.default is v
                                                     for v in (None, False, True, argparse.SUPPRESS))
        if action.required or nothing_to_say or not action.option_strings or "%(default)" in help_text:
            return help_text
        return f"{help_text} (default: %(default)s)".lstrip()


def bench_parser(description: str | None, *, out=_ABSENT, tag=_ABSENT, work=_ABSENT, model=_ABSENT,
                 shape=_ABSENT, shapes=_ABSENT, mode=_ABSENT, modes=_ABSENT, device_map=_ABSENT,
                 new_tokens=_ABSENT, helps: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with the common arguments given here, each defaulting to the value passed (`REQUIRED`: the
    command line must give it). `helps` replaces an argument's help where a script means something narrower."""
    result = argparse.ArgumentParser(description=description, formatter_class=_Formatter)
    helps = {**_HELP, **(helps or {})}
    given = {"out": out, "tag": tag, "work": work, "model": model, "shape": shape, "shapes": shapes, "mode": mode,
             "modes": modes, "device_map": device_map, "new_tokens": new_tokens}
    types = {"out": Path, "work": Path, "new_tokens": int}
    for dest, default in given.items():
        if default is _ABSENT:
            continue
        flag = "--" + dest.replace("_", "-")
        if default is REQUIRED:
            result.add_argument(flag, type=types.get(dest), required=True, help=helps[dest])
        else:
            result.add_argument(flag, type=types.get(dest), default=default, help=helps[dest])
    return result


def copies_past_l2(nbytes: int) -> int:
    """How many copies of a tensor of `nbytes` to cycle through so that no timed call finds its operand in the GPU's
    L2 cache (50-60 MB on an H100/H200): 200 MB of them, at least 2."""
    return max(2, -(-200_000_000 // nbytes))


def result_stem(*parts: str, tag: str = "") -> str:
    """A result's file name without its suffix: the non-empty parts joined by "-", then `tag` unchanged."""
    return "-".join(str(part) for part in parts if part) + (tag or "")


def machine_facts() -> dict:
    """What every result carries about where and when it was measured: the GPU (by torch.cuda.get_device_name, None
    without one), the CPU count, the torch, CUDA, transformers and Python versions, and the date (UTC)."""
    import torch

    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:  # a client-only environment
        transformers_version = None
    on_gpu = torch.cuda.is_available()
    return {"gpu": torch.cuda.get_device_name(0) if on_gpu else None,
            "gpu_count": torch.cuda.device_count() if on_gpu else 0,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers_version, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


@contextlib.contextmanager
def environment(values: dict[str, str | None]) -> Iterator[None]:
    """Set (a string) or unset (None) these environment variables for the block; restore them after."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.update({key: value})


def write_json(path: Path, data: dict) -> dict:
    """Write `data` with `machine_facts()` under "machine" to `path` (its folder is made if needed); returns what was
    written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = {"machine": machine_facts(), **data}
    path.write_text(json.dumps(written, indent=1))
    return written


def write_results(out: Path, stem: str, data: dict, markdown: str | Callable[[dict], str]) -> None:
    """Write `out/<stem>.json` (with the machine facts) and `out/<stem>.md` (the folder is made if needed) and print
    the Markdown. `markdown` may be the function that makes the table from `data`: it is called after the JSON is
    written, so a run's numbers survive a mistake in its table (a GPU run is not cheap to repeat)."""
    out = Path(out)
    written = write_json(out / f"{stem}.json", data)
    if callable(markdown):
        markdown = markdown(written)  # with the machine facts: a table's title names the GPU from them
    (out / f"{stem}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(markdown)


KERNEL_KINDS = (("attention", ("fmha", "flash", "attention", "attn", "softmax")),
                ("matmul", ("gemm", "nvjet", "cutlass", "sm90", "sm80", "xmma", "matmul", "addmm", " mm", "aten::mm")),
                ("copy", ("copy", "index_put", "scatter", "cat")))
"""A GPU kernel's kind by marks in its name (the first that matches; else "other"), for profiles' summaries."""


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    for kind, marks in KERNEL_KINDS:
        if any(mark in lowered for mark in marks):
            return kind
    return "other"


def gpu_kernels(events) -> list:
    """The GPU kernels among a profile's `key_averages()`, each with its own GPU time: not the GPU-side copies of
    user-annotated ranges (record_function, such as quant.decode's prefill and decode ranges), which would count
    their kernels again, as torch's own table leaves them out of its GPU total."""
    import torch

    return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total
            and not getattr(e, "is_user_annotation", False)]


SYNCHRONIZING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
                 "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::repeat_interleave")
"""Host calls that wait for the GPU (or, for the aten ones, may: a result whose size or value the host needs)."""


def gpu_idle(events, ranges: tuple[str, ...] = (), min_gap_us: float = 20.0, enclosing_us: float = 50_000.0,
             top: int = 12) -> dict:
    """Where the GPU sat idle during a profile (`prof.events()`): before its first work (`lead_in_s`, from the first
    host call), after its last (`tail_s`), and the gaps of at least `min_gap_us` between its busy intervals (kernels
    and copies merged; user-annotated ranges are not work), with
    - the idle seconds inside each of the host ranges named in `ranges` (record_function names) and outside them;
    - the host calls running during the gaps, by overlap (calls longer than `enclosing_us` are the job's enclosing
      calls, overlapping every gap, and are left out): what the GPU was waiting for;
    - how often the host called something that waits for the GPU (SYNCHRONIZING), inside each range and outside.
    Why: the bf16 goal job kept the H200 busy 85% of its 3.4 s (bench/results/batch-engines-8b-compiled-prefill-l2.md),
    and kernel totals do not say what the other 0.5 s was."""
    import bisect

    import torch

    cuda = torch.autograd.DeviceType.CUDA
    merged = _merged([(e.time_range.start, e.time_range.end) for e in events
                      if e.device_type == cuda and not getattr(e, "is_user_annotation", False)
                      and e.time_range.end > e.time_range.start])
    gaps = [(a[1], b[0]) for a, b in zip(merged, merged[1:]) if b[0] - a[1] >= min_gap_us]
    host = [e for e in events if e.device_type != cuda]
    # a range's span: its host-side event, and where torch records it the GPU-side one (the span of its kernels)
    spans = {name: [(e.time_range.start, e.time_range.end) for e in events
                    if e.name == name and e.time_range.end > e.time_range.start] for name in ranges}

    def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
        return max(0.0, min(a1, b1) - max(a0, b0))

    idle_in = {name: sum(overlap(g0, g1, s0, s1) for g0, g1 in gaps for s0, s1 in _merged(spans[name])) / 1e6
               for name in ranges}
    idle = sum(g1 - g0 for g0, g1 in gaps) / 1e6
    waiting: dict[str, list[float]] = {}
    gap_ends = [end for _, end in gaps]  # gaps are in time order and do not overlap
    for e in host:
        length = e.time_range.end - e.time_range.start
        if length > enclosing_us or getattr(e, "is_user_annotation", False) or e.name in ranges:
            continue
        shared, index = 0.0, bisect.bisect_right(gap_ends, e.time_range.start)  # the first gap ending after it starts
        while index < len(gaps) and gaps[index][0] < e.time_range.end:
            shared += overlap(*gaps[index], e.time_range.start, e.time_range.end)
            index += 1
        if shared:
            entry = waiting.setdefault(e.name, [0.0, 0])
            entry[0] += shared / 1e6
            entry[1] += 1
    syncs: dict[str, dict[str, int]] = {}
    for e in host:
        if any(e.name == name or e.name.startswith(name + "(") for name in SYNCHRONIZING):
            where = next((name for name in ranges if any(s0 <= e.time_range.start <= s1 for s0, s1 in spans[name])),
                         "outside")
            syncs.setdefault(e.name, {}).setdefault(where, 0)
            syncs[e.name][where] += 1
    first, last = (merged[0][0], merged[-1][1]) if merged else (0.0, 0.0)
    host_start = min((e.time_range.start for e in host), default=first)
    host_end = max((e.time_range.end for e in host), default=last)
    return {"lead_in_s": max(0.0, first - host_start) / 1e6, "tail_s": max(0.0, host_end - last) / 1e6,
            "span_s": (last - first) / 1e6, "busy_s": sum(b - a for a, b in merged) / 1e6, "idle_s": idle,
            "gaps": len(gaps), "idle_in": {**idle_in, "outside": idle - sum(idle_in.values())},
            "longest_gaps_ms": sorted(((g1 - g0) / 1e3 for g0, g1 in gaps), reverse=True)[:5],
            "waiting_for": [{"call": name[:100], "seconds": s, "calls": n}
                            for name, (s, n) in sorted(waiting.items(), key=lambda item: -item[1][0])[:top]],
            "synchronizing_calls": syncs}


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def thread_profiler(on_gpu: bool):
    """torch.profiler over every thread (a compiled generation runs on the runner thread), the GPU's kernels too where
    `on_gpu`; the main thread only where this torch cannot profile all threads."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    try:
        config = {"experimental_config": torch._C._profiler._ExperimentalConfig(profile_all_threads=True)}
    except (AttributeError, TypeError):
        config = {}
    return profile(activities=activities, **config)
