"""The divergences DistillSpec compares, between a teacher law known by its top-k and a full draft law.

The teacher's law is cached as its top-k log-probabilities (:mod:`decoding.model_pairs.distill.teacher`); the
rest of its mass is one more bucket, "every other token". Both laws are compared on these ``k + 1`` buckets:
``P = (p_1, ..., p_k, 1 - sum p)`` and ``Q = (q_1, ..., q_k, 1 - sum q)`` where ``q_i`` is the draft's probability
of the teacher's ``i``-th token. Merging outcomes never increases a divergence (data processing), so each loss is
a lower bound of the divergence between the full laws, exact when the teacher's tail is empty; with k = 32 the
tail of SmolLM2's next-token laws is small on chat text.

- ``fkl``: forward KL, ``KL(P || Q)`` (mass-covering: the usual distillation loss);
- ``rkl``: reverse KL, ``KL(Q || P)`` (mode-seeking: the draft puts its mass on the teacher's likely tokens);
- ``tv``: total variation, ``0.5 * sum |P - Q|`` (what speculative sampling's acceptance is 1 minus);
- ``js``: Jensen-Shannon, ``0.5 KL(P || M) + 0.5 KL(Q || M)`` with ``M = (P + Q) / 2``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["DIVERGENCES", "bucket_laws", "divergence"]

DIVERGENCES = ("fkl", "rkl", "tv", "js")
_TINY = 1e-6  # representable below 1 in float32


def bucket_laws(draft_logp: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor):
    """``(log P, log Q)``, each ``[n, k + 1]``: the teacher's and the draft's laws on the teacher's top-k tokens
    plus the tail bucket. ``draft_logp``: ``[n, V]`` log-softmax of the draft; ``topk_*``: ``[n, k]``."""
    log_p = topk_logp.float()
    log_q = draft_logp.gather(-1, topk_ids.long())
    tail_p = torch.log1p(-log_p.exp().sum(-1).clamp(max=1 - _TINY))
    tail_q = torch.log1p(-log_q.exp().sum(-1).clamp(max=1 - _TINY))
    return torch.cat([log_p, tail_p[:, None]], -1), torch.cat([log_q, tail_q[:, None]], -1)


def divergence(name: str, draft_logp: torch.Tensor, topk_ids: torch.Tensor, topk_logp: torch.Tensor) -> torch.Tensor:
    """Mean over positions of divergence ``name`` (one of :data:`DIVERGENCES`) between teacher and draft."""
    log_p, log_q = bucket_laws(draft_logp, topk_ids, topk_logp)
    p, q = log_p.exp(), log_q.exp()
    if name == "fkl":
        per = (p * (log_p - log_q)).sum(-1)
    elif name == "rkl":
        per = (q * (log_q - log_p)).sum(-1)
    elif name == "tv":
        per = 0.5 * (p - q).abs().sum(-1)
    elif name == "js":
        log_m = torch.logaddexp(log_p, log_q) - math.log(2)
        per = 0.5 * (p * (log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)
    else:
        raise ValueError(f"unknown divergence {name!r}; choose from {', '.join(DIVERGENCES)}")
    return per.mean()
