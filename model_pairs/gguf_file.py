"""Whether a ``.gguf`` file is whole: its header, metadata and tensor list read with a bounds check on every read,
and every tensor's data inside the file (:func:`check_gguf`), so that a truncated or crafted file fails with one
clear :class:`InvalidGGUFError` instead of a ``struct.error`` or a reshape error deep inside transformers."""

from __future__ import annotations

import math
import mmap
import os
import struct
from pathlib import Path

__all__ = ["InvalidGGUFError", "check_gguf"]


class InvalidGGUFError(ValueError):
    """A ``.gguf`` file that is truncated or not a GGUF file; the message names the file and what was expected."""


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

    Reads the metadata only (through a memory map), not the tensor data. Needs the ``gguf`` package (its table of
    tensor types).
    """
    from .gguf import require_gguf  # here: gguf.py imports this module

    require_gguf()
    path = Path(gguf_file).expanduser()
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size < len(_MAGIC):  # mmap refuses an empty file
            raise _Cursor(handle.read(), path).fail("the magic bytes b'GGUF'", at=0)
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data, path)
            tensor_count, metadata_count = _read_header(cursor)
            alignment = _read_metadata(cursor, metadata_count)
            _check_tensor_data(cursor, _read_tensor_infos(cursor, tensor_count), alignment)
