"""Where a model comes from: a checked local directory or a hub id, loaded from the local hub cache first and from
the hub only when allowed, with errors that say how to point at local weights (:class:`ModelNotFoundError`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = ["ModelNotFoundError", "Source", "find_source", "from_pretrained", "hub_offline", "looks_like_path"]

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_TRUE = {"1", "true", "yes", "on"}


class ModelNotFoundError(OSError, ValueError):
    """A model or tokenizer that cannot be loaded: a hub id not available here, or a directory without weights."""


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@dataclass(frozen=True)
class Source:
    """Where one model comes from: a checked local directory, or a hub id."""

    spec: str
    role: str
    local: Path | None = None

    @property
    def where(self) -> str:
        return str(self.local) if self.local is not None else self.spec

    def has_tokenizer(self) -> bool:
        return self.local is None or any((self.local / name).is_file() for name in TOKENIZER_FILES)


def looks_like_path(spec: str) -> bool:
    """A spec that can only be a filesystem path: hub ids are ``name`` or ``owner/name``."""
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1 or os.path.exists(spec)


def find_source(spec: str | os.PathLike, role: str) -> Source:
    """Check a local directory (it must hold weights and a config) or pass a hub id through."""
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
            raise ModelNotFoundError(
                f"the {role} directory {str(path)!r} has no weights (no *.safetensors or *.bin files); point at the "
                "directory that holds config.json and the model weights, e.g. one written by save_pretrained."
            )
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"the {role} directory {str(path)!r} has no config.json.")
        return Source(text, role, path)
    if looks_like_path(text):
        kind = "is a file, not a directory" if path.exists() else "does not exist"
        raise ModelNotFoundError(
            f"the {role} path {text!r} {kind}; pass a directory holding config.json and the weights "
            "(*.safetensors or *.bin), or a hub id such as 'owner/name'."
        )
    try:
        validate_repo_id(text)
    except HFValidationError as error:
        raise ModelNotFoundError(
            f"the {role} {text!r} is neither a local directory nor a valid hub id ('owner/name'): {error}"
        ) from None
    return Source(text, role)


def not_available(source: Source, what: str, local_only: bool, error: Exception) -> ModelNotFoundError:
    """The error for a hub id that could not be loaded, with how to use local weights instead."""
    if local_only:
        why = "the hub was not asked (offline: HF_HUB_OFFLINE=1 or local_files_only=True)"
    else:
        why = "the hub could not provide it (no network access, a gated or private repository, or a wrong id)"
    return ModelNotFoundError(
        f"could not load the {source.role} {what} {source.spec!r}: it is not a local directory nor in the local "
        f"hub cache, and {why}. To use local weights, pass the path of a directory holding config.json, the "
        "weights (*.safetensors or *.bin) and the tokenizer files instead of the id; to make one, run "
        f"`huggingface-cli download {source.spec} --local-dir DIR` (or `hf download ...`) on a "
        f"machine with hub access, copy DIR here and pass DIR. Cause: {type(error).__name__}: "
        f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    )


def from_pretrained(loader, source: Source, what: str, local_files_only: bool, **kwargs):
    """``loader.from_pretrained`` for one source, turning "not found" errors into :class:`ModelNotFoundError`.

    A hub id is looked up in the local cache first (fast, no network) and, unless ``local_files_only``, on the
    hub after that.
    """
    if source.local is not None:
        try:
            return loader.from_pretrained(str(source.local), local_files_only=True, **kwargs)
        except OSError as error:
            raise ModelNotFoundError(
                f"could not load the {source.role} {what} from {str(source.local)!r}: {error}"
            ) from error
    attempts = (True,) if local_files_only else (True, False)
    for i, local_only in enumerate(attempts):
        try:
            return loader.from_pretrained(source.spec, local_files_only=local_only, **kwargs)
        except OSError as error:
            if i == len(attempts) - 1:
                raise not_available(source, what, local_files_only, error) from error
    raise AssertionError("unreachable")
