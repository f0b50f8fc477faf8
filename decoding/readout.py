"""Host reads, batched: the integers a decoding step's host code needs from the device, read in one transfer.

On a GPU every read of the device from the host (``.item()``, ``.tolist()``, ``nonzero``, a boolean mask) waits
for every kernel queued before it, so a step that asks five questions drains the launch queue five times. Here a
step *asks* as it goes (:meth:`Readout.ask` returns a :class:`Deferred`); the first ``.value`` needed afterwards
reads every pending ask at once. The speculative loop reads once per step, after its commit (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import torch


class Deferred:
    """A device value asked for and not yet read: ``.value`` is its integers, flattened (``bool`` as 0/1), read
    together with every other pending ask of its :class:`Readout` the first time one of them is needed."""

    __slots__ = ("_readout", "_value")

    def __init__(self, readout: Readout):
        self._readout = readout
        self._value: list[int] | None = None

    @property
    def ready(self) -> bool:
        """Whether it has been read (``.value`` then reads nothing)."""
        return self._value is not None

    @property
    def value(self) -> list[int]:
        if self._value is None:
            self._readout.read()
        return self._value


class Readout:
    """Pending asks of device integers, read in one device-to-host copy. ``reads`` counts the copies made."""

    def __init__(self):
        self._pending: list[tuple] = []  # (values, Deferred, then or None)
        self.reads = 0

    def ask(self, values: torch.Tensor, then=None) -> Deferred:
        """Ask for ``values`` (an integer or boolean tensor of any shape, on any device); nothing is read yet.
        ``then(value)``, when given, is called with the value once read (after every pending ask has its value: a
        check that raises leaves none unread)."""
        deferred = Deferred(self)
        self._pending.append((values, deferred, then))
        return deferred

    def read(self) -> None:
        """Read every pending ask: one transfer, however many asks (nothing when none is pending)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        device = pending[0][0].device  # models split over devices: one device gathers, then one copy
        flat = torch.cat([_flat(values, device) for values, _, _ in pending]).tolist()
        self.reads += 1
        start = 0
        for values, deferred, _ in pending:
            deferred._value = flat[start:start + values.numel()]
            start += values.numel()
        for _, deferred, then in pending:
            if then is not None:
                then(deferred._value)


def _flat(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` as a 1D int64 tensor on ``device`` (no operation when it already is one)."""
    if values.dim() != 1:
        values = values.reshape(-1)
    return values.to(device=device, dtype=torch.int64)
