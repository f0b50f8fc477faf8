"""Output files of the benchmarks: paths checked before a long run, JSON written, and never lost to a late
write failure."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_writable", "check_writable_outputs", "write_json", "write_json_or_fallback"]


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise ``OSError`` naming ``option`` unless a file can be written at ``path`` (checked before a long run,
    by creating it; a file that did not exist is removed again)."""
    path = Path(path)
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as error:
        raise OSError(f"{option} {path} cannot be written ({error.strerror or error}): choose another path") from None
    if not existed:
        path.unlink()


def check_writable_outputs(outputs: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """:func:`check_writable` for every ``(option, path)`` whose path is given; the first failure raises."""
    for option, path in outputs:
        if path is not None:
            check_writable(path, option)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def write_json_or_fallback(result: dict, path: str | os.PathLike) -> tuple[Path, OSError | None]:
    """Write ``result`` at ``path``; if that fails late (disk full, folder removed), write it to a temporary
    file instead. Returns ``(where it was written, the error or None)``, so results are never lost."""
    try:
        return write_json(result, path), None
    except OSError as error:
        handle, fallback = tempfile.mkstemp(prefix="decoding-results-", suffix=".json")
        os.close(handle)
        return write_json(result, fallback), error
