"""Counting what code asks of the device, op by op: every dispatched operation, and the host reads among them.

A host read is an operation whose result the CPU must wait for: ``aten._local_scalar_dense`` (``.item()``,
``int(t)``, ``bool(t)``), ``aten.nonzero``, ``aten.masked_select`` and indexing with a boolean mask (a shape that
depends on data), and ``Tensor.tolist()`` / ``Tensor.numpy()`` (which dispatch no operation on a CPU: the counter
wraps them while it is active). On a GPU each drains the launch queue; on a CPU they cost little, so their count is
the measure to drive down here.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
HOST_READS = {_aten._local_scalar_dense.default: "item", _aten.nonzero.default: "nonzero",
              _aten.masked_select.default: "masked_select"}


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as counter: ...``: ``counter.ops`` operations dispatched, ``counter.reads`` host reads
    by kind (``item``, ``nonzero``, ``masked_select``, ``bool_index``)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.reads: Counter = Counter()
        self._unwrapped: dict = {}

    def __enter__(self):
        for name in ("tolist", "numpy"):
            self._unwrapped[name] = original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._unwrapped.items():
            setattr(torch.Tensor, name, original)
        self._unwrapped = {}
        return super().__exit__(*exc)

    def _counting(self, name, original):
        def read(tensor, *args, **kwargs):
            self.reads[name] += 1
            return original(tensor, *args, **kwargs)
        return read

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        kind = HOST_READS.get(func)
        if kind is None and func is _aten.index.Tensor and _has_bool_index(args[1]):
            kind = "bool_index"
        if kind is not None:
            self.reads[kind] += 1
        return func(*args, **(kwargs or {}))

    @property
    def host_reads(self) -> int:
        return sum(self.reads.values())


def _has_bool_index(indices) -> bool:
    return any(index is not None and index.dtype == torch.bool for index in indices)
