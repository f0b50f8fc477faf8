"""Logit kernels behind the decoding strategies.

Each operation has one entry point here. The fused ones (:func:`verify`, :func:`sample_logits`,
:func:`contrastive_scores`, :func:`contrastive_choose`) run the CuPy kernels of ``kernels/*.cu`` for CUDA
tensors when CuPy is installed, and the pure-torch reference :mod:`decoding.kernels.reference` (their
specification) otherwise; :func:`use_backend` or ``$DECODING_KERNELS`` forces either (see
:mod:`decoding.kernels.dispatch`). The others (``verify_greedy``, ``verify_sampling``, ``sample``, ...) take
already-processed scores or probabilities and are the reference's. docs/KERNELS.md describes the kernels.
"""

from __future__ import annotations

import torch

from . import dispatch, reference
from .dispatch import cupy_status, fused_route, use_backend
from .reference import (
    greedy,
    probabilities,
    proxy_tuning_scores,
    sample,
    verify_greedy,
    verify_sampling,
)


def _backend(tensor: torch.Tensor):
    if dispatch.backend_for(tensor) == "cupy":
        from . import cupy_backend

        return cupy_backend
    return reference


def verify(
    target_logits: torch.Tensor,  # [B, g+1, V]
    draft_ids: torch.Tensor,  # [B, g]
    draft_probs: torch.Tensor | None = None,  # [B, g, V] or None for greedy
    uniforms: torch.Tensor | None = None,  # [B, g+1]
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused speculative verification from raw target logits; see :func:`reference.verify`.
    Returns ``output_ids  # [B, g+1]`` int64 padded with -1 and ``num_accepted  # [B]`` int64."""
    if draft_probs is not None:
        reference.check_samplable(target_logits)
    return _backend(target_logits).verify(target_logits, draft_ids, draft_probs, uniforms, temperature=temperature,
                                          top_k=top_k, top_p=top_p)


def sample_logits(
    logits: torch.Tensor,  # [N, V]
    uniforms: torch.Tensor,  # [N]
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    return_probs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One sample per row from processed raw logits: ``ids  # [N]`` and the law ``# [N, V]`` float32 (or
    None); see :func:`reference.sample_logits`."""
    reference.check_samplable(logits)
    return _backend(logits).sample_logits(logits, uniforms, temperature=temperature, top_k=top_k, top_p=top_p,
                                          return_probs=return_probs)


def contrastive_scores(
    expert_logits: torch.Tensor,  # [N, V]
    amateur_logits: torch.Tensor,  # [N, V]
    *,
    alpha: float = 0.1,
    beta: float = 0.5,
    form: str = "logit",
    amateur_temperature: float = 1.0,
) -> torch.Tensor:
    """Contrastive decoding scores ``# [N, V]`` float32, ``-inf`` outside the plausible set; see
    :func:`reference.contrastive_scores`."""
    return _backend(expert_logits).contrastive_scores(expert_logits, amateur_logits, alpha=alpha, beta=beta,
                                                      form=form, amateur_temperature=amateur_temperature)


def contrastive_choose(
    expert_logits: torch.Tensor,  # [N, V]
    amateur_logits: torch.Tensor,  # [N, V]
    uniforms: torch.Tensor | None = None,  # [N] or None for greedy
    *,
    alpha: float = 0.1,
    beta: float = 0.5,
    form: str = "logit",
    amateur_temperature: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Contrastive decoding's next id per row ``# [N]`` int64, greedy or sampled with temperature / top-k /
    top-p; see :func:`reference.contrastive_choose`."""
    if uniforms is not None:
        reference.check_samplable(expert_logits)
        reference.check_samplable(amateur_logits)
    return _backend(expert_logits).contrastive_choose(
        expert_logits, amateur_logits, uniforms, alpha=alpha, beta=beta, form=form,
        amateur_temperature=amateur_temperature, temperature=temperature, top_k=top_k, top_p=top_p,
    )


__all__ = [
    "contrastive_choose",
    "contrastive_scores",
    "cupy_status",
    "fused_route",
    "greedy",
    "probabilities",
    "proxy_tuning_scores",
    "sample",
    "sample_logits",
    "use_backend",
    "verify",
    "verify_greedy",
    "verify_sampling",
]
