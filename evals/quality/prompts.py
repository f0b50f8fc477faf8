"""``decoding-eval``'s prompt sets: reading one (JSON lines ``{"prompt", "reference", "source"}``), the shipped
Python-code set (``prompts_quality/python_code.jsonl``) and how it is built, and prose sets built from documents
the literature's way (manual: ``docs/QUALITY.md``, "Prompt sets")."""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from decoding.evals.common.prompt_files import EVALS_DIR, read_jsonl

__all__ = ["PROMPT_SET_DIR", "PromptItem", "build_code_prompt_set", "default_prompt_set", "load_prompt_set",
           "text_prompt_set", "write_prompt_set"]

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
    ``limit`` items."""
    items = []
    for where, record in read_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
            raise ValueError(f"{where}: every line needs a non-empty string 'prompt'")
        items.append(PromptItem(record["prompt"], record.get("reference"), record.get("source")))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


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
    with open(path, encoding="utf-8") as handle:
        if path.suffix in (".jsonl", ".json"):
            documents = [json.loads(line)["text"] for line in handle if line.strip()]
        else:
            documents = [line.strip() for line in handle]
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


def write_prompt_set(records: list[dict], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
