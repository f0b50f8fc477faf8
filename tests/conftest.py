"""Shared pytest configuration: hypothesis profiles.

Profiles (registered here, selected with hypothesis' own pytest option):

- ``ci`` (default): few examples, no deadline, derandomized so CI runs are reproducible and never flaky,
  ``too_slow`` / ``data_too_large`` health checks suppressed (each example runs tiny models).
- ``fast``: fewer examples still, for the CI run on the declared floor versions.
- ``thorough``: many examples, randomized, for a long local run:
  ``pytest --hypothesis-profile=thorough``.

The ``HYPOTHESIS_PROFILE`` environment variable selects the default profile too
(``HYPOTHESIS_PROFILE=thorough pytest``); ``--hypothesis-profile`` on the command line wins over both.

Helpers for tests live in ``tests/models.py`` (tiny model factories) and ``tests/strategies.py`` (hypothesis
strategies); import them as ``from models import tiny_pair``. ``tests/`` has no ``__init__.py`` (a root folder that
is a package would shadow any installed ``tests`` module), so pytest's default import mode puts ``tests/`` itself
on ``sys.path``: helper and test module names must be unique there.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "fast",
    max_examples=4,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_SUPPRESSED,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny models: threads only add overhead, and a fixed thread count keeps float reductions reproducible.
torch.set_num_threads(1)


@pytest.fixture
def poisoned(monkeypatch):
    """Replace the global ``torch.empty`` for the test's duration by one whose tensors start full of garbage (NaN
    for floating dtypes, -7 otherwise), so a CuPy-backend kernel that leaves a position of its outputs or scratch
    unwritten fails its test.

    ``cupy_backend.torch`` is the ``torch`` module itself, so the patch is not confined to the backend: every call
    that looks up ``torch.empty`` during the test (the reference, the test, other library code) gets the same
    filling.
    """
    from decoding.kernels import cupy_backend

    real_empty = torch.empty

    def empty(*size, **kwargs):
        t = real_empty(*size, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-7)

    monkeypatch.setattr(cupy_backend.torch, "empty", empty)
