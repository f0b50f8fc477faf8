"""A model's linear layers over a few positions, on a CPU, as ``W @ h^T``.

A verification forward runs every linear layer on ``g + 1`` rows per sequence. On this project's CPU (MKL on an AMD
EPYC), ``F.linear`` then takes a small-matrix path that costs 1.5 to 3.5 times its one-row cost, while the same
product laid out as ``W @ h^T`` (the rows contiguous) costs less than one row's; and one row (a matrix-vector
product, one thread only) is itself faster as two identical rows that way. While a strategy's forward runs (or
inside :func:`fast_cpu_linears`), every plain ``nn.Linear`` of the model computes 1 to :func:`max_rows` rows so;
longer blocks keep ``F.linear``. Only for a model whose linear weights outgrow a CPU's caches (:data:`MIN_BYTES`):
with its weights in cache, ``F.linear`` is as fast or faster. Measured in
``evals/results/cpu-verification-cost-2026-12-06.md``. The swap lasts as long as the forward, and forwards running at
once in several threads share it. ``DECODING_FEW_ROWS`` is ``auto`` (the default), ``linear`` (never swap) or
``always`` (whatever the model's size).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

ENV = "DECODING_FEW_ROWS"
SETTINGS = ("auto", "linear", "always")
# Linear weights above this are streamed from memory every forward (twice a 32 MiB last-level cache): the regime
# where W @ h^T pays; below it they stay in cache, where one row through W @ h^T costs up to 2.5x F.linear's.
MIN_BYTES = 64 * 2**20
OLD_ENV = "DECODING_OUTPUT_LAYER"  # 0.1.0's name, when only the output layer was swapped
# The swapped forward is made once per layer and kept on it (a reference cycle the collector frees with the layer):
# the same object every time, so that a compiled forward, whose guards check the layer's forward, stays valid.
_SWAP = "_pairdecode_few_rows_forward"


def max_rows(layer: torch.nn.Linear) -> int:
    """The most rows computed as ``W @ h^T``: where it beat ``F.linear`` on this project's CPU (MKL, 1 and 2
    threads), 8 for a vocabulary-sized layer, 6 for one that keeps or widens its width, 4 for one that narrows."""
    if layer.out_features >= 16 * layer.in_features:
        return 8
    return 6 if layer.out_features >= layer.in_features else 4


def few_rows_linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for ``x  # [..., in]``: as ``W @ h^T`` when ``x`` holds 1 to :func:`max_rows` rows."""
    rows = x.reshape(-1, x.shape[-1])  # [n, in]
    n = rows.shape[0]
    if not 1 <= n <= max_rows(layer):
        return F.linear(x, layer.weight, layer.bias)
    if n == 1:  # two identical rows: a matrix product, not MKL's one-thread matrix-vector product
        out = (layer.weight @ rows.expand(2, -1).contiguous().T)[:, :1].T  # [1, out]
    else:
        out = (layer.weight @ rows.contiguous().T).T  # [n, out]; rows laid out contiguously: MKL's slow path otherwise
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


class _Layout:
    """One model's swappable layers, their swapped forwards, and how many forwards are using the swap."""

    def __init__(self, layers: tuple[torch.nn.Linear, ...]):
        self.layers = layers
        self.forwards = tuple(_swapped_forward_of(layer) for layer in layers)
        self.bytes = sum(layer.weight.nbytes for layer in layers)
        self.users = 0


_lock = threading.Lock()
_layouts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Layout


def swappable_layers(model: torch.nn.Module, beside: torch.nn.Module | None = None) -> _Layout | None:
    """``model``'s plain ``nn.Linear`` layers on a CPU, for :func:`few_rows_layout`; None when there are none,
    when ``$DECODING_FEW_ROWS`` is ``linear``, or when it is ``auto`` and their weights, and those of the model it
    runs ``beside`` (a draft's target, whose every forward evicts the draft's weights from the caches), take less
    than :data:`MIN_BYTES` each. Made once per model, off the hot path."""
    setting = _setting()
    if setting == "linear":
        return None
    layout = _layout_of(model)
    streamed = max(layout.bytes, 0 if beside is None else _layout_of(beside).bytes) >= MIN_BYTES
    if not layout.layers or (setting == "auto" and not streamed):
        return None
    return layout


def _layout_of(model: torch.nn.Module) -> _Layout:
    with _lock:
        layout = _layouts.get(model)
        if layout is None:
            layout = _layouts[model] = _Layout(tuple(m for m in model.modules() if _swappable(m)))
    return layout


@contextmanager
def fast_cpu_linears(model: torch.nn.Module):
    """While the block runs, ``model``'s plain linear layers on a CPU compute a few rows as ``W @ h^T``: for the
    model's own ``generate`` (``with decoding.fast_cpu_linears(model): model.generate(...)``); the strategies do it
    for their forwards already."""
    with few_rows_layout(swappable_layers(model)):
        yield


@contextmanager
def few_rows_layout(layout: _Layout | None):
    """While the block runs, the layers of ``layout`` (from :func:`swappable_layers`; None: nothing to do) compute
    1 to :func:`max_rows` rows as ``W @ h^T``."""
    if layout is None:
        yield
        return
    with _lock:
        if layout.users == 0:
            for layer, forward in zip(layout.layers, layout.forwards):
                # an instance attribute: the class is untouched; a forward replaced since (a hook) is kept
                layer.__dict__.setdefault("forward", forward)
        layout.users += 1
    try:
        yield
    finally:
        with _lock:
            layout.users -= 1
            if layout.users == 0:
                for layer, forward in zip(layout.layers, layout.forwards):
                    if layer.__dict__.get("forward") is forward:  # ours (another layout may share the layer)
                        del layer.__dict__["forward"]


def _swappable(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` on a CPU, in float32 or float64 (MKL's paths, which were measured; other dtypes go to
    other kernels), whose forward nobody replaced (accelerate's offload hooks do: left alone)."""
    return (type(module) is torch.nn.Linear and module.weight.device.type == "cpu"
            and module.weight.dtype in (torch.float32, torch.float64) and "forward" not in vars(module))


def _setting() -> str:
    setting = os.environ.get(ENV)
    if setting is None and OLD_ENV in os.environ:
        warnings.warn(f"${OLD_ENV} is now ${ENV} (it covers every linear layer): set that instead",
                      FutureWarning, stacklevel=3)
        setting = os.environ[OLD_ENV]
    setting = setting or "auto"
    if setting not in SETTINGS:
        raise ValueError(f"${ENV} must be one of {', '.join(map(repr, SETTINGS))}, got {setting!r}")
    return setting


def _swapped_forward_of(layer: torch.nn.Linear):
    if _SWAP not in vars(layer):
        setattr(layer, _SWAP, functools.partial(_swapped_forward, layer))
    return getattr(layer, _SWAP)


def _swapped_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return few_rows_linear(layer, x)  # looked up when called (the swap object is made once per layer)
