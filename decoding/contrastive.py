"""Contrastive decoding and proxy-tuning: a small model steers a large one through its logits.

- :class:`ContrastiveDecoding` (Li et al. 2022; O'Brien & Lewis 2023): the expert's logits minus the amateur's,
  restricted to tokens the expert finds plausible. Formulas in :func:`decoding.kernels.reference.contrastive_scores`.
- :class:`ProxyTuning` (Liu et al. 2024; DExperts): ``s_large + alpha * (s_tuned - s_base)``.

The logit form's score ``(1 + beta) s_e - beta s_a`` divided by ``beta`` tends to Li et al.'s ``log p_e - log p_a``
(up to a per-row constant) as ``beta`` grows; ``beta = 0`` is the expert alone. Both forms use the plausibility
set ``p_e >= alpha * max p_e``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernels import ops as kernels
from .mixing import LogitMixing, recent_window
from .ragged_cache import RaggedCache
from .run import Run
from .validation import check_int, check_real
from .vocab import on_shared_ids, vocab_size


@dataclass(frozen=True)
class Contrast:
    """Contrastive decoding's settings, validated, and its score."""

    alpha: float = 0.1
    beta: float = 0.5
    form: str = "logit"
    amateur_temperature: float = 1.0

    def __post_init__(self):
        check_contrastive_settings(self.alpha, self.beta, self.form, self.amateur_temperature)

    def settings(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "form": self.form,
                "amateur_temperature": self.amateur_temperature}

    def scores(self, expert_logits: torch.Tensor, amateur_logits: torch.Tensor) -> torch.Tensor:
        """``# [N, V]`` scores, ``-inf`` outside the plausible set, from raw logits ``# [N, V]`` of both models."""
        return kernels.contrastive_scores(expert_logits, amateur_logits, **self.settings())


def check_contrastive_settings(alpha: float, beta: float, form: str, amateur_temperature: float) -> None:
    for name, value in (("alpha", alpha), ("beta", beta), ("amateur_temperature", amateur_temperature)):
        check_real(value, name)
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1] (the plausibility threshold p >= alpha * max p), got {alpha}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0 (0 is the expert alone), got {beta}")
    if form not in ("logit", "logprob"):
        raise ValueError(f"form must be 'logit' (O'Brien & Lewis) or 'logprob' (Li et al.), got {form!r}")
    if not amateur_temperature > 0:
        raise ValueError(f"amateur_temperature must be > 0, got {amateur_temperature}")


class WindowReader:
    """A model that sees only the last ``width`` tokens of each row (Li et al.'s ``ignore_prefix``): it re-encodes
    that window every step, with no cache across steps."""

    def __init__(self, model, width: int):
        self.model, self.width = model, width

    def next_logits(self, feed: tuple, run: Run) -> torch.Tensor:
        tokens, valid = recent_window(run, self.width)
        return RaggedCache(self.model, tokens.shape[0], tokens.device).forward(tokens, valid, logits_to_keep=1)[:, 0]

    def select_rows(self, survivors: torch.Tensor) -> None:
        """Nothing to select: the window is read afresh from the run's active rows."""


class ContrastiveDecoding(LogitMixing):
    """Contrastive decoding with an amateur model, for any batch size.

    Args:
        amateur: a small decoder-only model sharing the expert's tokenizer (padded vocabularies allowed).
        alpha: plausibility threshold in (0, 1].
        beta: contrast strength of the logit form (>= 0; 0 is the expert's own decoding).
        amateur_temperature: divides the amateur's logits (Li et al. use 0.5 or 1.0).
        form: ``"logit"`` (O'Brien & Lewis, default) or ``"logprob"`` (Li et al.).
        amateur_window: if set, the amateur sees only the last ``amateur_window`` tokens of the context
            (Li et al.'s ``ignore_prefix``); it then re-encodes that window every step instead of using a cache.
        tokenizers: optional ``(expert_tokenizer, amateur_tokenizer)`` to prove the vocabularies compatible.

    Raw logits of both models feed the score; the user's logits processors (temperature, top-p, ...) apply to it.
    """

    def __init__(self, amateur, alpha: float = 0.1, beta: float = 0.5, amateur_temperature: float = 1.0, *,
                 form: str = "logit", amateur_window: int | None = None, tokenizers=None):
        self.contrast = Contrast(alpha, beta, form, amateur_temperature)
        if amateur_window is not None:
            check_int(amateur_window, "amateur_window", 1)
        super().__init__({"amateur": amateur}, {"amateur": tokenizers} if tokenizers else None)
        self.amateur_window = amateur_window

    def pick(self, run, target_logits, helper_logits):
        vocab = target_logits.shape[-1]
        shared = min(vocab, vocab_size(self.helpers["amateur"]))
        return run.sampler.pick_contrastive(run.rows, target_logits[:, :shared], helper_logits["amateur"][:, :shared],
                                            self.contrast, vocab)

    def reader(self, role, model, run):
        if self.amateur_window is None:
            return super().reader(role, model, run)
        return WindowReader(model, self.amateur_window)


class ProxyTuning(LogitMixing):
    """Proxy-tuning: steer the large model (the one ``generate`` is called on) by a small tuned model's difference
    from its small base: ``s_large + alpha * (s_tuned - s_base)``. Three models, three caches.

    Args:
        base, tuned: small decoder-only models sharing the large model's tokenizer.
        alpha: strength of the steer (1.0 in the paper).
        tokenizers: optional dict role (``"base"``, ``"tuned"``) -> ``(large_tokenizer, small_tokenizer)``.
    """

    def __init__(self, base, tuned, alpha: float = 1.0, *, tokenizers: dict | None = None):
        check_real(alpha, "alpha")
        super().__init__({"base": base, "tuned": tuned}, tokenizers)
        self.alpha = alpha

    def pick(self, run, target_logits, helper_logits):
        def proxy(large, tuned, base):
            return kernels.proxy_tuning_scores(large, tuned, base, alpha=self.alpha)

        helper_vocab = min(vocab_size(model) for model in self.helpers.values())
        scores = on_shared_ids(proxy, helper_vocab, target_logits, helper_logits["tuned"], helper_logits["base"])
        return run.sampler.pick(run.rows, scores)
