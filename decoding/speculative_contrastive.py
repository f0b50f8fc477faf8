"""Speculative contrastive decoding (Yuan et al. 2023): contrastive decoding's output at speculative speed.

The amateur drafts ``g`` tokens from its own processed law ``q``; the expert scores all of them in one pass; each
position's target law is the contrastive distribution ``P = softmax(processed(score(s_e, s_a)))`` built from the
expert's and the amateur's logits at that position (the amateur also reads its last draft, so the bonus position
has amateur logits too). Drafts are accepted or rejected against ``P`` with the lossless rule, so greedy output
equals :class:`~decoding.contrastive.ContrastiveDecoding`'s token for token and sampled output follows ``P``.
"""

from __future__ import annotations

import torch

from .contrastive import Contrast
from .proposers import DraftModel, Proposal, Proposer
from .speculative import SpeculativeDecoding
from .vocab import check_prompt_ids, on_shared_ids, vocab_size


class SpeculativeContrastiveDecoding(SpeculativeDecoding):
    """Contrastive decoding whose amateur also drafts; arguments as :class:`~decoding.ContrastiveDecoding`
    (``alpha``, ``beta``, ``amateur_temperature``, ``form``) and :class:`~decoding.SpeculativeDecoding`
    (``num_draft_tokens``, ``tokenizers``, ``compact_threshold``, ``verification``). Statistics as
    ``SpeculativeDecoding``'s."""

    draft_role = "amateur"
    cross_tokenizer_drafts = False  # the amateur's logits enter the score: one vocabulary

    def __init__(self, amateur, alpha: float = 0.1, beta: float = 0.5, num_draft_tokens: int = 4,
                 amateur_temperature: float = 1.0, *, form: str = "logit", tokenizers=None,
                 compact_threshold: float = 0.25, verification: str = "token"):
        self.contrast = Contrast(alpha, beta, form, amateur_temperature)
        if isinstance(amateur, Proposer):
            raise TypeError("the amateur must be a model: its logits enter the contrastive score")
        super().__init__(amateur, num_draft_tokens, tokenizers=tokenizers, compact_threshold=compact_threshold,
                         verification=verification)

    def draft_model_proposer(self, model, tokenizers) -> DraftModel:
        """The amateur drafts, and also reads its last draft: its logits enter every verified position's score."""
        return DraftModel(model, tokenizers=tokenizers, score_bonus=True, role=self.draft_role)

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        super().validate(model, generation_config, input_ids, attention_mask)
        check_prompt_ids(input_ids, attention_mask, self.draft_model, self.draft_role)

    def target_scores(self, logits: torch.Tensor, proposal: Proposal) -> torch.Tensor:
        """Contrastive scores ``# [b, g+1, V]`` from the expert's and the amateur's logits ``# [b, g+1, V]``."""
        b, n, vocab = logits.shape

        def contrast(expert, amateur):  # the kernels take rows: [b * n, V]
            return self.contrast.scores(expert.reshape(b * n, -1), amateur.reshape(b * n, -1)).reshape(b, n, -1)

        return on_shared_ids(contrast, vocab_size(self.draft_model), logits, proposal.logits)
