"""``decoding-bench``'s prompts: the shipped prompt set (``prompts/*.jsonl``, lines ``{"id", "category",
"prompt"}``, one file per category), the default mix of categories, and prompt text made ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from decoding.evals.common.pairs import Pair
from decoding.evals.common.prompt_files import EVALS_DIR, read_jsonl

__all__ = ["CATEGORIES", "CHAT_PROMPTS_DIR", "DEFAULT_MIX", "EDITING_PROMPTS_DIR", "PROMPTS_DIR", "Prompt", "load_prompt_set", "select_prompts",
           "tokenize_prompts"]

PROMPTS_DIR = EVALS_DIR.resolve() / "prompts"
CHAT_PROMPTS_DIR = EVALS_DIR.resolve() / "prompts_chat"  # held-out chat prompts of chat registry pairs
# Chat prompts whose answers copy much of the prompt (code edits): where prompt lookup pays.
EDITING_PROMPTS_DIR = EVALS_DIR.resolve() / "prompts_editing"
CATEGORIES = ("code_completion", "code_explanation", "summarization", "question_answering", "math", "retrieval")
# The default prompt mix: the embedded pair is a Python code model, so code prompts dominate.
DEFAULT_MIX = {"code_completion": 2, "code_explanation": 1, "retrieval": 1, "summarization": 1,
               "question_answering": 1, "math": 1,
               # the held-out chat set (prompts_chat/, of chat registry pairs): 8 prompts, two batches of 4
               "conversation": 2, "code": 2}
FIELDS = ("id", "category", "prompt")


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
    prompts, seen = [], set()
    for where, record in read_jsonl(path):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record.get(k) for k in FIELDS):
            raise ValueError(f"{where}: expected an object with string fields id, category and prompt")
        if record["id"] in seen:
            raise ValueError(f"{where}: duplicate prompt id {record['id']!r}")
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


def tokenize_prompts(pair: Pair, prompts: list[Prompt], max_prompt_tokens: int) -> list[Prompt]:
    """Fill ``ids`` of every prompt, keeping its last ``max_prompt_tokens`` tokens."""
    for prompt in prompts:
        ids = pair.encode(prompt.text)[-max_prompt_tokens:]
        if not ids:
            raise ValueError(f"prompt {prompt.id} has no tokens")
        prompt.ids = torch.tensor(ids, dtype=torch.int64)
    return prompts
