"""Token-wise and block verification on processed scores and probabilities (what ``ProcessorSampler``
runs); the vocabulary of a verification step is defined in :mod:`decoding.kernels.reference`."""

from __future__ import annotations

import torch

from .sampling import greedy, sample


def emitted_tokens(draft_ids: torch.Tensor, num_accepted: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
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
    check_verify_shapes(target_scores, draft_ids)
    best = greedy(target_scores)  # [B, g+1]
    matches = (best[:, :-1] == draft_ids).to(torch.int64)  # [B, g]
    num_accepted = matches.cumprod(dim=1).sum(dim=1)  # [B]
    # The accepted drafts equal the argmax where they stand, and the recovered or bonus token is the argmax at
    # num_accepted: the emitted tokens are the argmax up to there.
    positions = torch.arange(best.shape[1], device=best.device)  # [g+1]
    return torch.where(positions <= num_accepted[:, None], best, -1), num_accepted


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
    check_sampling_args(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms)
    x = draft_ids.clamp_min(0)[:, :, None]  # -1: no draft there, never accepted
    p_draft = target_probs[:, :-1].gather(2, x).squeeze(2)  # [B, g]
    q_draft = draft_probs.gather(2, x).squeeze(2)  # [B, g]
    accepted = ((accept_uniforms.to(q_draft.dtype) * q_draft < p_draft) & (draft_ids >= 0)).to(torch.int64)
    num_accepted = accepted.cumprod(dim=1).sum(dim=1)  # [B]
    weight = torch.ones(num_accepted.shape, dtype=target_probs.dtype, device=draft_ids.device)
    return _emit_from_residual(target_probs, draft_probs, draft_ids, num_accepted, weight, sample_uniforms)


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
    check_sampling_args(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms)
    batch, g = draft_ids.shape
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
    return _emit_from_residual(target_probs, draft_probs, draft_ids, tau, kept_weight, sample_uniforms)


def _emit_from_residual(target_probs, draft_probs, draft_ids, num_accepted, weight, sample_uniforms):
    """The emitted tokens and ``num_accepted  # [B]``, the last token drawn from ``max(0, w p - q)`` normalised at
    position ``num_accepted`` (``q`` = 0 after the drafts, ``w = weight  # [B]``)."""
    batch = draft_ids.shape[0]
    rows = torch.arange(batch, device=draft_ids.device)
    p_last = target_probs[rows, num_accepted]  # [B, V]
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], dim=1)
    residual = (weight[:, None] * p_last - q_padded[rows, num_accepted].to(p_last.dtype)).clamp_min(0)  # [B, V]
    # A residual of zero mass only arises from rounding when p == q; p is then the exact law to draw from.
    residual = torch.where(residual.sum(dim=-1, keepdim=True) <= 0, p_last, residual)
    return emitted_tokens(draft_ids, num_accepted, sample(residual, sample_uniforms)), num_accepted


def check_sampling_args(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms) -> None:
    """The shapes :func:`verify_sampling` and :func:`verify_block` take."""
    check_verify_shapes(target_probs, draft_ids)
    batch, g = draft_ids.shape
    expected = (batch, g, target_probs.shape[-1])
    if tuple(draft_probs.shape) != expected:
        raise ValueError(f"draft_probs must have shape {expected} (batch, g, vocab), got {tuple(draft_probs.shape)}")
    if tuple(accept_uniforms.shape) != (batch, g) or tuple(sample_uniforms.shape) != (batch,):
        raise ValueError(
            f"uniforms must have shapes {(batch, g)} and {(batch,)}, "
            f"got {tuple(accept_uniforms.shape)} and {tuple(sample_uniforms.shape)}"
        )


def check_verify_shapes(target: torch.Tensor, draft_ids: torch.Tensor) -> None:
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
