"""Prompt files: JSON lines, one record per line, read with the file and line of every error; and where the
shipped prompt sets live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EVALS_DIR", "read_jsonl"]

# evals/ (installed as decoding.evals), which holds the shipped prompt sets (prompts/, prompts_quality/; package data).
EVALS_DIR = Path(__file__).parent.parent


def read_jsonl(path: str | Path) -> Iterator[tuple[str, object]]:
    """``("file:line", value)`` for every non-blank line of a ``.jsonl`` file, or of every ``*.jsonl`` file of a
    folder in name order. Raises ``ValueError`` for a line that is not JSON or a folder without such files,
    ``OSError`` for a missing file."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"no *.jsonl prompt files in {path}")
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{file}:{number}: not valid JSON ({error.msg})") from None
                yield f"{file}:{number}", record
