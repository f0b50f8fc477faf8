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

from .contrastive import contrastive_scores, proxy_tuning_scores
from .fused import (
    FIXED_POINT_BITS,
    check_processing,
    check_rows,
    check_verify_args,
    contrastive_choose,
    processed_law,
    sample_logits,
    scaled_scores,
    verify,
)
from .sampling import check_samplable, compute_dtype, greedy, probabilities, sample, unsamplable, unsamplable_error
from .verification import verify_block, verify_greedy, verify_sampling

__all__ = [
    "FIXED_POINT_BITS",
    "check_processing",
    "check_rows",
    "check_samplable",
    "unsamplable",
    "unsamplable_error",
    "check_verify_args",
    "compute_dtype",
    "contrastive_choose",
    "contrastive_scores",
    "greedy",
    "probabilities",
    "processed_law",
    "proxy_tuning_scores",
    "sample",
    "sample_logits",
    "scaled_scores",
    "verify",
    "verify_block",
    "verify_greedy",
    "verify_sampling",
]
