"""Where every benchmark leaves its numbers: `<stem>.json` (all of them) and `<stem>.md` (the table a note quotes)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: Path, stem: str, data: dict, markdown: str) -> None:
    """Write `out/<stem>.json` and `out/<stem>.md` (the folder is made if needed) and print the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    (out / f"{stem}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    print(markdown)
