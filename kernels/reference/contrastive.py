"""Contrastive decoding's and proxy tuning's scores from two models' logits over the same ids."""

from __future__ import annotations

import math

import torch

from .sampling import compute_dtype


def contrastive_scores(
    expert_logits: torch.Tensor,
    amateur_logits: torch.Tensor,
    *,
    alpha: float = 0.1,
    beta: float = 0.5,
    form: str = "logit",
    amateur_temperature: float = 1.0,
) -> torch.Tensor:
    """Contrastive decoding scores, ``-inf`` outside the expert's plausible set.

    Args:
        expert_logits: ``# [N, V]`` raw expert logits ``s_e``.
        amateur_logits: ``# [N, V]`` raw amateur logits ``s_a`` over the same ids.
        alpha: plausibility: only ids with ``s_e >= log(alpha) + max s_e`` (``p_e >= alpha * max p_e``) survive.
        beta: ``form="logit"`` (O'Brien & Lewis 2023): ``(1 + beta) * s_e - beta * s_a / T``. ``beta = 0``
            returns the expert's logits unmasked, so decoding is exactly the expert's own.
        form: ``"logit"``, or ``"logprob"`` (Li et al. 2022): ``log p_e - log softmax(s_a / T)``; ``beta`` unused.
        amateur_temperature: ``T``, dividing the amateur's logits.
    Returns:
        ``# [N, V]`` float32 scores (float64 for float64 input).
    """
    return _contrastive(expert_logits, amateur_logits, alpha, beta, form, amateur_temperature, shift_free=False)


def _contrastive(expert_logits, amateur_logits, alpha, beta, form, amateur_temperature, *, shift_free):
    """Contrastive scores; ``shift_free`` drops the log-probability form's per-row constant (choices only)."""
    dtype = compute_dtype(expert_logits)
    expert = expert_logits.to(dtype)
    # A multiply by 1 / T (not a divide): the same operation on every device and in the kernels (torch's CUDA
    # division by a scalar is itself a multiply by the reciprocal).
    amateur = amateur_logits.to(dtype) * (1.0 / amateur_temperature)
    if form == "logit":
        if beta == 0:
            return expert.clone()
        scores = (1 + beta) * expert - beta * amateur
    elif form == "logprob":
        scores = expert - amateur if shift_free else torch.log_softmax(expert, dim=-1) - torch.log_softmax(amateur, dim=-1)
    else:
        raise ValueError(f"form must be 'logit' or 'logprob', got {form!r}")
    plausible = expert >= expert.max(dim=-1, keepdim=True).values + math.log(alpha)
    return scores.masked_fill(~plausible, float("-inf"))


def proxy_tuning_scores(
    large_logits: torch.Tensor, tuned_logits: torch.Tensor, base_logits: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """Proxy-tuning / DExperts: ``s_large + alpha * (s_tuned - s_base)``, all ``# [N, V]`` -> ``# [N, V]``."""
    dtype = compute_dtype(large_logits)
    return large_logits.to(dtype) + alpha * (tuned_logits.to(dtype) - base_logits.to(dtype))
