"""Output files of the benchmarks: paths checked before a long run, JSON written, and never lost to a late
write failure."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["check_writable", "check_writable_outputs", "not_written", "write_json", "write_json_or_fallback",
           "write_or_fallback", "write_text_or_fallback"]


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise ``OSError`` naming ``option`` unless a file can be written at ``path`` (checked before a long run,
    by creating it; a file that did not exist is removed again). Its folder must exist: a mistyped folder is
    refused rather than created."""
    path = Path(path)
    try:
        problem = _folder_problem(path.parent) or _open_problem(path)
    except OSError as error:  # a folder that cannot even be looked into
        problem = f" ({error.strerror or error}): choose another path"
    if problem is not None:
        raise OSError(f"{option} {path} cannot be written{problem}")


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (it or a folder above it is a file, or it is missing), or None."""
    for ancestor in (folder, *folder.parents):
        if ancestor.is_dir():
            break
        if ancestor.exists():
            return f": {ancestor} is a file, not a folder: choose another path"
    if folder.is_dir():
        return None
    return f": folder {folder} does not exist: create it first, or choose another path"


def _open_problem(path: Path) -> str | None:
    """Why no file can be opened for writing at ``path``, or None (a file created to find out is removed)."""
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        with open(path, "a"):
            pass
    except OSError as error:
        return f" ({error.strerror or error}): choose another path"
    if not existed:
        path.unlink(missing_ok=True)  # the processes of a data-parallel run all probe the same path
    return None


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


def write_or_fallback(write: Callable[[Path], object], path: str | os.PathLike,
                      suffix: str = ".json") -> tuple[Path, OSError | None]:
    """``write(path)``; if that fails late (disk full, folder removed), ``write`` to a new temporary file ending in
    ``suffix`` instead. Returns ``(where it was written, the error or None)``, so results are never lost."""
    try:
        write(Path(path))
        return Path(path), None
    except OSError as error:
        handle, fallback = tempfile.mkstemp(prefix="decoding-results-", suffix=suffix)
        os.close(handle)
        write(Path(fallback))
        return Path(fallback), error


def write_json_or_fallback(result: dict, path: str | os.PathLike) -> tuple[Path, OSError | None]:
    """:func:`write_json` at ``path``, else at a temporary file (:func:`write_or_fallback`)."""
    return write_or_fallback(lambda where: write_json(result, where), path, ".json")


def write_text_or_fallback(text: str, path: str | os.PathLike, suffix: str) -> tuple[Path, OSError | None]:
    """``text`` (UTF-8) at ``path``, else at a temporary file ending in ``suffix`` (:func:`write_or_fallback`)."""
    return write_or_fallback(lambda where: where.write_text(text, encoding="utf-8"), path, suffix)


def not_written(option: str, path: str | os.PathLike, error: OSError, written: Path) -> str:
    """The one-line report of an output that went to a temporary file instead of ``path``."""
    return f"{option} {path} could not be written ({error.strerror or error}); the results are in {written}"
