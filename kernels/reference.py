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

Randomness is explicit: every random choice reads a uniform from a tensor the caller passes, so that a fused
kernel fed the same uniforms must make the same choices (compared with atol=0).
"""

from __future__ import annotations

import math

import torch


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


def probabilities(scores: torch.Tensor) -> torch.Tensor:
    """Softmax in float32 (or float64 if given), as transformers' own sampling does. ``# [..., V]``."""
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    return torch.softmax(scores.to(dtype), dim=-1)


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
    p_draft = target_probs[:, :-1].gather(2, draft_ids[:, :, None]).squeeze(2)  # [B, g]
    q_draft = draft_probs.gather(2, draft_ids[:, :, None]).squeeze(2)  # [B, g]
    accepted = (accept_uniforms.to(q_draft.dtype) * q_draft < p_draft).to(torch.int64)  # [B, g]
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
    dtype = torch.float64 if expert_logits.dtype == torch.float64 else torch.float32
    expert = expert_logits.to(dtype)
    amateur = amateur_logits.to(dtype) / amateur_temperature
    if form == "logit":
        if beta == 0:
            return expert.clone()
        scores = (1 + beta) * expert - beta * amateur
    elif form == "logprob":
        scores = torch.log_softmax(expert, dim=-1) - torch.log_softmax(amateur, dim=-1)
    else:
        raise ValueError(f"form must be 'logit' or 'logprob', got {form!r}")
    plausible = expert >= expert.max(dim=-1, keepdim=True).values + math.log(alpha)
    return scores.masked_fill(~plausible, float("-inf"))


def proxy_tuning_scores(
    large_logits: torch.Tensor, tuned_logits: torch.Tensor, base_logits: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """Proxy-tuning / DExperts: ``s_large + alpha * (s_tuned - s_base)``, all ``# [N, V]`` -> ``# [N, V]``."""
    dtype = torch.float64 if large_logits.dtype == torch.float64 else torch.float32
    return large_logits.to(dtype) + alpha * (tuned_logits.to(dtype) - base_logits.to(dtype))
