"""Fused operations on raw logits: the specification of the CUDA kernels (``kernels/*.cu``), exact to atol=0.

Each applies temperature / top-k / top-p itself (:func:`processed_law`) and decides with integer arithmetic, so
that a kernel summing in another order makes exactly the same choices. docs/KERNELS.md states the contract.
"""

from __future__ import annotations

import math

import torch

from .contrastive import _contrastive
from .sampling import compute_dtype
from .verification import check_verify_shapes, emitted_tokens, verify_greedy

# The processed law of a row of logits ``l  # [V]`` under (temperature T, top_k, top_p) is defined in integers:
#   s = float32(l) * float32(1 / T)                     (float32 multiply; float64 logits stay float64)
#   top-k (0 < top_k < V): keep y iff #{y' : s_y' > s_y} < top_k        (ties with the k-th value are kept)
#   w_y = trunc(float32(exp(s_y - max s)) * 2^44) for kept y, else 0    (int64, at most 2^44)
#   top-p (top_p < 1): keep y iff A_y == 0 or float64(A_y) < top_p * float64(sum w), where
#                      A_y = sum of w over ids with s > s_y                 (ties with the boundary are kept)
#   Z = sum of the kept w; p_y = w_y / Z.
# transformers' warpers (TemperatureLogitsWarper / TopKLogitsWarper / TopPLogitsWarper, in generate's order)
# keep the same ids except on exact ties at the boundary (kept here) and where float rounding of their own
# float32 softmax and cumsum puts an id on the other side of top_p (tests/test_kernels_reference.py).

FIXED_POINT_BITS = 44


def check_processing(temperature: float, top_k: int, top_p: float) -> None:
    """Validate (temperature, top_k, top_p): temperature > 0, top_k >= 0 (0 = off), 0 <= top_p <= 1 (1 = off)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature!r}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
    if not (isinstance(top_p, (int, float)) and 0 <= top_p <= 1):
        raise ValueError(f"top_p must be a float in [0, 1] (1 disables it), got {top_p!r}")


def scaled_scores(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``logits  # [..., V]`` as float32 (float64 stays float64) times ``1 / temperature``."""
    return logits.to(compute_dtype(logits)) * (1.0 / temperature)


def processed_law(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer law weights of scaled scores (the definition above).

    Args:
        scores: ``# [N, V]`` float32 (or float64) scaled scores, each row with a finite maximum.
    Returns:
        ``weights  # [N, V]`` int64 (0 outside the kept set) and ``total  # [N]`` int64 (Z > 0).
    """
    vocab = scores.shape[-1]
    top = scores.max(dim=-1, keepdim=True).values  # [N, 1]
    weights = (torch.exp(scores - top) * float(2**FIXED_POINT_BITS)).to(torch.int64)  # [N, V]
    if 0 < top_k < vocab:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # [N, 1], the k-th largest counting repeats
        weights = weights.masked_fill(scores < kth, 0)
    else:
        kth = None
    if top_p < 1:
        values, order = scores.sort(dim=-1, descending=True)  # [N, V]
        sorted_w = weights.gather(1, order)
        before = sorted_w.cumsum(dim=-1) - sorted_w  # mass strictly earlier in the sort
        first = torch.searchsorted(-values.contiguous(), -values.contiguous(), right=False)  # start of the tie group
        above = torch.empty_like(before).scatter_(1, order, before.gather(1, first))  # [N, V]: mass strictly above
        total = weights.sum(dim=-1, keepdim=True)
        keep = (above == 0) | (above.to(torch.float64) < top_p * total.to(torch.float64))
        if kth is not None:
            keep &= scores >= kth
        weights = weights.masked_fill(~keep, 0)
    return weights, weights.sum(dim=-1)


def _sample_index(weights: torch.Tensor, total: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Exact integer inverse CDF: the ``y`` with ``C[y-1] <= t < C[y]``, ``t = trunc(u * total)`` clamped to
    ``[0, total - 1]`` (float64 product). ``weights  # [N, V]`` int64, ``total  # [N]``, ``uniforms  # [N]``."""
    t = (uniforms.to(torch.float64) * total.to(torch.float64)).to(torch.int64).clamp_min(0)
    t = torch.minimum(t, total - 1)
    return torch.searchsorted(weights.cumsum(dim=-1), t[:, None], right=True).squeeze(-1)


def _residual_weights(weights: torch.Tensor, q: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``trunc(max(0, w - q * Z))`` in float64: the residual ``max(0, p - q)`` scaled by Z, never normalised."""
    r = weights.to(torch.float64) - q.to(torch.float64) * total.to(torch.float64)[:, None]
    return r.clamp_min(0).to(torch.int64)


def verify(
    target_logits: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused verification from raw target logits (greedy when ``draft_probs`` is None).

    Args:
        target_logits: ``# [B, g+1, V]`` raw target logits (float32, float16, bfloat16; float64 on this path).
        draft_ids: ``# [B, g]`` int64.
        draft_probs: ``# [B, g, V]`` the draft's processed law ``q`` the drafts were sampled from (read as
            float32), or None for greedy verification (argmax of the raw logits; processing is ignored).
        uniforms: ``# [B, g+1]`` in [0, 1): ``uniforms[:, i]`` for the acceptance test of draft ``i``,
            ``uniforms[:, g]`` for the recovered or bonus token (sampling only).
        temperature, top_k, top_p: the target's processing, see :func:`processed_law`.
    Returns:
        ``output_ids  # [B, g+1]`` int64 padded with -1, and ``num_accepted  # [B]`` int64.

    Draft ``x`` at position ``i`` is accepted iff ``(u_i * q_i(x)) * Z_i < w_i(x)`` (float64), i.e.
    ``u_i q_i(x) < p_i(x)``; the first rejection ``n`` emits a sample of ``trunc(max(0, w_n - q_n Z_n))`` (p
    itself if that is all zero), a row accepting all ``g`` emits a sample of ``w_g``; both by
    :func:`_sample_index` with ``uniforms[:, g]``.
    """
    check_verify_args(target_logits, draft_ids, draft_probs, uniforms, temperature, top_k, top_p)
    batch, g = draft_ids.shape
    vocab = target_logits.shape[-1]
    if draft_probs is None:
        return verify_greedy(target_logits, draft_ids)
    w, z = processed_law(scaled_scores(target_logits.reshape(-1, vocab), temperature), top_k, top_p)
    w, z = w.reshape(batch, g + 1, vocab), z.reshape(batch, g + 1)
    q = draft_probs.to(torch.float32)
    u = uniforms.to(torch.float64)
    inside = (draft_ids >= 0) & (draft_ids < vocab)
    x = draft_ids.clamp(0, vocab - 1)[:, :, None]
    w_x = w[:, :g].gather(2, x).squeeze(2).to(torch.float64)  # [B, g]
    q_x = q.gather(2, x).squeeze(2).to(torch.float64)
    accepted = ((u[:, :g] * q_x) * z[:, :g].to(torch.float64) < w_x) & inside  # [B, g]
    num_accepted = accepted.to(torch.int64).cumprod(dim=1).sum(dim=1)  # [B]
    rows = torch.arange(batch, device=draft_ids.device)
    w_n, z_n = w[rows, num_accepted], z[rows, num_accepted]  # [B, V], [B]
    q_n = torch.cat([q, q.new_zeros(batch, 1, vocab)], dim=1)[rows, num_accepted]  # zeros at the bonus position
    residual = _residual_weights(w_n, q_n, z_n)
    mass = residual.sum(dim=-1)
    empty = mass == 0  # p == q up to rounding: p itself is the law to draw from
    residual = torch.where(empty[:, None], w_n, residual)
    last = _sample_index(residual, torch.where(empty, z_n, mass), u[:, g])
    return emitted_tokens(draft_ids, num_accepted, last), num_accepted


def check_verify_args(target_logits, draft_ids, draft_probs, uniforms, temperature, top_k, top_p) -> None:
    """Shape, dtype and range checks of :func:`verify`, with expected and actual values in the message."""
    check_verify_shapes(target_logits, draft_ids)
    check_processing(temperature, top_k, top_p)
    batch, g = draft_ids.shape
    if draft_probs is None:
        return
    expected = (batch, g, target_logits.shape[-1])
    if tuple(draft_probs.shape) != expected:
        raise ValueError(f"draft_probs must have shape {expected} (batch, g, vocab), got {tuple(draft_probs.shape)}")
    if uniforms is None:
        raise ValueError(f"sampling verification needs uniforms of shape {(batch, g + 1)}, got None")
    if tuple(uniforms.shape) != (batch, g + 1) or not uniforms.is_floating_point():
        raise ValueError(f"uniforms must be a float tensor of shape {(batch, g + 1)}, got {uniforms.dtype} "
                         f"{tuple(uniforms.shape)}")


def sample_logits(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_probs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample one id per row from raw logits processed by (temperature, top_k, top_p).

    Args:
        logits: ``# [N, V]`` raw logits. uniforms: ``# [N]`` in [0, 1).
    Returns:
        ``ids  # [N]`` int64 (:func:`_sample_index` over :func:`processed_law`) and, if ``return_probs``, the
        law ``probs  # [N, V]`` float32 ``= float32(float64(w) / float64(Z))`` (the draft's ``q``), else None.
    """
    check_rows(logits, uniforms)
    check_processing(temperature, top_k, top_p)
    w, z = processed_law(scaled_scores(logits, temperature), top_k, top_p)
    ids = _sample_index(w, z, uniforms)
    probs = (w.to(torch.float64) / z.to(torch.float64)[:, None]).to(torch.float32) if return_probs else None
    return ids, probs


def contrastive_choose(
    expert_logits: torch.Tensor,
    amateur_logits: torch.Tensor,
    uniforms: torch.Tensor | None = None,
    *,
    alpha: float = 0.1,
    beta: float = 0.5,
    form: str = "logit",
    amateur_temperature: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Contrastive decoding's choice per row, fused: greedy argmax (``uniforms`` None) or a sample.

    The choice scores are :func:`contrastive_scores`' with, in the log-probability form, the per-row constant
    ``lse_amateur - lse_expert`` dropped (argmax and the processed law do not depend on it); sampling draws
    from :func:`processed_law` of those scores under (temperature, top_k, top_p).

    Args:
        expert_logits, amateur_logits: ``# [N, V]`` raw logits over the same ids. uniforms: ``# [N]`` or None.
    Returns:
        ``ids  # [N]`` int64.
    """
    check_rows(expert_logits, uniforms, amateur_logits)
    check_processing(temperature, top_k, top_p)
    scores = _contrastive(expert_logits, amateur_logits, alpha, beta, form, amateur_temperature, shift_free=True)
    if uniforms is None:
        return scores.argmax(dim=-1)
    w, z = processed_law(scaled_scores(scores, temperature), top_k, top_p)
    return _sample_index(w, z, uniforms)


def check_rows(logits: torch.Tensor, uniforms: torch.Tensor | None, other: torch.Tensor | None = None) -> None:
    """``logits  # [N, V]`` (and ``other`` of the same shape), ``uniforms  # [N]`` float or None."""
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [rows, vocab], got {tuple(logits.shape)}")
    if other is not None and other.shape != logits.shape:
        raise ValueError(f"both logits must have shape {tuple(logits.shape)}, got {tuple(other.shape)}")
    if uniforms is not None and (tuple(uniforms.shape) != (logits.shape[0],) or not uniforms.is_floating_point()):
        raise ValueError(f"uniforms must be a float tensor of shape {(logits.shape[0],)}, got {uniforms.dtype} "
                         f"{tuple(uniforms.shape)}")
