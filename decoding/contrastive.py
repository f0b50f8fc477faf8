"""Contrastive decoding and proxy-tuning: a small model steers a large one through its logits.

- :class:`ContrastiveDecoding` (Li et al. 2022; O'Brien & Lewis 2023): the expert's logits minus the
  amateur's, restricted to tokens the expert finds plausible. Formulas in
  :func:`decoding.kernels.reference.contrastive_scores`.
- :class:`ProxyTuning` (Liu et al. 2024; DExperts): ``s_large + alpha * (s_tuned - s_base)``.

How the two contrastive forms relate: the logit form's score ``(1 + beta) s_e - beta s_a`` divided by ``beta``
is ``s_e - s_a + s_e / beta``, which tends to Li et al.'s ``log p_e - log p_a`` (up to a per-row constant) as
``beta`` grows, so greedy Li et al. decoding at amateur temperature 1 is the large-``beta`` limit of the logit
form; ``beta = 0`` is the expert alone. Both use the same plausibility set ``p_e >= alpha * max p_e``.
"""

from __future__ import annotations

import torch

from . import kernels
from .mixing import LogitMixing, recent_window
from .ragged_cache import RaggedCache
from .validation import check_int, check_real


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

    Raw logits of both models feed the score; the user's logits processors (temperature, top-p, ...) apply
    to the score.
    """

    def __init__(self, amateur, alpha: float = 0.1, beta: float = 0.5, amateur_temperature: float = 1.0, *,
                 form: str = "logit", amateur_window: int | None = None, tokenizers=None):
        check_contrastive_settings(alpha, beta, form, amateur_temperature)
        if amateur_window is not None:
            check_int(amateur_window, "amateur_window", 1)
        super().__init__({"amateur": amateur}, {"amateur": tokenizers} if tokenizers else None)
        self.alpha, self.beta, self.form = alpha, beta, form
        self.amateur_temperature = amateur_temperature
        self.amateur_window = amateur_window

    def combine(self, target_logits, helper_logits):
        return kernels.contrastive_scores(
            target_logits, helper_logits["amateur"], alpha=self.alpha, beta=self.beta, form=self.form,
            amateur_temperature=self.amateur_temperature,
        )

    def choose(self, run, target_logits, helper_logits, warpers):
        temperature, top_k, top_p = warpers
        uniforms = torch.rand(target_logits.shape[0], device=target_logits.device) if run.do_sample else None
        return kernels.contrastive_choose(
            target_logits, helper_logits["amateur"], uniforms, alpha=self.alpha, beta=self.beta, form=self.form,
            amateur_temperature=self.amateur_temperature, temperature=temperature, top_k=top_k, top_p=top_p,
        )

    def helper_logits(self, role, cache, feed, run):
        if self.amateur_window is None:
            return super().helper_logits(role, cache, feed, run)
        tokens, valid = recent_window(run, self.amateur_window)
        fresh = RaggedCache(cache.model, tokens.shape[0], tokens.device)
        return fresh.forward(tokens, valid, logits_to_keep=1)[:, 0]


class ProxyTuning(LogitMixing):
    """Proxy-tuning: steer the large model (the one ``generate`` is called on) by a small tuned model's
    difference from its small base: ``s_large + alpha * (s_tuned - s_base)``. Three models, three caches.

    Args:
        base, tuned: small decoder-only models sharing the large model's tokenizer.
        alpha: strength of the steer (1.0 in the paper).
        tokenizers: optional dict role (``"base"``, ``"tuned"``) -> ``(large_tokenizer, small_tokenizer)``.
    """

    def __init__(self, base, tuned, alpha: float = 1.0, *, tokenizers: dict | None = None):
        check_real(alpha, "alpha")
        super().__init__({"base": base, "tuned": tuned}, tokenizers)
        self.alpha = alpha

    def combine(self, target_logits, helper_logits):
        return kernels.proxy_tuning_scores(target_logits, helper_logits["tuned"], helper_logits["base"], alpha=self.alpha)
