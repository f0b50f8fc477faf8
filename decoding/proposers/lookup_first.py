"""Prompt lookup first, a draft head elsewhere: per row and step, a row whose last n-gram occurred earlier in its
own text proposes what followed it there (:class:`PromptLookup`); every other row proposes the head's drafts
(:class:`FeatureDraft`). Copying wins where answers quote their prompt (summaries, retrieval, edits), the head
where they do not; the field serves the same mix (Arctic Inference: suffix decoding beside an EAGLE-like head).

Only a head can share its rows this way: it drops its own drafts after every step and reads the committed tokens
from the target's features, whoever proposed them, where a draft model's cache keeps the drafts it accepted.
Each row's proposal law is its own proposer's (one-hot where it copies), so verification stays exact.
"""

from __future__ import annotations

import torch

from ..adaptive import FixedLength
from ..validation import check_int
from ..vocab import vocab_size
from .base import Drafter, Proposal, Proposer
from .eagle_head import Eagle3Head
from .feature_draft import FeatureDraft
from .prompt_lookup import PromptLookup


class LookupFirst(Proposer):
    """``head`` (an :class:`Eagle3Head` or :class:`FeatureDraft`) drafts for the rows prompt lookup finds no
    n-gram for: ``max_ngram`` down to ``min_ngram`` tokens are matched (a single repeated token says little about
    what follows, hence ``min_ngram=2``). ``head_tokens``: at most this many head drafts per step (default: as
    many as the step's length), where copied runs may be longer."""

    role = "draft head"

    def __init__(self, head, *, max_ngram: int = 3, min_ngram: int = 2, head_tokens: int | None = None):
        if isinstance(head, Eagle3Head):
            head = FeatureDraft(head)
        if not isinstance(head, FeatureDraft):
            raise TypeError(f"LookupFirst shares rows with a draft head (an Eagle3Head or FeatureDraft), got "
                            f"{type(head).__name__}: a draft model's cache keeps its own accepted drafts, so it "
                            "cannot take copied ones; use PromptLookup or the draft model alone")
        if head_tokens is not None:
            check_int(head_tokens, "head_tokens", 1)
        self.head, self.lookup, self.head_tokens = head, PromptLookup(max_ngram, min_ngram), head_tokens

    def models(self) -> dict:
        return self.head.models()

    def validate(self, target, input_ids, attention_mask) -> None:
        self.head.validate(target, input_ids, attention_mask)

    def start(self, run) -> LookupFirstDrafter:
        return LookupFirstDrafter(self, run)


class LookupFirstDrafter(Drafter):
    def __init__(self, settings: LookupFirst, run):
        self.head, self.lookup = settings.head.start(run), settings.lookup.start(run)
        self.head_tokens = settings.head_tokens
        self.target_layers = self.head.target_layers

    def propose(self, run, sampler, k: int, length) -> Proposal:
        # The copies take every position up to k: the length policy plans the head's drafts only (its plan is
        # per step, and a copied token has no confidence of its own to weigh).
        copied = self.lookup.propose(run, sampler, k, FixedLength(k))  # ids [b, k]
        matched = copied.ids[:, 0] >= 0 if k else torch.zeros_like(run.rows, dtype=torch.bool)  # [b]
        everyone = k > 0 and bool(matched.all())  # a host read: no head drafts where every row copies
        drafted = self.head.propose(run, sampler, 0 if everyone else min(k, self.head_tokens or k), length)
        proposal = merge(copied, drafted, matched, vocab_size(run.model) if run.do_sample else None)
        run.sequences.write(run.rows, 0, proposal.ids)  # both wrote tentatively; the merged drafts stand
        return proposal

    def accept(self, num_accepted: torch.Tensor, features=None) -> None:
        self.head.accept(num_accepted, features)

    def select_rows(self, survivors: torch.Tensor) -> None:
        self.head.select_rows(survivors)
        self.lookup.select_rows(survivors)

    def prepare(self, run, compact_threshold: float) -> None:
        self.head.prepare(run, compact_threshold)


def merge(copied: Proposal, drafted: Proposal, matched: torch.Tensor, vocab: int | None) -> Proposal:
    """Row by row, ``copied`` where ``matched  # [b]``, else ``drafted``: ids ``# [b, k]`` (-1 padded to the wider
    of the two), their laws ``# [b, k, V]`` when sampling (``vocab``; None when greedy) and the head's confidence
    (1 for a copied token) when it has one."""
    width = max(copied.ids.shape[1], drafted.ids.shape[1])
    rows = matched[:, None]  # [b, 1]
    ids = torch.where(rows, _pad(copied.ids, width, -1), _pad(drafted.ids, width, -1))
    probs = None
    if vocab is not None:
        laws = [p.probs if p.probs is not None else p.ids.new_zeros(*p.ids.shape, vocab, dtype=torch.float32)
                for p in (copied, drafted)]
        probs = torch.where(rows[..., None], _pad(laws[0], width, 0.0), _pad(laws[1], width, 0.0))
    confidence = None
    if drafted.confidence is not None:
        confidence = torch.where(rows, (ids >= 0).to(drafted.confidence.dtype), _pad(drafted.confidence, width, 0.0))
    return Proposal(ids=ids, probs=probs, confidence=confidence)


def _pad(values: torch.Tensor, width: int, fill) -> torch.Tensor:
    """``values  # [b, n, ...]`` padded with ``fill`` to ``width`` columns."""
    missing = width - values.shape[1]
    if missing == 0:
        return values
    return torch.cat([values, values.new_full((values.shape[0], missing, *values.shape[2:]), fill)], dim=1)
