"""The training corpus of the embedded pair: the Python standard library's own ``.py`` source.

Every machine that runs this library has it, so the embedded pair can be retrained anywhere without a download.

- Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]``, sorted by their POSIX relative path, skipping
  ``site-packages`` / ``dist-packages`` (third-party code, differs per machine) and ``__pycache__``. The test suite
  (``test/``, ``idlelib/idle_test/``, ...) is *included*: it is ordinary Python code, and a large part of the
  stdlib. Files that are not valid UTF-8 (a few deliberately mis-encoded test inputs) are skipped.
- Held-out split: a file is held out when the first 8 bytes of ``sha256(relative path)``, read as an integer,
  fall below ``fraction * 2**64`` (5% by default). The split depends only on the path, not on the file list, the
  Python version or the machine, so it is deterministic and stable as the stdlib changes. Held-out files are
  never used to train the tokenizer or either model.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Corpus", "is_held_out", "list_files", "load_corpus", "stdlib_root"]

SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
HELD_OUT_FRACTION = 0.05


def stdlib_root() -> Path:
    """The running interpreter's standard library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_held_out(relative_path: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether the file at ``relative_path`` (POSIX, relative to the stdlib root) belongs to the held-out set."""
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def list_files(root: Path | str | None = None) -> list[str]:
    """Sorted POSIX relative paths of the ``.py`` files under ``root`` (default: the stdlib), third-party skipped."""
    root = Path(root) if root is not None else stdlib_root()
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in SKIP_DIRS]
        for name in files:
            if name.endswith(".py"):
                found.append(Path(directory, name).relative_to(root).as_posix())
    return sorted(found)


@dataclass
class Corpus:
    """The split corpus: ``train`` and ``held_out`` are lists of ``(relative_path, text)``, sorted by path."""

    root: Path
    train: list
    held_out: list
    skipped: list  # relative paths that could not be read as UTF-8

    @property
    def held_out_paths(self) -> list[str]:
        return [path for path, _ in self.held_out]


def load_corpus(
    root: Path | str | None = None, fraction: float = HELD_OUT_FRACTION, max_files: int | None = None
) -> Corpus:
    """Read and split the corpus. ``max_files`` keeps the first files of each split (for quick tests)."""
    root = Path(root) if root is not None else stdlib_root()
    paths = list_files(root)
    held = [p for p in paths if is_held_out(p, fraction)]
    rest = [p for p in paths if not is_held_out(p, fraction)]
    if max_files is not None:
        rest, held = rest[:max_files], held[: max(1, max_files // 10)]
    train, held_out, skipped = [], [], []
    for group, paths_in_group in ((train, rest), (held_out, held)):
        for path in paths_in_group:
            try:
                text = (root / path).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                skipped.append(path)
                continue
            if text.strip():
                group.append((path, text))
    return Corpus(root=root, train=train, held_out=held_out, skipped=sorted(skipped))
