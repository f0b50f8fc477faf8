"""``decoding-bench``'s prompts: the shipped prompt set (``prompts/*.jsonl``), choosing a mix of categories, and
left-padded batches of tokenized prompts.

A prompt set is JSON lines ``{"id", "category", "prompt"}``; the shipped set has one file per category
(:data:`CATEGORIES`). The default mix (:data:`DEFAULT_MIX`) favours code, since the embedded pair is a Python
code model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CATEGORIES", "DEFAULT_MIX", "PROMPTS_DIR", "Batch", "Prompt", "left_pad", "load_prompt_set",
           "make_batches", "select_prompts"]

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
CATEGORIES = ("code_completion", "code_explanation", "summarization", "question_answering", "math", "retrieval")
# The default prompt mix: the embedded pair is a Python code model, so code prompts dominate.
DEFAULT_MIX = {"code_completion": 2, "code_explanation": 1, "retrieval": 1, "summarization": 1,
               "question_answering": 1, "math": 1,
               # the held-out chat set (prompts_chat/, SmolLM2's default): 8 prompts, two batches of 4
               "conversation": 2, "code": 2}


@dataclass
class Prompt:
    """One benchmark prompt; ``ids`` (``# [length]``) once tokenized."""

    id: str
    category: str
    text: str
    ids: torch.Tensor | None = None


def load_prompt_set(path: str | Path | None = None) -> list[Prompt]:
    """Prompts of a ``.jsonl`` file, or of every ``*.jsonl`` file in a folder (default: the shipped set).

    Each line is a JSON object with string fields ``id``, ``category`` and ``prompt``. Raises ``ValueError``
    (file and line named) for a malformed line, ``OSError`` for a missing file.
    """
    path = Path(path) if path is not None else PROMPTS_DIR
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"no *.jsonl prompt files in {path}")
    prompts, seen = [], set()
    for file in files:
        with open(file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record.get(k)
                                                       for k in ("id", "category", "prompt")):
                raise ValueError(f"{file}:{number}: expected an object with string fields id, category and prompt")
            if record["id"] in seen:
                raise ValueError(f"{file}:{number}: duplicate prompt id {record['id']!r}")
            seen.add(record["id"])
            prompts.append(Prompt(record["id"], record["category"], record["prompt"]))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def select_prompts(prompts: list[Prompt], categories: Sequence[str] | None = None,
                   per_category: int | None = None) -> list[Prompt]:
    """The first ``per_category`` prompts of each category in ``categories`` (default: all present).

    Without ``per_category``, the shipped set's :data:`DEFAULT_MIX` decides how many of its categories to take
    (1 of a category it does not name); other prompt sets take 1 of each. Prompts are interleaved across
    categories, so batches mix them.
    """
    present = list(dict.fromkeys(p.category for p in prompts))
    if categories is None:
        categories = present
    unknown = [c for c in categories if c not in present]
    if unknown:
        raise ValueError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"this prompt set has: {', '.join(present)}")
    groups = []
    for category in categories:
        count = per_category if per_category is not None else DEFAULT_MIX.get(category, 1)
        groups.append([p for p in prompts if p.category == category][:count])
    selected = []
    for k in range(max(len(g) for g in groups)):
        selected += [g[k] for g in groups if k < len(g)]
    return selected


def left_pad(prompts: list[torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D prompts into ``input_ids, attention_mask  # [b, longest]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(prompts), width, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.numel():] = prompt
        mask[row, width - prompt.numel():] = 1
    return ids, mask


@dataclass
class Batch:
    """One batch of prompts, left-padded to its longest."""

    ids: torch.Tensor  # [b, width] left-padded
    mask: torch.Tensor  # [b, width]
    prompts: list[int]  # index into the prompt list, per row


def make_batches(prompts: list[torch.Tensor], batch_size: int, device, pad_token_id: int = 0) -> list[Batch]:
    """``ceil(len(prompts) / batch_size)`` full batches; the last one wraps around to the first prompts."""
    out = []
    for k in range(-(-len(prompts) // batch_size)):
        rows = [(k * batch_size + i) % len(prompts) for i in range(batch_size)]
        ids, mask = left_pad([prompts[r] for r in rows], pad_token_id)
        out.append(Batch(ids.to(device), mask.to(device), rows))
    return out
