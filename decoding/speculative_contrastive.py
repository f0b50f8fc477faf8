"""Speculative contrastive decoding (Yuan et al. 2023): contrastive decoding's output at speculative speed.

The amateur drafts ``g`` tokens from its own processed law ``q``; the expert scores all of them in one pass;
each position's target law is the contrastive distribution ``P = softmax(processed(score(s_e, s_a)))`` built
from the expert's and the amateur's logits at that position (the amateur also reads its last draft token, so
the bonus position has amateur logits too). Drafts are accepted or rejected against ``P`` with the lossless
rule of :mod:`decoding.kernels.reference` (greedy: against ``argmax P``), so greedy output equals
:class:`~decoding.contrastive.ContrastiveDecoding`'s token for token and sampled output follows ``P`` exactly.
"""

from __future__ import annotations

import torch

from . import kernels
from .contrastive import check_contrastive_settings
from .speculative import SpeculativeDecoding
from .strategy import Run
from .vocab import check_prompt_ids, to_vocab, vocab_size


class SpeculativeContrastiveDecoding(SpeculativeDecoding):
    """Contrastive decoding whose amateur also drafts; arguments as :class:`~decoding.ContrastiveDecoding`
    (``alpha``, ``beta``, ``amateur_temperature``, ``form``) and :class:`~decoding.SpeculativeDecoding`
    (``num_draft_tokens``, ``tokenizers``, ``compact_threshold``). Statistics as ``SpeculativeDecoding``'s."""

    draft_role = "amateur"
    reads_last_draft = True

    def __init__(self, amateur, alpha: float = 0.1, beta: float = 0.5, num_draft_tokens: int = 4,
                 amateur_temperature: float = 1.0, *, form: str = "logit", tokenizers=None,
                 compact_threshold: float = 0.25):
        check_contrastive_settings(alpha, beta, form, amateur_temperature)
        super().__init__(amateur, num_draft_tokens, tokenizers=tokenizers, compact_threshold=compact_threshold)
        self.alpha, self.beta, self.form = alpha, beta, form
        self.amateur_temperature = amateur_temperature

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        super().validate(model, generation_config, input_ids, attention_mask)
        check_prompt_ids(input_ids, attention_mask, self.draft_model, self.draft_role)

    def _target_logits(self, run: Run, logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
        """Contrastive scores ``# [b, g+1, V]`` (before the user's processing) from expert and amateur logits
        ``# [b, g+1, V]``."""
        b, n, vocab = logits.shape
        # Ids past the smaller vocabulary are embedding padding the amateur cannot score: the scores (and the
        # plausibility set, relative to the expert's best id) are computed over the shared ids only, the
        # others get -inf.
        shared = min(vocab, vocab_size(self.draft_model))
        mixed = kernels.contrastive_scores(
            logits[..., :shared].reshape(b * n, shared), draft_logits[..., :shared].reshape(b * n, shared),
            alpha=self.alpha, beta=self.beta, form=self.form, amateur_temperature=self.amateur_temperature,
        ).reshape(b, n, shared)
        return to_vocab(mixed, vocab)
