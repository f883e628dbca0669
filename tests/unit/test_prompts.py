"""Prompt uploads in each format, limits, and malformed files reported by line."""

from __future__ import annotations

import json

import pytest

from quant.prompts import PromptFileError, parse_lines, read_prompt_file, write_results


def write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_txt_skips_empty_lines_and_keeps_line_numbers(tmp_path):
    path = write(tmp_path, "p.txt", "first\n\n  second  \n\nthird\n")
    assert read_prompt_file(path) == [(1, "first"), (3, "second"), (5, "third")]


def test_csv_uses_the_prompt_column_or_the_named_one(tmp_path):
    path = write(tmp_path, "p.csv", 'id,prompt\n1,"Hello, world"\n2,"multi\nline"\n')
    assert read_prompt_file(path) == [(2, "Hello, world"), (4, "multi\nline")]
    path = write(tmp_path, "q.csv", "question,answer\nWhy?,Because\n")
    assert read_prompt_file(path, "question") == [(2, "Why?")]


def test_jsonl_objects_and_strings(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a"}\n\n"b"\n{"prompt": "한국어 프롬프트"}\n')
    assert read_prompt_file(path) == [(1, "a"), (3, "b"), (4, "한국어 프롬프트")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "Line 2 of bad.jsonl is not valid JSON"),
        ("bad.jsonl", '{"text": "a"}\n', "Line 1 of bad.jsonl has no 'prompt' field"),
        ("bad.jsonl", '{"prompt": 3}\n', "Line 1 of bad.jsonl: the prompt must be a string"),
        ("bad.csv", "prompt,x\na,b\nc\n", "Line 3 of bad.csv has 1 fields; the header has 2"),
        ("bad.csv", "a,b\n1,2\n", None),
        ("empty.txt", "\n\n", "holds no prompts"),
        ("p.pdf", "%PDF", "unsupported file type"),
    ],
)
def test_malformed_files(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    if message is None:  # no 'prompt' column: the first column is used
        assert read_prompt_file(path) == [(2, "1")]
        return
    with pytest.raises(PromptFileError, match=message):
        read_prompt_file(path)


def test_csv_unknown_column(tmp_path):
    path = write(tmp_path, "p.csv", "a,b\n1,2\n")
    with pytest.raises(PromptFileError, match="no column 'prompt2'; its columns: a, b"):
        read_prompt_file(path, "prompt2")


def test_binary_and_non_utf8_files(tmp_path):
    with pytest.raises(PromptFileError, match="binary file"):
        read_prompt_file(write(tmp_path, "x.txt", b"abc\x00\x01\x02", "wb"))
    with pytest.raises(PromptFileError, match=r"not UTF-8 text \(line 2\)"):
        read_prompt_file(write(tmp_path, "y.txt", "ok\n".encode() + b"\xff\xfe bad", "wb"))


def test_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANT_BATCH_MAX_PROMPTS", "3")
    with pytest.raises(PromptFileError, match="holds 4 prompts; the limit is 3"):
        parse_lines("a\nb\nc\nd")
    monkeypatch.setenv("QUANT_BATCH_MAX_UPLOAD_BYTES", "100")
    with pytest.raises(PromptFileError, match="the limit is"):
        read_prompt_file(write(tmp_path, "big.txt", "x" * 200))


def test_results_files(tmp_path):
    from quant.batching import BatchRow

    rows = [BatchRow(1, "p, with comma", "out\nput", 3, 0.5), BatchRow(2, "q", error="too long")]
    csv_path, jsonl_path = write_results(rows, tmp_path)
    lines = [json.loads(line) for line in jsonl_path.read_text().splitlines()]
    assert lines[0]["output"] == "out\nput" and lines[1]["error"] == "too long"
    import csv

    with csv_path.open() as f:
        assert list(csv.DictReader(f))[0]["prompt"] == "p, with comma"


def test_one_reader_with_the_limits_as_parameters(tmp_path):
    """Batch prompts and calibration texts share read_data_file; only their spec (formats, limits, field) differs."""
    from quant.prompts import DataFileSpec, read_data_file
    from quant.quantize import CALIBRATION_FILES, CalibrationData

    long_text = "The with statement.\n" * 1500  # 30,000 characters over 1,500 lines
    path = write(tmp_path, "long.txt", long_text)
    assert CalibrationData(file=str(path)).texts() == [long_text]  # a .txt is one calibration text, kept whole
    with pytest.raises(PromptFileError, match="holds 1500 prompts; the limit is 1000"):  # one prompt a line
        read_prompt_file(path)
    record = write(tmp_path, "long.jsonl", json.dumps({"text": "x" * 30_000}) + "\n")
    assert read_data_file(record, CALIBRATION_FILES) == [(1, "x" * 30_000)]
    with pytest.raises(PromptFileError, match="has no 'prompt' field"):
        read_prompt_file(record)
    with pytest.raises(PromptFileError, match="Line 1 of long.jsonl is 30000 characters; the limit is 20000"):
        read_prompt_file(write(tmp_path, "long.jsonl", json.dumps("x" * 30_000)))
    with pytest.raises(PromptFileError, match="unsupported file type"):
        read_data_file(write(tmp_path, "p.csv", "prompt\na\n"), CALIBRATION_FILES)

    tight = DataFileSpec("note", (".txt",), max_bytes=64, max_items=2, max_item_chars=5, key="note")
    assert read_data_file(write(tmp_path, "ok.txt", "a\n\nbb\n"), tight) == [(1, "a"), (3, "bb")]
    for content, message in [("a\nb\nc\n", "holds 3 notes; the limit is 2"), ("abcdef\n", "is 6 characters"),
                             ("a\n" * 40, "the limit is 0.0 MiB"), ("\x00abc", "binary file.*Upload UTF-8 .txt")]:
        with pytest.raises(PromptFileError, match=message):
            read_data_file(write(tmp_path, "bad.txt", content), tight)
