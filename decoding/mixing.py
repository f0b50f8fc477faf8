"""Strategies that pick each token from a combination of several models' logits: contrastive decoding and
proxy-tuning.

The target (the model whose ``generate`` is called: the expert, or the large model) and each helper model keep
their own :class:`~decoding.ragged_cache.RaggedCache` across steps. A step feeds every model the last committed
token, combines the next-token logits into scores through a :mod:`decoding.kernels` function, applies the
user's logits processors to the scores (per-row views, as in :mod:`decoding.processing`) and picks the token
greedily or by sampling. All rows advance together; finished rows leave the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import kernels
from .ragged_cache import RaggedCache
from .strategy import Run, Strategy
from .validation import check_model
from .vocab import check_prompt_ids, check_vocab_compatibility, to_vocab, vocab_size


@dataclass
class MixingStats:
    """Counts of the last ``generate`` call: ``steps`` are row-steps (tokens decided, per row), ``forwards``
    the forward passes each model ran (by role: ``"target"`` and the helper roles)."""

    steps: int = 0
    forwards: dict = field(default_factory=dict)

    def count_forward(self, role: str) -> None:
        self.forwards[role] = self.forwards.get(role, 0) + 1


class LogitMixing(Strategy):
    """Base of token-by-token strategies over the target and ``helpers`` (role -> model).

    Subclasses implement :meth:`combine`. ``tokenizers`` maps a role to ``(target_tokenizer, helper_tokenizer)``
    when vocabularies must be proved compatible from tokenizers (see :mod:`decoding.vocab`).
    """

    def __init__(self, helpers: dict, tokenizers: dict | None = None):
        for role, model in helpers.items():
            check_model(model, role)
        self.helpers = helpers
        self.tokenizers = tokenizers or {}
        self.stats = MixingStats()

    def models(self) -> dict:
        return dict(self.helpers)

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        for role, helper in self.helpers.items():
            check_vocab_compatibility(model, helper, self.tokenizers.get(role), role=role)
            check_prompt_ids(input_ids, attention_mask, helper, role)

    def combine(self, target_logits: torch.Tensor, helper_logits: dict) -> torch.Tensor:
        """Scores ``# [b, V]`` from raw ``target_logits  # [b, V]`` and ``helper_logits`` (role -> ``[b, V]``)."""
        raise NotImplementedError

    def helper_logits(self, role: str, cache: RaggedCache, feed: tuple, run: Run) -> torch.Tensor:
        """Next-token logits ``# [b, V_helper]`` of one helper; by default from its cache, like the target's."""
        return cache.forward(*feed, logits_to_keep=1)[:, 0]

    def decode(self, run: Run) -> None:
        self.stats = MixingStats()
        batch, device = run.prompt_mask.shape[0], run.prompt_mask.device
        vocab = vocab_size(run.model)
        shared = min([vocab] + [vocab_size(m) for m in self.helpers.values()])
        target = RaggedCache(run.model, batch, device)
        helpers = {role: RaggedCache(m, batch, device) for role, m in self.helpers.items()}
        feed = (run.sequences.tokens[:, : run.sequences.prompt_length], run.prompt_mask)
        fused = run.fused_warpers()  # (temperature, top_k, top_p) on the fused kernel route, else None
        while True:
            logits = target.forward(*feed, logits_to_keep=1)[:, 0]  # [b, V]
            self.stats.count_forward("target")
            others = {}
            for role, cache in helpers.items():
                others[role] = to_vocab(self.helper_logits(role, cache, feed, run), vocab)  # [b, V]
                self.stats.count_forward(role)
            # Ids past the smallest vocabulary are embedding padding that some model cannot score: the scores
            # (and contrastive decoding's plausibility set, relative to the expert's best id) are computed over
            # the shared ids only, and the others get -inf.
            shared_logits = {r: o[:, :shared] for r, o in others.items()}
            if fused is not None:
                token, scores = self.choose(run, logits[:, :shared], shared_logits, fused), None
            else:
                mixed = to_vocab(self.combine(logits[:, :shared], shared_logits), vocab)
                scores = run.process(mixed[:, None], offset=0)[:, 0]  # [b, V]
                token = self._pick(run, scores)
            finished = run.commit(token[:, None], None if scores is None else scores[:, None], logits[:, None])
            self.stats.steps += token.shape[0]
            keep = run.drop(finished)
            if keep.numel() == 0:
                break
            if keep.numel() < finished.numel():
                for cache in (target, *helpers.values()):
                    cache.select_rows(keep)
            feed = (run.sequences.window(run.rows, 1), torch.ones_like(run.rows)[:, None])

    def choose(self, run: Run, target_logits: torch.Tensor, helper_logits: dict, warpers: tuple) -> torch.Tensor:
        """The fused route's next id per row ``# [b]`` from raw logits ``# [b, V]`` (no processed scores are
        materialised): greedy, or a sample under ``warpers = (temperature, top_k, top_p)``."""
        mixed = self.combine(target_logits, helper_logits)
        if not run.do_sample:
            return kernels.greedy(mixed)
        temperature, top_k, top_p = warpers
        uniforms = torch.rand(mixed.shape[0], device=mixed.device)
        return kernels.sample_logits(mixed, uniforms, temperature=temperature, top_k=top_k, top_p=top_p,
                                     return_probs=False)[0]

    @staticmethod
    def _pick(run: Run, scores: torch.Tensor) -> torch.Tensor:
        if not run.do_sample:
            return kernels.greedy(scores)
        uniforms = torch.rand(scores.shape[0], device=scores.device)
        return kernels.sample(kernels.probabilities(scores), uniforms)


def recent_window(run: Run, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``width`` committed tokens of each active row and their validity, ``# [b, width]`` each.

    Columns before a row's start, and the prompt's left padding, are marked invalid.
    """
    prompt_length = run.sequences.prompt_length
    columns = run.sequences.lengths[run.rows, None] - width + torch.arange(width, device=run.rows.device)
    inside = columns >= 0
    columns = columns.clamp_min(0)
    tokens = run.sequences.tokens[run.rows[:, None], columns]
    in_prompt = run.prompt_mask[run.rows[:, None], columns.clamp_max(prompt_length - 1)].bool()
    valid = inside & ((columns >= prompt_length) | in_prompt)
    return tokens, valid.to(torch.int64)
