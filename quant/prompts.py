"""Read uploaded text files as data only: batch prompts (pasted text, .txt / .csv / .jsonl) and calibration texts.

Every problem is reported with its line number; nothing in a file is executed or interpreted beyond its format.
One reader (`read_data_file`) serves both uses; what differs between them (formats, limits, the JSONL field, whether
a .txt line is one item) is a `DataFileSpec`.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
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


def check_text_items(items: list[tuple[int, str]], name: str, *, max_items: int, max_chars: int | None,
                     noun: str = "prompt", hint: str | None = None,
                     allow_empty: bool = False) -> list[tuple[int, str]]:
    """The one limit on text taken as data (batch files, pasted prompts, Compare's prompts, calibration texts):
    too many items, or one too long, is refused before anything encodes it."""
    if not items and not allow_empty:
        raise DataFileError(f"{name} holds no {noun}s.", hint)
    if len(items) > max_items:
        raise DataFileError(f"{name} holds {len(items)} {noun}s; the limit is {max_items}.", hint)
    if max_chars is not None:
        for line, text in items:
            if len(text) > max_chars:
                raise DataFileError(f"Line {line} of {name} is {len(text)} characters; the limit is {max_chars}.")
    return items


def _check(items: list[tuple[int, str]], name: str, spec: DataFileSpec | None = None) -> list[tuple[int, str]]:
    """Refuse an empty file, too many items, or an item too long for the spec's limits."""
    spec = spec or prompt_spec()
    if not items:
        hint = f"Write one {spec.noun} per line." if spec.txt_per_line else f"Give some {spec.noun}."
        raise DataFileError(f"{name} holds no {spec.plural}.", hint)
    return check_text_items(items, name, max_items=spec.max_items, max_chars=spec.max_item_chars, noun=spec.noun,
                            hint=spec.limit_hint)


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


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP's CSV injection list)."""


def spreadsheet_safe(value):
    """A CSV cell that a spreadsheet shows as the text it is: one that would start a formula (`=HYPERLINK(...)`,
    `+cmd|...`, `@SUM(...)`, typed by a user or written by a model) gets a leading apostrophe, which spreadsheets
    hide. Numbers stay numbers; the JSONL export keeps every text exactly."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_results(rows, directory: Path, stem: str = "batch-results") -> tuple[Path, Path]:
    """Write batch rows as CSV (cells made spreadsheet-safe) and JSONL (exact); returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["line", "prompt", "output", "new_tokens", "seconds", "error"]
    csv_path, jsonl_path = directory / f"{stem}.csv", directory / f"{stem}.jsonl"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: spreadsheet_safe(getattr(row, k)) for k in fields})
    with jsonl_path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: getattr(row, k) for k in fields}, ensure_ascii=False) + "\n")
    return csv_path, jsonl_path


SCRATCH_MAX_AGE_SECONDS = 24 * 3600
"""How long a result file handed out for download (batch, compare) is kept."""


def scratch_root() -> Path:
    return Path(tempfile.gettempdir()) / "quant-playground"


def scratch_folder(kind: str, max_age: float = SCRATCH_MAX_AGE_SECONDS) -> Path:
    """A new folder for one run's result files, under one root whose folders older than `max_age` are removed on the
    way: a server that runs for weeks does not fill its disk with old downloads."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - max_age
    for old in root.iterdir():
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # removed by another run meanwhile
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=root))
