"""Strategies that pick each token from a combination of several models' logits: contrastive decoding and
proxy-tuning.

The target (the model whose ``generate`` is called: the expert, or the large model) and each helper read the last
committed token every step; the strategy's :meth:`LogitMixing.pick` combines their next-token logits and has the
call's sampler pick a token, after the user's processing. All rows advance together; finished rows leave the batch.
"""

from __future__ import annotations

import torch

from .ragged_cache import RaggedCache
from .run import Run
from .stats import MixingStats
from .strategy import Strategy
from .validation import check_model
from .vocab import check_prompt_ids, check_vocab_compatibility, to_vocab, vocab_size


class CacheReader:
    """A model reading each step's new tokens into its own KV cache: next-token logits ``# [b, V_model]``."""

    def __init__(self, model, run: Run):
        self.cache = RaggedCache(model, run.prompt_mask.shape[0], run.prompt_mask.device)

    def next_logits(self, feed: tuple, run: Run) -> torch.Tensor:
        return self.cache.forward(*feed, logits_to_keep=1)[:, 0]

    def select_rows(self, survivors: torch.Tensor) -> None:
        self.cache.select_rows(survivors)


class LogitMixing(Strategy):
    """Base of token-by-token strategies over the target and ``helpers`` (role -> model).

    Subclasses implement :meth:`pick`. ``tokenizers`` maps a role to ``(target_tokenizer, helper_tokenizer)``
    when vocabularies must be proved compatible from tokenizers (see :mod:`decoding.vocab`).
    """

    def __init__(self, helpers: dict, tokenizers: dict | None = None):
        for role, model in helpers.items():
            check_model(model, role)
        self.helpers = helpers
        self.tokenizers = tokenizers or {}
        self.stats = self.new_stats()

    def new_stats(self) -> MixingStats:
        return MixingStats()

    def models(self) -> dict:
        return dict(self.helpers)

    def validate(self, model, generation_config, input_ids, attention_mask) -> None:
        for role, helper in self.helpers.items():
            check_vocab_compatibility(model, helper, self.tokenizers.get(role), role=role)
            check_prompt_ids(input_ids, attention_mask, helper, role)

    def pick(self, run: Run, target_logits: torch.Tensor, helper_logits: dict) -> tuple:
        """One token per active row from raw ``target_logits  # [b, V]`` and ``helper_logits`` (role -> ``[b, V]``,
        ``-inf`` past a helper's vocabulary), through ``run.sampler``: ``ids  # [b]`` and the processed scores
        ``# [b, V]`` (None on the fused route)."""
        raise NotImplementedError

    def reader(self, role: str, model, run: Run):
        """How a helper reads the context; by default from its own cache, like the target."""
        return CacheReader(model, run)

    def decode(self, run: Run) -> None:
        """Every step: each model reads the last token, the combined scores give one token per row."""
        vocab = vocab_size(run.model)
        target = CacheReader(run.model, run)
        readers = {role: self.reader(role, model, run) for role, model in self.helpers.items()}
        feed = (run.sequences.tokens[:, : run.sequences.prompt_length], run.prompt_mask)  # the prompt first
        while True:
            logits = target.next_logits(feed, run)  # [b, V]
            run.stats.count_forward("target")
            helper_logits = {}
            for role, reader in readers.items():
                helper_logits[role] = to_vocab(reader.next_logits(feed, run), vocab)  # [b, V]
                run.stats.count_forward(role)
            token, scores = self.pick(run, logits, helper_logits)  # [b], [b, V] or None
            finished = run.commit(token[:, None], None if scores is None else scores[:, None], logits[:, None])
            run.stats.steps += token.shape[0]
            survivors = run.drop_finished(finished)
            if survivors is not None:
                if survivors.numel() == 0:
                    return
                for reader in (target, *readers.values()):
                    reader.select_rows(survivors)
            feed = (run.sequences.window(run.rows, 1), torch.ones_like(run.rows)[:, None])  # the new token


def recent_window(run: Run, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``width`` committed tokens of each active row and their validity, ``# [b, width]`` each.

    Columns before a row's start, and the prompt's left padding, are marked invalid. ``width`` is capped at the
    longest row, so that a window wider than the context costs what the context costs.
    """
    width = min(width, run.sequences.longest)
    prompt_length = run.sequences.prompt_length
    columns = run.sequences.columns(run.rows, width, -width)
    inside = columns >= 0
    columns = columns.clamp_min(0)
    tokens = run.sequences.tokens[run.rows[:, None], columns]
    in_prompt = run.prompt_mask[run.rows[:, None], columns.clamp_max(prompt_length - 1)].bool()
    valid = inside & ((columns >= prompt_length) | in_prompt)
    return tokens, valid.to(torch.int64)
