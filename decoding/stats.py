"""Statistics of one ``generate`` call: :class:`AcceptanceStats` (speculative strategies) and :class:`MixingStats`
(token-by-token strategies). Each call fills its own record (see :class:`decoding.strategy.Strategy`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AcceptanceStats:
    """Acceptance statistics of one call, counted over (row, step) pairs.

    - ``acceptance_rate``: accepted / drafted (vLLM's definition).
    - ``alpha``: the per-token acceptance probability of Leviathan et al.'s analysis, the ``a`` of the ceiling
      ``(1 - a^(g+1)) / ((1 - a)(g*c + v))``: accepted / acceptance tests run, where a row-step tests its drafts
      up to and including the first rejection (drafts after a rejection are never tested).
    - ``mean_accepted_length``: the mean number of tokens a row emits per verification step, counting the
      recovered or bonus token (1.0 for plain decoding): vLLM's and Spec-Bench's tau.
    - ``per_position_acceptance[i]``: fraction of row-steps that accepted draft position ``i``.

    During a call each step's counts stay on the device, uncounted (:meth:`record`); :meth:`settle`, at the end of
    the call, counts them and reads them in one transfer per draft length used.
    """

    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    rejected: int = 0  # row-steps that rejected one of their drafts
    position_steps: list = field(default_factory=list)  # row-steps that drafted position i
    position_accepted: list = field(default_factory=list)  # row-steps that accepted position i
    seconds: dict = field(default_factory=dict)  # per phase, when the strategy profiles (``profile=True``)
    _pending: dict = field(default_factory=dict, repr=False, compare=False)  # g -> [(num_accepted, proposed)]

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def alpha(self) -> float:
        tests = self.accepted + self.rejected
        return self.accepted / tests if tests else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted / self.steps if self.steps else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [a / s if s else 0.0 for a, s in zip(self.position_accepted, self.position_steps)]

    def record(self, num_accepted: torch.Tensor, proposed: torch.Tensor | None, g: int) -> None:
        """Count one step of the active rows: ``num_accepted  # [b]`` of ``proposed  # [b]`` drafts (at most ``g``;
        None: every row proposed ``g``); both stay on the device until :meth:`settle`."""
        self.steps += num_accepted.shape[0]
        if g:  # a plain step drafts nothing
            proposed = torch.full_like(num_accepted, g) if proposed is None else proposed
            self._pending.setdefault(g, []).append((num_accepted, proposed))

    def settle(self) -> None:
        """Count the steps kept on the device into the totals (one read per draft length used)."""
        pending, self._pending = self._pending, {}
        for g, steps in sorted(pending.items()):
            num_accepted = torch.cat([accepted for accepted, _ in steps])  # [row-steps]
            proposed = torch.cat([drafted.to(num_accepted.device) for _, drafted in steps])  # [row-steps]
            positions = torch.arange(g, device=num_accepted.device)
            counts = torch.cat([(proposed[:, None] > positions).sum(dim=0),  # [g] row-steps that drafted position i
                                (num_accepted[:, None] > positions).sum(dim=0),  # [g] ... that accepted it
                                (num_accepted < proposed).sum().reshape(1)])  # [1] ... that rejected a draft
            self._add(g, counts.tolist())

    def _add(self, g: int, counts: list[int]) -> None:
        grow = max(g - len(self.position_steps), 0)
        self.position_steps += [0] * grow
        self.position_accepted += [0] * grow
        for i in range(g):
            self.position_steps[i] += counts[i]
            self.position_accepted[i] += counts[g + i]
        self.drafted += sum(counts[:g])
        self.accepted += sum(counts[g:2 * g])
        self.rejected += counts[-1]


@dataclass
class MixingStats:
    """Counts of one call: ``steps`` are row-steps (tokens decided, per row), ``forwards`` the forward passes each
    model ran (by role: ``"target"`` and the helper roles)."""

    steps: int = 0
    forwards: dict = field(default_factory=dict)

    def settle(self) -> None:
        """Nothing is kept on the device."""

    def count_forward(self, role: str) -> None:
        self.forwards[role] = self.forwards.get(role, 0) + 1
