"""Read batch prompts from pasted text or an uploaded .txt / .csv / .jsonl file, as data only.

Every problem is reported with its line number; nothing in a file is executed or interpreted beyond its format.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .errors import QuantError

MAX_PROMPTS = int(os.environ.get("QUANT_BATCH_MAX_PROMPTS", "1000"))
MAX_UPLOAD_BYTES = int(os.environ.get("QUANT_BATCH_MAX_UPLOAD_BYTES", str(2 * 2**20)))
MAX_PROMPT_CHARS = 20_000
FORMATS = (".txt", ".csv", ".jsonl")


class PromptFileError(QuantError):
    """A prompt file or text that cannot be read as prompts."""


def _decode(data: bytes, name: str) -> str:
    if b"\x00" in data[:8192]:
        raise PromptFileError(f"{name} is a binary file, not text.", "Upload UTF-8 .txt, .csv or .jsonl.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PromptFileError(f"{name} is not UTF-8 text (line {line}).", "Save it as UTF-8.") from None


def _check(prompts: list[tuple[int, str]], name: str) -> list[tuple[int, str]]:
    if not prompts:
        raise PromptFileError(f"{name} holds no prompts.", "Write one prompt per line.")
    if len(prompts) > MAX_PROMPTS:
        raise PromptFileError(f"{name} holds {len(prompts)} prompts; the limit is {MAX_PROMPTS}.",
                              "Split it, or raise QUANT_BATCH_MAX_PROMPTS.")
    for line, text in prompts:
        if len(text) > MAX_PROMPT_CHARS:
            raise PromptFileError(f"Line {line} of {name} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}.")
    return prompts


def parse_lines(text: str, name: str = "the pasted text") -> list[tuple[int, str]]:
    """One prompt per line; empty lines skipped."""
    return _check([(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()], name)


def parse_csv(text: str, column: str | None, name: str) -> list[tuple[int, str]]:
    """The prompts of a CSV column: the one named, else a column called `prompt`, else the first column."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header:
            raise PromptFileError(f"{name} is empty.")
        wanted = (column or "").strip()
        names = [h.strip() for h in header]
        if wanted:
            if wanted not in names:
                raise PromptFileError(f"{name} has no column {wanted!r}; its columns: {', '.join(names)}.")
            index = names.index(wanted)
        else:
            index = names.index("prompt") if "prompt" in names else 0
        prompts = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PromptFileError(
                    f"Line {reader.line_num} of {name} has {len(row)} fields; the header has {len(header)}.")
            if row[index].strip():
                prompts.append((reader.line_num, row[index].strip()))
    except csv.Error as exc:
        raise PromptFileError(f"{name} is not valid CSV (line {reader.line_num}: {exc}).") from None
    return _check(prompts, name)


def parse_jsonl(text: str, key: str | None, name: str) -> list[tuple[int, str]]:
    """One JSON value per line: a string, or an object whose `key` (default `prompt`) is a string."""
    key = (key or "").strip() or "prompt"
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"Line {number} of {name} is not valid JSON ({exc.msg}).") from None
        if isinstance(value, dict):
            if key not in value:
                raise PromptFileError(f"Line {number} of {name} has no {key!r} field.")
            value = value[key]
        if not isinstance(value, str):
            raise PromptFileError(f"Line {number} of {name}: the prompt must be a string.")
        if value.strip():
            prompts.append((number, value.strip()))
    return _check(prompts, name)


def read_prompt_file(path: str | Path, column: str | None = None) -> list[tuple[int, str]]:
    """Prompts of an uploaded file, by its extension."""
    path = Path(path)
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise PromptFileError(f"{name}: unsupported file type.", f"Upload {', '.join(FORMATS)}.")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise PromptFileError(f"{name} is {size / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.1f} MiB.")
    text = _decode(path.read_bytes(), name)
    if suffix == ".csv":
        return parse_csv(text, column, name)
    if suffix == ".jsonl":
        return parse_jsonl(text, column, name)
    return parse_lines(text, name)


def write_results(rows, directory: Path, stem: str = "batch-results") -> tuple[Path, Path]:
    """Write batch rows as CSV and JSONL; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["line", "prompt", "output", "new_tokens", "seconds", "error"]
    csv_path, jsonl_path = directory / f"{stem}.csv", directory / f"{stem}.jsonl"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: getattr(row, k) for k in fields})
    with jsonl_path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: getattr(row, k) for k in fields}, ensure_ascii=False) + "\n")
    return csv_path, jsonl_path
