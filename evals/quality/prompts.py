"""``decoding-eval``'s prompt sets: reading one (JSON lines ``{"prompt", "reference", "source"}``), the shipped
Python-code set (``prompts_quality/python_code.jsonl``) and how it is built, and prose sets built from documents
the literature's way (manual: ``docs/QUALITY.md``, "Prompt sets")."""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from decoding.evals.common.prompt_files import EVALS_DIR, read_jsonl, read_lines

__all__ = ["PROMPT_SET_DIR", "PromptItem", "build_code_prompt_set", "default_prompt_set", "load_prompt_set",
           "prompt_set_text", "text_prompt_set", "write_prompt_set"]

PROMPT_SET_DIR = EVALS_DIR / "prompts_quality"


@dataclass
class PromptItem:
    """One prompt and, optionally, its human continuation."""

    prompt: str
    reference: str | None = None
    source: str | None = None


def default_prompt_set() -> Path:
    """The shipped prompt set: beginnings of held-out Python standard-library files (docs/QUALITY.md, "Prompt sets")."""
    return PROMPT_SET_DIR / "python_code.jsonl"


def load_prompt_set(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Read a JSON-lines prompt set (``prompt`` required; ``reference`` and ``source`` optional), first
    ``limit`` items. Raises ``ValueError`` naming the file (and line) of a set that is empty, not UTF-8 text,
    not JSON or without a ``prompt``; ``OSError`` for a file that cannot be read."""
    items = []
    for where, record in read_jsonl(path):
        items.append(_prompt_item(where, record))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{path} holds no prompts: give JSON lines, each an object with a non-empty 'prompt'")
    return items


def _prompt_item(where: str, record) -> PromptItem:
    """One line of a prompt set, checked: a non-empty string ``prompt``, strings (or null) as the other fields."""
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
        raise ValueError(f"{where}: every line needs a non-empty string 'prompt', got {_shown(record)}")
    for key in ("reference", "source"):
        if not isinstance(record.get(key), (str, type(None))):
            raise ValueError(f"{where}: '{key}' must be a string, got {_shown(record[key])}")
    return PromptItem(record["prompt"], record.get("reference"), record.get("source"))


def _shown(value, width: int = 60) -> str:
    """A JSON value as an error message shows it: its JSON text, cut to ``width`` characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


_UNIT_START = re.compile(r"(async\s+def|def|class)\s+\w+")


def build_code_prompt_set(root: str | Path | None = None, prompt_words: int = 24, min_reference_words: int = 96,
                          max_reference_words: int = 160) -> list[dict]:
    """Prompts from the held-out files of the embedded pair's corpus (:mod:`decoding.model_pairs.corpus`).

    Per held-out file (sorted by path): the first top-level ``def``/``class`` line not already starting a prompt
    of the set, with enough text after it, gives ``prompt`` (whole lines until at least ``prompt_words``
    whitespace words, final newline moved to the reference) and ``reference`` (the following whole lines until
    at least ``max_reference_words`` words or the file's end; at least ``min_reference_words``). Generated
    charmap codec tables (``encodings/*``) are skipped: they are near-identical boilerplate.
    """
    from decoding.model_pairs.corpus import is_held_out, list_files, stdlib_root

    root = Path(root) if root is not None else stdlib_root()
    seen, records = set(), []
    version = platform.python_version()
    for path in (p for p in list_files(root) if is_held_out(p)):
        try:
            text = (root / path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "Character Mapping Codec" in text[:1000]:
            continue
        lines = text.splitlines(keepends=True)
        for start, line in enumerate(lines):
            if not _UNIT_START.match(line) or line.strip() in seen:
                continue
            end, count = _lines_until(lines, start, prompt_words)
            stop, more = _lines_until(lines, end, max_reference_words)
            if count < prompt_words or more < min_reference_words:
                continue
            prompt = "".join(lines[start:end])
            reference = "".join(lines[end:stop])
            if prompt.endswith("\n"):
                prompt, reference = prompt[:-1], "\n" + reference
            seen.add(line.strip())
            records.append({"prompt": prompt, "reference": reference,
                            "source": f"CPython {version} Lib/{path}:{start + 1}"})
            break
    return records


def _lines_until(lines: list[str], start: int, words: int) -> tuple[int, int]:
    """``(end, count)``: the whole lines from ``start`` up to ``end`` hold ``count >= words`` whitespace words
    (fewer at the end of the file)."""
    end, count = start, 0
    while end < len(lines) and count < words:
        count, end = count + len(lines[end].split()), end + 1
    return end, count


def text_prompt_set(path: str | Path, prompt_words: int = 32, min_reference_words: int = 128,
                    limit: int | None = None) -> list[dict]:
    """Prompts from prose documents, the literature's setting (Li et al. 2022: the first 32 words of a document
    as prompt, the rest as the human continuation).

    ``path``: JSON lines with a ``"text"`` field per document, or a raw text file in WikiText's layout, where
    each non-empty line that is not a heading (`` = Title = ``) is one paragraph, used as one document.
    Documents with fewer than ``prompt_words + min_reference_words`` whitespace words are skipped. The prompt
    is the first ``prompt_words`` words joined by single spaces; the reference the rest, after one space.
    """
    path = Path(path)
    if path.suffix in (".jsonl", ".json"):
        documents = [_document(where, record) for where, record in read_jsonl(path)]
    else:
        documents = [line.strip() for _, line in read_lines(path)]
        documents = [d for d in documents if d and not (d.startswith("=") and d.endswith("="))]
    records = []
    for number, document in enumerate(documents):
        tokens = document.split()
        if len(tokens) < prompt_words + min_reference_words:
            continue
        records.append({"prompt": " ".join(tokens[:prompt_words]), "reference": " " + " ".join(tokens[prompt_words:]),
                        "source": f"{path.name}#{number}"})
        if limit is not None and len(records) >= limit:
            break
    return records


def _document(where: str, record) -> str:
    """The ``text`` of one JSON line of documents (``ValueError`` naming the line without one)."""
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{where}: every line needs a string 'text', got {_shown(record)}")
    return record["text"]


def prompt_set_text(records: list[dict]) -> str:
    """A prompt set as JSON lines."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_prompt_set(records: list[dict], path: str | Path) -> None:
    Path(path).write_text(prompt_set_text(records), encoding="utf-8")
