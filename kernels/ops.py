"""Logit kernels behind the decoding strategies.

The fused operations (:func:`verify`, :func:`sample_logits`, :func:`contrastive_scores`,
:func:`contrastive_choose`) run the CuPy kernels of ``kernels/*.cu`` for CUDA tensors when CuPy is installed, and
their specification, the pure-torch :mod:`decoding.kernels.reference`, otherwise; :func:`use_backend` or
``$DECODING_KERNELS`` forces either (:mod:`decoding.kernels.dispatch`). Each takes exactly the reference
function's arguments. The others (``verify_greedy``, ``verify_sampling``, ``sample``, ...) take already
processed scores or probabilities and are the reference's. docs/KERNELS.md describes the kernels.
"""

from __future__ import annotations

import functools

from . import dispatch, reference
from .dispatch import cupy_status, fused_route, use_backend
from .reference import greedy, probabilities, proxy_tuning_scores, sample, verify_block, verify_greedy, verify_sampling


def _backend(tensor):
    if dispatch.backend_for(tensor) == "cupy":
        from . import cupy_backend

        return cupy_backend
    return reference


def _dispatched(name: str):
    """The entry point ``name``: the backend chosen for its first argument runs the reference's signature."""
    specification = getattr(reference, name)

    @functools.wraps(specification)
    def entry(first, *args, **kwargs):
        return getattr(_backend(first), name)(first, *args, **kwargs)

    return entry


verify = _dispatched("verify")
sample_logits = _dispatched("sample_logits")
contrastive_scores = _dispatched("contrastive_scores")
contrastive_choose = _dispatched("contrastive_choose")

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
    "verify_block",
    "verify_greedy",
    "verify_sampling",
]
