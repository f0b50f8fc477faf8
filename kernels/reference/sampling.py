"""Greedy choice, sampling with explicit uniforms, and the softmax of processed scores: the elementary
operations of the reference (:mod:`decoding.kernels.reference`)."""

from __future__ import annotations

import torch


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype scores are computed in: float64 for float64 input (the tests' exact runs), else float32."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def greedy(scores: torch.Tensor) -> torch.Tensor:
    """Argmax over the last dimension. ``scores  # [..., V]`` -> ``# [...]`` int64."""
    return scores.argmax(dim=-1)


def sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample from (possibly unnormalised) non-negative weights.

    ``probs  # [N, V]`` float, every row with positive mass; ``uniforms  # [N]`` in [0, 1).
    Token ``y`` is chosen for ``u`` in ``[cdf[y-1], cdf[y]) / cdf[-1]``, so a token of zero weight is never
    chosen and the law of the result is ``probs / probs.sum(-1)`` exactly when ``u ~ U(0, 1)``.
    """
    cdf = probs.cumsum(dim=-1)  # [N, V]
    threshold = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]  # [N, 1]
    ids = torch.searchsorted(cdf, threshold, right=True).squeeze(-1)  # [N]
    # Rounding can put the threshold at cdf[-1]; the last token of positive weight is the right answer then.
    last_positive = probs.shape[-1] - 1 - (probs > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(ids, last_positive)


def unsamplable(scores: torch.Tensor) -> torch.Tensor:
    """The rows ``# [...]`` bool of ``scores  # [..., V]`` that have nothing to sample from: a NaN or +inf score,
    or every score -inf (where transformers' own sampling raises too, rather than emit garbage)."""
    return scores.isnan().any(dim=-1) | scores.isposinf().any(dim=-1) | scores.isneginf().all(dim=-1)


def unsamplable_error(bad: int, rows: int) -> ValueError:
    """The error for ``bad`` of ``rows`` rows that cannot be sampled (:func:`unsamplable`)."""
    return ValueError(
        f"cannot sample: {bad} of {rows} rows have a NaN or +inf score, or no finite score at all. A logits "
        "processor removed every token, a strategy parameter is not finite, or the model produced NaN (float16 "
        "overflow?).")


def check_samplable(scores: torch.Tensor) -> None:
    """Raise ``ValueError`` when a row of ``scores  # [..., V]`` cannot be sampled (:func:`unsamplable`)."""
    bad = unsamplable(scores)
    if bool(bad.any()):
        raise unsamplable_error(int(bad.sum()), bad.numel())


def probabilities(scores: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Softmax in float32 (or float64 if given), as transformers' own sampling does. ``# [..., V]``; raises
    ``ValueError`` for rows that cannot be sampled (:func:`check_samplable`) unless ``check`` is False (the caller
    checks them itself)."""
    if check:
        check_samplable(scores)
    return torch.softmax(scores.to(compute_dtype(scores)), dim=-1)
