"""Logit kernels behind the decoding strategies.

Each operation has one entry point here. Today every entry point runs the pure-torch reference in
:mod:`decoding.kernels.reference`; fused CuPy kernels for CUDA tensors plug in behind the same signatures.
"""

from .reference import (
    contrastive_scores,
    greedy,
    probabilities,
    proxy_tuning_scores,
    sample,
    verify_greedy,
    verify_sampling,
)

__all__ = [
    "contrastive_scores",
    "greedy",
    "probabilities",
    "proxy_tuning_scores",
    "sample",
    "verify_greedy",
    "verify_sampling",
]
