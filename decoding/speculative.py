"""Speculative decoding: a draft proposes ``g`` tokens per row, the target verifies them in one forward pass.

Both models keep their KV caches across steps (:class:`~decoding.ragged_cache.RaggedCache`); rejected positions
become holes or are cropped, the prompt is never re-encoded. Draft, accepted, recovered, bonus and emitted tokens
are defined in :mod:`decoding.kernels.reference`.
"""

from __future__ import annotations

import torch

from .proposers import DraftModelProposer, Proposal
from .ragged_cache import RaggedCache
from .run import Run
from .stats import AcceptanceStats
from .strategy import Strategy
from .validation import check_int, check_model
from .vocab import check_vocab_compatibility


class SpeculativeDecoding(Strategy):
    """Lossless speculative decoding with a draft model, for any batch size.

    Args:
        draft_model: a decoder-only transformers model on the target's device, sharing its tokenizer
            (vocabularies may differ by embedding padding).
        num_draft_tokens: ``g``, tokens drafted per step (>= 1).
        tokenizers: optional ``(target_tokenizer, draft_tokenizer)``, to prove vocabularies compatible.
        compact_threshold: compact a cache when holes exceed this fraction of its slots (batch > 1 only).
    """

    draft_role = "draft"

    def __init__(self, draft_model, num_draft_tokens: int = 4, *, tokenizers=None, compact_threshold: float = 0.25):
        check_model(draft_model, self.draft_role)
        check_int(num_draft_tokens, "num_draft_tokens", 1)
        if isinstance(compact_threshold, bool) or not isinstance(compact_threshold, (int, float)) \
                or not compact_threshold >= 0:  # inf: never compact
            raise ValueError(f"compact_threshold must be a number >= 0, got {compact_threshold!r}")
        self.draft_model = draft_model
        self.num_draft_tokens = num_draft_tokens
        self.tokenizers = tokenizers
        self.compact_threshold = compact_threshold
        self.stats = self.new_stats()

    def new_stats(self) -> AcceptanceStats:
        return AcceptanceStats()

    def models(self) -> dict:
        return {self.draft_role: self.draft_model}

    def draft_length(self) -> int:
        return self.num_draft_tokens

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        check_vocab_compatibility(model, self.draft_model, self.tokenizers, role=self.draft_role)

    def proposer(self, run: Run) -> DraftModelProposer:
        return DraftModelProposer(self.draft_model, run)

    def target_scores(self, logits: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """The scores drafts are verified against, before the user's processing ``# [b, g+1, V]``: the target's
        logits."""
        return logits

    def decode(self, run: Run) -> None:
        """Draft, verify in one target pass, commit, roll both caches back; until every row has finished."""
        target = RaggedCache(run.model, run.prompt_mask.shape[0], run.prompt_mask.device)
        proposer = self.proposer(run)
        feed = (run.sequences.tokens[:, : run.sequences.prompt_length], run.prompt_mask)  # the prompt first
        while True:
            g = min(self.num_draft_tokens, run.remaining() - 1)
            proposal = proposer.propose(run, run.sampler, g)  # ids [b, g]
            tokens = torch.cat([feed[0], proposal.ids], dim=1)
            valid = torch.cat([feed[1], torch.ones_like(proposal.ids)], dim=1)
            logits = target.forward(tokens, valid, logits_to_keep=g + 1)  # [b, g+1, V]
            output_ids, num_accepted, scores = run.sampler.verify(
                run.rows, self.target_scores(logits, proposal), proposal.ids, proposal.probs)  # [b, g+1], [b]
            run.stats.record(num_accepted, g)
            finished = run.commit(output_ids, scores, logits)
            target.keep_last(torch.arange(g, device=num_accepted.device) < num_accepted[:, None])
            proposer.accept(num_accepted)
            survivors = run.drop_finished(finished)
            if survivors.numel() == 0:
                return
            if survivors.numel() < finished.numel():
                target.select_rows(survivors)
                proposer.select_rows(survivors)
            target.compact_if_holes_exceed(self.compact_threshold)
            proposer.prepare(run, self.compact_threshold)
            feed = (run.sequences.window(run.rows, 1), torch.ones_like(run.rows)[:, None])  # the emitted token
