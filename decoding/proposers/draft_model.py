"""A small model that drafts ``g`` tokens per row from its own KV cache, rolled back after every verification.

Per step the draft first reads the committed tokens it has not read yet (``unread`` per row: after a step, the
emitted tokens it was not fed as drafts), then drafts ``g`` tokens one forward at a time, each fed back to draft
the next. With ``score_bonus`` it also reads its last draft, so that its logits exist at all ``g + 1`` verified
positions (speculative contrastive decoding contrasts them with the target's).
"""

from __future__ import annotations

import torch

from ..ragged_cache import RaggedCache
from ..validation import check_model
from ..vocab import check_vocab_compatibility, to_vocab, vocab_size
from .base import Drafter, DraftSteps, Proposal, Proposer


class DraftModel(Proposer):
    """A small decoder-only model sharing the target's tokenizer (vocabularies may differ by embedding padding).

    ``tokenizers``: optional ``(target_tokenizer, draft_tokenizer)`` to prove the vocabularies compatible;
    ``score_bonus``: the draft also reads its last draft token (speculative contrastive decoding needs its
    logits at every verified position).
    """

    def __init__(self, model, *, tokenizers=None, score_bonus: bool = False, role: str = "draft"):
        check_model(model, role)
        self.model, self.tokenizers, self.score_bonus, self.role = model, tokenizers, score_bonus, role

    def models(self) -> dict:
        return {self.role: self.model}

    def validate(self, target, input_ids, attention_mask) -> None:
        check_vocab_compatibility(target, self.model, self.tokenizers, role=self.role)

    def start(self, run) -> DraftModelDrafter:
        return DraftModelDrafter(self.model, run, score_bonus=self.score_bonus)


class DraftModelDrafter(Drafter):
    """Drafts with ``model`` for the rows of one ``generate`` call."""

    def __init__(self, model, run, *, score_bonus: bool = False):
        batch, device = run.prompt_mask.shape[0], run.prompt_mask.device
        self.model, self.score_bonus = model, score_bonus
        self.cache = RaggedCache(model, batch, device, run.readout, run.cache_capacity, beside=run.model)
        self.unread = torch.full((batch,), run.sequences.prompt_length, dtype=torch.int64, device=device)
        self.width = None  # max(unread), asked of the step's readout (None: read it when needed)
        self.pads = (1 - run.prompt_mask).sum(dim=1)  # [B] left padding of every row, by original row
        self.forwards = 0  # draft forwards of the current step

    def propose(self, run, sampler, k: int, length) -> Proposal:
        b, device = run.rows.numel(), run.rows.device
        if k == 0 and not self.score_bonus:  # a plain target step: nothing read, the unread tokens wait
            self.forwards = 0
            return Proposal(ids=torch.empty(b, 0, dtype=torch.int64, device=device), probs=None)
        vocab = vocab_size(run.model)
        tokens, valid = self._unread(run)
        steps = DraftSteps(run, sampler, length)
        logits = []
        for position in range(k):
            logits.append(to_vocab(self.cache.forward(tokens, valid, logits_to_keep=1), vocab))  # [b, 1, V]
            token = steps.draw(position, logits[-1][:, 0])
            tokens, valid = token[:, None], None  # its own draft: real in every row
            if not steps.goes_on(position + 1):
                break
        if self.score_bonus:  # read the last draft too: logits at every verified position
            logits.append(to_vocab(self.cache.forward(tokens, valid, logits_to_keep=1), vocab))
        self.forwards = len(logits)
        return steps.proposal(logits=torch.cat(logits, dim=1) if self.score_bonus else None)

    def accept(self, num_accepted: torch.Tensor, features=None) -> None:
        """Roll the cache back to the accepted drafts (``num_accepted  # [b]``) and count what is left unread."""
        if self.forwards == 0:  # a plain target step: its token joins the unread ones
            self.unread = self.unread + num_accepted + 1
            self.width = None
            return
        drafts_read = self.forwards - 1  # drafts fed back into the cache this step
        self.cache.keep_last(torch.arange(drafts_read, device=num_accepted.device) < num_accepted[:, None])
        # Emitted: the accepted drafts and one recovered or bonus token; the accepted drafts it read are not unread.
        self.unread = num_accepted + 1 - num_accepted.clamp_max(drafts_read)
        self.width = self.cache.readout.ask(self.unread.max())

    def select_rows(self, survivors: torch.Tensor) -> None:
        """Keep the rows ``survivors  # [b']`` (positions in the current batch)."""
        self.cache.select_rows(survivors)
        self.unread = self.unread[survivors]
        # self.width, the old batch's widest, stays: a window wider than a row's unread tokens holds holes.

    def prepare(self, run, compact_threshold: float) -> None:
        """Before the next step: compact the cache if it has too many holes."""
        self.cache.compact_if_holes_exceed(compact_threshold)

    def _unread(self, run) -> tuple[torch.Tensor, torch.Tensor]:
        """The committed tokens the draft has not read, right-aligned: ``tokens, valid  # [b, width]`` (the prompt's
        left padding invalid while the prompt is unread). The target may emit ids of its embedding padding that a
        smaller draft has no row for: the draft reads its last id there instead (any id keeps speculative decoding
        exact: verification is the target's)."""
        width = self.width.value[0] if self.width is not None else int(self.unread.max())
        first = width - self.unread  # [b]: each row's first unread column
        if self.cache.mask.shape[1] == 0:  # nothing read yet: the window starts with the padded prompt
            first = first + self.pads[run.rows]
        valid = torch.arange(width, device=first.device) >= first[:, None]  # [b, width]
        tokens = run.sequences.window(run.rows, width).clamp_max(vocab_size(self.model) - 1)
        return tokens, valid.to(torch.int64)
