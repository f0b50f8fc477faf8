"""The output layer of a forward over a few positions, on a CPU, as ``W @ h^T``.

A verification forward runs the output layer (``V x H``; 49,152 x 576 for SmolLM2, a quarter of its weights) on
``g + 1`` rows. On a CPU, ``F.linear`` then takes a small-matrix path that costs 2 to 3.5 times its one-row cost
(15-23 ms against 7 ms for 2-3 rows of SmolLM2's, one thread), while the same product laid out as ``W @ h^T`` costs
about one row's (5-6 ms): measured in ``evals/results/cpu-verification-cost-2026-12-06.md``. While a strategy's
forward runs, the model's output layer (a plain ``nn.Linear``) computes 2 to 64 rows that way; one row and
longer blocks (a prompt) keep ``F.linear``. The swap lasts only as long as the forward, and forwards running at once
in several threads share it. ``DECODING_OUTPUT_LAYER=linear`` keeps ``F.linear`` everywhere (``auto``, the
default, swaps).
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

MAX_ROWS = 64  # beyond this, F.linear's large-matrix path is as fast
ENV = "DECODING_OUTPUT_LAYER"

_lock = threading.Lock()
_users: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # output layer -> forwards using the swap
# The swapped forward is made once per layer and kept on it (a reference cycle the collector frees with the layer):
# the same object every time, so that a compiled forward, whose guards check the layer's forward, stays valid.
_SWAP = "_pairdecode_few_rows_forward"


def swappable_output_layer(model) -> torch.nn.Linear | None:
    """``model``'s output layer when :func:`few_rows_layout` may swap it (a plain ``nn.Linear`` on a CPU, and
    ``$DECODING_OUTPUT_LAYER`` not ``linear``), else None; decided once per model and call, off the hot path."""
    setting = os.environ.get(ENV, "auto")
    if setting not in ("auto", "linear"):
        raise ValueError(f"${ENV} must be 'auto' or 'linear', got {setting!r}")
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if setting == "linear" or type(layer) is not torch.nn.Linear or layer.weight.device.type != "cpu":
        return None
    return layer


@contextmanager
def few_rows_layout(layer: torch.nn.Linear | None):
    """While the block runs, ``layer`` (from :func:`swappable_output_layer`; None: nothing to do) computes 2 to
    :data:`MAX_ROWS` rows as ``W @ h^T``."""
    if layer is None:
        yield
        return
    with _lock:
        if _users.get(layer, 0) == 0:
            if _SWAP not in vars(layer):
                setattr(layer, _SWAP, functools.partial(_swapped_forward, layer))
            layer.forward = getattr(layer, _SWAP)  # an instance attribute: the class is untouched
        _users[layer] = _users.get(layer, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _users[layer] -= 1
            if _users[layer] == 0:
                del layer.forward, _users[layer]


def _swapped_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return few_rows_linear(layer, x)  # looked up when called (the swap object is made once per layer)


def few_rows_linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x  # [..., H]``: as ``W @ h^T`` when ``x`` holds 2 to :data:`MAX_ROWS` rows."""
    rows = x.reshape(-1, x.shape[-1])
    if not 2 <= rows.shape[0] <= MAX_ROWS:
        return F.linear(x, layer.weight, layer.bias)
    out = (layer.weight @ rows.T).T
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])
