"""Prompt files: JSON lines, one record per line, read with the file and line of every error; and where the
shipped prompt sets live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EVALS_DIR", "read_jsonl", "read_lines"]

# evals/ (installed as decoding.evals), which holds the shipped prompt sets (prompts/, prompts_quality/; package data).
EVALS_DIR = Path(__file__).parent.parent


def read_lines(file: str | Path) -> Iterator[tuple[str, str]]:
    """``("file:line", text)`` for every line of a UTF-8 text file. Raises ``ValueError`` naming the file and line
    of bytes that are not UTF-8 (a binary file), ``OSError`` for a file that cannot be read."""
    with open(file, "rb") as handle:  # bytes, decoded line by line, so that a decoding error has a line number
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{file}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                                 f"{error.start + 1}; a binary file?): give a text file") from None
            yield f"{file}:{number}", line


def read_jsonl(path: str | Path) -> Iterator[tuple[str, object]]:
    """``("file:line", value)`` for every non-blank line of a ``.jsonl`` file, or of every ``*.jsonl`` file of a
    folder in name order. Raises ``ValueError`` for a line that is not JSON (or not UTF-8 text) or a folder
    without such files, ``OSError`` for a missing file."""
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"no *.jsonl prompt files in {path}")
    for file in files:
        for where, line in read_lines(file):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}): each line must be one JSON object") from None
            yield where, record
