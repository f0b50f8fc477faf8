"""Prompt lookup (Saxena 2023; transformers' ``prompt_lookup_num_tokens``): draft the tokens that followed the
earliest earlier occurrence of a row's last n-gram in its own prompt and generated text, batched, per row."""

from __future__ import annotations

import torch

from ..validation import check_int
from ..vocab import vocab_size
from .base import Drafter, PositionGate, Proposal, Proposer, one_hot_probs


class PromptLookup(Proposer):
    """n-gram lookup in each row's own tokens, no model: ``max_ngram`` down to ``min_ngram`` tokens are matched
    (the longest n-gram with an earlier occurrence wins; among its occurrences, the earliest that is followed by
    at least one token), and up to ``num_draft_tokens`` of what followed are proposed. A row with no match proposes
    nothing that step (the target then emits one token). Lossless: the proposal's law is one-hot."""

    role = "prompt lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        check_int(min_ngram, "min_ngram", 1)
        check_int(max_ngram, "max_ngram", min_ngram)
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def start(self, run) -> PromptLookupDrafter:
        return PromptLookupDrafter(self, run)


class PromptLookupDrafter(Drafter):
    def __init__(self, settings: PromptLookup, run):
        self.settings = settings
        self.pads = (1 - run.prompt_mask).sum(dim=1)  # [B] left padding of every row

    def propose(self, run, sampler, k: int, length) -> Proposal:
        rows = run.rows
        ids = lookup(run.sequences.tokens, run.sequences.lengths[rows], self.pads[rows], rows, k,
                     self.settings.max_ngram, self.settings.min_ngram)  # [b, k]
        gate = PositionGate(length, rows)
        certain = torch.ones(rows.numel(), device=ids.device)  # a copied token: no confidence of its own
        for position in range(k):  # positions the length policy says do not pay are not proposed
            proposing = gate.admit(position + 1, certain, can_propose=ids[:, position] >= 0)
            ids[:, position] = torch.where(proposing, ids[:, position], -1)
        run.sequences.write(rows, 0, ids)
        probs = one_hot_probs(ids, vocab_size(run.model)) if run.do_sample else None
        return Proposal(ids=ids, probs=probs)

    def select_rows(self, survivors: torch.Tensor) -> None:
        """Nothing per row: the padding lengths are indexed by original row."""


def lookup(tokens: torch.Tensor, lengths: torch.Tensor, pads: torch.Tensor, rows: torch.Tensor, k: int,
           max_ngram: int, min_ngram: int) -> torch.Tensor:
    """Proposals ``# [b, k]`` (-1 padded) for the rows ``rows  # [b]`` of ``tokens  # [B, W]``, whose real tokens
    are the columns ``pads[i] .. lengths[i] - 1``."""
    b, device = rows.numel(), tokens.device
    out = torch.full((b, k), -1, dtype=torch.int64, device=device)
    if k == 0 or b == 0:
        return out
    width = int(lengths.max())
    text = tokens[rows, :width]  # [b, W]
    found = torch.zeros(b, dtype=torch.bool, device=device)
    for n in range(max_ngram, min_ngram - 1, -1):
        if width <= n:
            continue
        last = (lengths[:, None] - n + torch.arange(n, device=device)).clamp_min(0)
        pattern = text.gather(1, last)  # [b, n]: the last n-gram (rows shorter than n never match)
        windows = text.unfold(1, n, 1)  # [b, W - n + 1, n]
        starts = torch.arange(windows.shape[1], device=device)
        # An earlier occurrence inside the row's real tokens, followed by at least one token.
        usable = (starts >= pads[:, None]) & (starts + n < lengths[:, None]) & (lengths - n >= pads)[:, None]
        matches = (windows == pattern[:, None, :]).all(dim=2) & usable  # [b, W - n + 1]
        hit = matches.any(dim=1) & ~found
        if not bool(hit.any()):
            continue
        first = matches.to(torch.int8).argmax(dim=1)  # earliest match
        columns = first[:, None] + n + torch.arange(k, device=device)  # [b, k]: what followed it
        take = hit[:, None] & (columns < lengths[:, None])
        out = torch.where(take, text.gather(1, columns.clamp_max(width - 1)), out)
        found |= hit
        if bool(found.all()):
            break
    return out
