"""Read uploaded text files as data only: batch prompts (pasted text, .txt / .csv / .jsonl) and calibration texts.

Every problem is reported with its line number; nothing in a file is executed or interpreted beyond its format.
One reader (`read_data_file`) serves both uses; what differs between them (formats, limits, the JSONL field, whether
a .txt line is one item) is a `DataFileSpec`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import QuantError
from .settings import load_settings

MAX_PROMPT_CHARS = 20_000
FORMATS = (".txt", ".csv", ".jsonl")


class DataFileError(QuantError):
    """An uploaded file or pasted text that cannot be read as data (prompts, calibration texts)."""


PromptFileError = DataFileError
"""The name the batch code has always raised; the same class, so either name catches both uses."""


@dataclass(frozen=True)
class DataFileSpec:
    """What one kind of upload may be. Limits are parameters: calibration texts are longer and more numerous."""

    noun: str
    """One item, as messages name it: "prompt", "calibration text"."""
    formats: tuple[str, ...]
    """Accepted suffixes, lower case, among .txt, .csv and .jsonl."""
    max_bytes: int
    max_items: int
    max_item_chars: int | None
    key: str
    """The JSONL field (and preferred CSV column) holding an item, unless the user names another."""
    txt_per_line: bool = True
    """A .txt holds one item per line (prompts), or is one item as a whole (calibration text)."""
    limit_hint: str | None = None
    """What to do about too many items (e.g. which environment variable raises the limit)."""

    @property
    def plural(self) -> str:
        return f"{self.noun}s"


def prompt_spec() -> DataFileSpec:
    """Batch prompts, with the operator's limits (QUANT_BATCH_MAX_PROMPTS, QUANT_BATCH_MAX_UPLOAD_BYTES)."""
    settings = load_settings()
    return DataFileSpec("prompt", FORMATS, settings.batch_max_upload_bytes, settings.batch_max_prompts,
                        MAX_PROMPT_CHARS, "prompt", limit_hint="Split it, or raise QUANT_BATCH_MAX_PROMPTS.")


def _decode(data: bytes, name: str, formats: Iterable[str] = FORMATS) -> str:
    """UTF-8 text, or a message: a NUL byte near the start means a binary file, whatever its name says."""
    kinds = list(formats)
    wanted = f"UTF-8 {', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else f"UTF-8 {kinds[0]}"
    if b"\x00" in data[:8192]:
        raise DataFileError(f"{name} is a binary file, not text.", f"Upload {wanted}.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataFileError(f"{name} is not UTF-8 text (line {line}).", "Save it as UTF-8.") from None


def _check(items: list[tuple[int, str]], name: str, spec: DataFileSpec | None = None) -> list[tuple[int, str]]:
    """Refuse an empty file, too many items, or an item too long for the spec's limits."""
    spec = spec or prompt_spec()
    if not items:
        hint = f"Write one {spec.noun} per line." if spec.txt_per_line else f"Give some {spec.noun}."
        raise DataFileError(f"{name} holds no {spec.plural}.", hint)
    if len(items) > spec.max_items:
        raise DataFileError(f"{name} holds {len(items)} {spec.plural}; the limit is {spec.max_items}.",
                            spec.limit_hint)
    if spec.max_item_chars is not None:
        for line, text in items:
            if len(text) > spec.max_item_chars:
                raise DataFileError(
                    f"Line {line} of {name} is {len(text)} characters; the limit is {spec.max_item_chars}.")
    return items


def parse_lines(text: str, name: str = "the pasted text") -> list[tuple[int, str]]:
    """One prompt per line; empty lines skipped."""
    return _check([(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()], name)


def parse_csv(text: str, column: str | None, name: str, spec: DataFileSpec | None = None) -> list[tuple[int, str]]:
    """The items of a CSV column: the one named, else the spec's column (`prompt`), else the first column."""
    spec = spec or prompt_spec()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise DataFileError(f"{name} is empty.")
        wanted = (column or "").strip()
        names = [h.strip() for h in header]
        if wanted:
            if wanted not in names:
                raise DataFileError(f"{name} has no column {wanted!r}; its columns: {', '.join(names)}.")
            index = names.index(wanted)
        else:
            index = names.index(spec.key) if spec.key in names else 0
        items = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataFileError(
                    f"Line {reader.line_num} of {name} has {len(row)} fields; the header has {len(header)}.")
            if row[index].strip():
                items.append((reader.line_num, row[index].strip()))
    except csv.Error as exc:
        raise DataFileError(f"{name} is not valid CSV (line {reader.line_num}: {exc}).") from None
    return _check(items, name, spec)


def jsonl_strings(text: str, key: str, name: str, noun: str) -> list[tuple[int, str]]:
    """(line, value) for each non-empty line: a JSON string, or an object whose `key` field is a string."""
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"Line {number} of {name} is not valid JSON ({exc.msg}).") from None
        if isinstance(value, dict):
            if key not in value:
                raise DataFileError(f"Line {number} of {name} has no {key!r} field.")
            value = value[key]
        if not isinstance(value, str):
            raise DataFileError(f"Line {number} of {name}: the {noun} must be a string.")
        values.append((number, value))
    return values


def parse_jsonl(text: str, key: str | None, name: str, spec: DataFileSpec | None = None) -> list[tuple[int, str]]:
    """One JSON value per line: a string, or an object whose `key` (default: the spec's, `prompt`) is a string."""
    spec = spec or prompt_spec()
    values = jsonl_strings(text, (key or "").strip() or spec.key, name, spec.noun)
    items = [(n, v.strip() if spec.txt_per_line else v) for n, v in values if v.strip()]
    return _check(items, name, spec)


def read_text_file(path: str | Path, formats: Iterable[str], max_bytes: int) -> str:
    """An uploaded file's text, checked in the order that costs least: type, size, then UTF-8 and not binary."""
    path = Path(path)
    formats = tuple(formats)
    if path.suffix.lower() not in formats:
        raise DataFileError(f"{path.name}: unsupported file type.", f"Upload {', '.join(formats)}.")
    size = path.stat().st_size
    if size > max_bytes:
        raise DataFileError(f"{path.name} is {size / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.1f} MiB.")
    return _decode(path.read_bytes(), path.name, formats)


def read_data_file(path: str | Path, spec: DataFileSpec, key: str | None = None) -> list[tuple[int, str]]:
    """The (line, item) pairs of an uploaded file, by its extension, within the spec's formats and limits."""
    path = Path(path)
    text = read_text_file(path, spec.formats, spec.max_bytes)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return parse_csv(text, key, path.name, spec)
    if suffix == ".jsonl":
        return parse_jsonl(text, key, path.name, spec)
    if spec.txt_per_line:
        return _check([(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()], path.name,
                      spec)
    return _check([(1, text)] if text.strip() else [], path.name, spec)


def read_prompt_file(path: str | Path, column: str | None = None) -> list[tuple[int, str]]:
    """Prompts of an uploaded file, by its extension."""
    return read_data_file(path, prompt_spec(), column)


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
