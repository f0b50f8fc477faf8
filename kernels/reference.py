"""Pure-torch reference for the logit kernels: the specification, the CPU path and the fallback.

Vocabulary of one verification step (used with these meanings everywhere in the library):

- draft tokens: the ``g`` tokens the draft model proposes for a row, ``draft_ids  # [B, g]``.
- accepted tokens: the leading draft tokens the target keeps; ``num_accepted  # [B]`` in ``0..g``.
- recovered token: the token emitted at the first rejected position, drawn from the residual
  ``norm(max(0, p - q))`` (greedy: the target's argmax there).
- bonus token: the token emitted after all ``g`` draft tokens were accepted, drawn from ``p`` at position
  ``g + 1`` (greedy: its argmax).
- emitted tokens: the accepted tokens followed by exactly one recovered or bonus token, so a row emits
  ``num_accepted + 1`` tokens per step.

A draft id of -1 marks a position where a row proposed nothing (proposers may propose fewer than ``g``): it is
never accepted, and with an all-zero ``q`` row there, the token emitted at it is drawn from ``p`` itself (the
bonus law). The CUDA kernels treat any id outside ``[0, V)`` the same way.

Randomness is explicit: every random choice reads a uniform from a tensor the caller passes, so that a fused
kernel fed the same uniforms must make the same choices (compared with atol=0).

The functions serve the two samplers of :mod:`decoding.sampler`:

- :func:`verify_greedy`, :func:`verify_sampling`, :func:`sample`, :func:`probabilities` take scores or
  probabilities already processed by transformers' logits processors (``ProcessorSampler``).
- :func:`verify`, :func:`sample_logits`, :func:`contrastive_choose` are fused operations, each the specification
  of a CUDA kernel in ``kernels/*.cu`` (``FusedSampler``): they apply temperature / top-k / top-p themselves
  (:func:`processed_law`) and decide with integer arithmetic, so that a kernel summing in another order makes
  exactly the same choices. docs/KERNELS.md states the contract.
"""

from __future__ import annotations

import math

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


def check_samplable(scores: torch.Tensor) -> None:
    """Raise ``ValueError`` when a row of ``scores  # [..., V]`` has nothing to sample from: a NaN or +inf score,
    or every score -inf (where transformers' own sampling raises too, rather than emit garbage)."""
    bad = scores.isnan().any(dim=-1) | scores.isposinf().any(dim=-1) | scores.isneginf().all(dim=-1)
    if bool(bad.any()):
        raise ValueError(
            f"cannot sample: {int(bad.sum())} of {bad.numel()} rows have a NaN or +inf score, or no finite score "
            "at all. A logits processor removed every token, a strategy parameter is not finite, or the model "
            "produced NaN (float16 overflow?)."
        )


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax in float32 (or float64 if given), as transformers' own sampling does. ``# [..., V]``; raises
    ``ValueError`` for rows that cannot be sampled (:func:`check_samplable`)."""
    check_samplable(scores)
    return torch.softmax(scores.to(compute_dtype(scores)), dim=-1)


def _emit(draft_ids: torch.Tensor, num_accepted: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Output ids ``# [B, g+1]``: accepted draft tokens, then ``last`` at ``num_accepted``, then -1."""
    batch, g = draft_ids.shape
    positions = torch.arange(g + 1, device=draft_ids.device)  # [g+1]
    padded = torch.cat([draft_ids, draft_ids.new_full((batch, 1), -1)], dim=1)  # [B, g+1]
    out = torch.where(positions < num_accepted[:, None], padded, -1)
    return out.scatter(1, num_accepted[:, None], last[:, None])


def verify_greedy(target_scores: torch.Tensor, draft_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: accept the longest prefix of drafts equal to the target's argmax.

    Args:
        target_scores: ``# [B, g+1, V]`` processed target scores (any float dtype).
        draft_ids: ``# [B, g]`` int64 draft tokens.
    Returns:
        ``output_ids  # [B, g+1]`` int64, the emitted tokens padded with -1, and ``num_accepted  # [B]`` int64.
    """
    _check_verify_shapes(target_scores, draft_ids)
    best = greedy(target_scores)  # [B, g+1]
    matches = (best[:, :-1] == draft_ids).to(torch.int64)  # [B, g]
    num_accepted = matches.cumprod(dim=1).sum(dim=1)  # [B]
    last = best.gather(1, num_accepted[:, None]).squeeze(1)  # [B]
    return _emit(draft_ids, num_accepted, last), num_accepted


def verify_sampling(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_ids: torch.Tensor,
    accept_uniforms: torch.Tensor,
    sample_uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lossless speculative sampling (Leviathan et al. 2023, Chen et al. 2023).

    Draft token ``x`` at position ``i`` is accepted iff ``u_i * q_i(x) < p_i(x)``; the first rejected position
    emits a recovered token sampled from ``max(0, p - q)`` (unnormalised, by inverse CDF), and a row that
    accepts all ``g`` drafts emits a bonus token sampled from ``p`` at position ``g + 1``.

    Args:
        target_probs: ``# [B, g+1, V]`` float, the target's processed probabilities.
        draft_probs: ``# [B, g, V]`` float, the draft's processed probabilities the drafts were sampled from.
        draft_ids: ``# [B, g]`` int64.
        accept_uniforms: ``# [B, g]`` in [0, 1), one per acceptance test.
        sample_uniforms: ``# [B]`` in [0, 1), one for the recovered or bonus token.
    Returns:
        ``output_ids  # [B, g+1]`` int64 padded with -1, and ``num_accepted  # [B]`` int64.
    """
    _check_verify_shapes(target_probs, draft_ids)
    batch, g = draft_ids.shape
    expected = (batch, g, target_probs.shape[-1])
    if tuple(draft_probs.shape) != expected:
        raise ValueError(f"draft_probs must have shape {expected} (batch, g, vocab), got {tuple(draft_probs.shape)}")
    if tuple(accept_uniforms.shape) != (batch, g) or tuple(sample_uniforms.shape) != (batch,):
        raise ValueError(
            f"uniforms must have shapes {(batch, g)} and {(batch,)}, "
            f"got {tuple(accept_uniforms.shape)} and {tuple(sample_uniforms.shape)}"
        )
    x = draft_ids.clamp_min(0)[:, :, None]  # -1: no draft there, never accepted
    p_draft = target_probs[:, :-1].gather(2, x).squeeze(2)  # [B, g]
    q_draft = draft_probs.gather(2, x).squeeze(2)  # [B, g]
    accepted = ((accept_uniforms.to(q_draft.dtype) * q_draft < p_draft) & (draft_ids >= 0)).to(torch.int64)
    num_accepted = accepted.cumprod(dim=1).sum(dim=1)  # [B]
    rows = torch.arange(batch, device=draft_ids.device)
    p_last = target_probs[rows, num_accepted]  # [B, V]
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], dim=1)
    residual = (p_last - q_padded[rows, num_accepted].to(p_last.dtype)).clamp_min(0)  # [B, V]
    # A residual of zero mass only arises from rounding when p == q; p is then the exact law to draw from.
    empty = residual.sum(dim=-1, keepdim=True) <= 0
    residual = torch.where(empty, p_last, residual)
    last = sample(residual, sample_uniforms)  # [B]
    return _emit(draft_ids, num_accepted, last), num_accepted


def verify_block(
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor,
    draft_ids: torch.Tensor,
    accept_uniforms: torch.Tensor,
    sample_uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block verification (Sun et al., ICLR 2025): the draft block is judged jointly; lossless, and optimal in the
    expected number of accepted tokens among lossless rules for one block (never fewer than :func:`verify_sampling`
    in expectation). Arguments and results as :func:`verify_sampling`.

    With ``w_0 = 1`` and, for the ``k`` drafts of a row, ``w_i = min(1, w_{i-1} p_i(x_i) / q_i(x_i))``: position
    ``i < k`` passes with probability ``h_i = Z_i / (Z_i + 1 - w_i)`` (1 where that is 0 / 0), where ``Z_i`` is the
    mass of ``max(0, w_i p_{i+1} - q_{i+1})``; position ``k`` passes with probability ``w_k``. Each test reads its
    own uniform (``u_i < h_i``), and the row keeps its drafts up to the last position that passed (``tau``, 0 if
    none). It then emits one token from ``max(0, w_tau p_{tau+1} - q_{tau+1})`` normalised (``p_{k+1}`` after all
    ``k`` drafts; ``p_{tau+1}`` itself where that residual is all zero), by :func:`sample`.
    """
    _check_verify_shapes(target_probs, draft_ids)
    batch, g = draft_ids.shape
    expected = (batch, g, target_probs.shape[-1])
    if tuple(draft_probs.shape) != expected:
        raise ValueError(f"draft_probs must have shape {expected} (batch, g, vocab), got {tuple(draft_probs.shape)}")
    dtype = target_probs.dtype
    x = draft_ids.clamp_min(0)[:, :, None]
    p_x = target_probs[:, :-1].gather(2, x).squeeze(2)  # [B, g]
    q_x = draft_probs.gather(2, x).squeeze(2).to(dtype)
    ratio = torch.where(q_x > 0, p_x / torch.where(q_x > 0, q_x, 1), (p_x > 0).to(dtype))  # [B, g]
    lengths = (draft_ids >= 0).sum(dim=1)  # [B]: drafts are a prefix
    q_next = torch.cat([draft_probs[:, 1:], draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], dim=1).to(dtype)
    weight = torch.ones(batch, dtype=dtype, device=draft_ids.device)
    tau = torch.zeros(batch, dtype=torch.int64, device=draft_ids.device)
    kept_weight = torch.ones_like(weight)
    for i in range(1, g + 1):
        weight = torch.minimum(weight * ratio[:, i - 1], torch.ones_like(weight))
        mass = (weight[:, None] * target_probs[:, i] - q_next[:, i - 1]).clamp_min(0).sum(dim=-1)  # Z_i
        denominator = mass + 1 - weight
        h = torch.where(denominator > 0, mass / torch.where(denominator > 0, denominator, 1), 1.0)
        h = torch.where(lengths == i, weight, torch.where(lengths > i, h, 0.0))
        passed = accept_uniforms[:, i - 1].to(dtype) < h
        tau = torch.where(passed, i, tau)
        kept_weight = torch.where(passed, weight, kept_weight)
    rows = torch.arange(batch, device=draft_ids.device)
    p_last = target_probs[rows, tau]  # [B, V]
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], dim=1)
    residual = (kept_weight[:, None] * p_last - q_padded[rows, tau].to(dtype)).clamp_min(0)
    residual = torch.where(residual.sum(dim=-1, keepdim=True) <= 0, p_last, residual)
    return _emit(draft_ids, tau, sample(residual, sample_uniforms)), tau


def _check_verify_shapes(target: torch.Tensor, draft_ids: torch.Tensor) -> None:
    if target.dim() != 3 or draft_ids.dim() != 2:
        raise ValueError(
            f"expected target [batch, g+1, vocab] and draft_ids [batch, g], got {tuple(target.shape)} and "
            f"{tuple(draft_ids.shape)}"
        )
    if target.shape[0] != draft_ids.shape[0] or target.shape[1] != draft_ids.shape[1] + 1:
        raise ValueError(
            f"target must have shape (batch, g+1, vocab) = ({draft_ids.shape[0]}, {draft_ids.shape[1] + 1}, V) "
            f"for draft_ids of shape {tuple(draft_ids.shape)}, got {tuple(target.shape)}"
        )
    if draft_ids.dtype != torch.int64:
        raise ValueError(f"draft_ids must be int64, got {draft_ids.dtype}")


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


# ----------------------------------------------------------------------------------------------------------
# Fused operations: the specification of the CUDA kernels (kernels/verify.cu, sampling.cu, contrastive.cu).
#
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
    return _emit(draft_ids, num_accepted, last), num_accepted


def check_verify_args(target_logits, draft_ids, draft_probs, uniforms, temperature, top_k, top_p) -> None:
    """Shape, dtype and range checks of :func:`verify`, with expected and actual values in the message."""
    _check_verify_shapes(target_logits, draft_ids)
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
