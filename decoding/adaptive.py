"""How many tokens a speculative step proposes: a fixed ``g``, or ``num_draft_tokens="auto"`` (:class:`AdaptiveLength`).

The adaptive rule, per step and per row, training-free. Proposing position ``i`` pays when the chance that the row
reaches and accepts it, times the target step it saves, exceeds what it costs (one draft forward and one more
verified position)::

    a_1 ... a_i * t(1)  >  t_draft + t(i + 1) - t(i)

``t(n)`` is the time of a target forward over ``n`` new tokens and ``t_draft`` that of a draft forward, both
measured on this call's own forwards (a line fitted through the measured ``t(n)``; the first step proposes two
tokens, the second none, to measure them). ``a_j`` is the row's estimated acceptance at position ``j``: the draft's
confidence in its token (``q(x)`` when sampling, its top probability when greedy; the acceptance rate so far for
proposers without one) times this call's calibration, accepted drafts over the confidence of the drafts tested.
A step drafts at all only when its first position pays at the acceptance rate so far; otherwise the target steps
alone, and a probe step drafts one token anyway after ``probe_every`` such steps (the wait doubles after every
probe that finds drafting still does not pay, up to 64 steps) so that a change in acceptance is noticed.
"""

from __future__ import annotations

import time

import torch

EMA = 0.8  # weight of the past in every running estimate


class FixedLength:
    """``g`` tokens every step, nothing measured."""

    def __init__(self, g: int):
        self.g = g

    def limit(self) -> int:
        return self.g

    def calibration(self) -> float:
        return 1.0

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """None: every row proposes every position."""
        return None

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        return True

    def clock(self) -> float:
        return 0.0

    def observe(self, proposal, num_accepted, draft_seconds, target_seconds, new_tokens) -> None:
        """Nothing to learn."""


class AdaptiveLength:
    """The rule of the module docstring, for one call; ``max_tokens`` bounds a step's proposals."""

    def __init__(self, max_tokens: int, device: torch.device, probe_every: int = 8):
        self.max_tokens, self.device = max_tokens, torch.device(device)
        self.probe_every = self.first_probe = probe_every
        self.steps = self.skipped = 0
        self.draft_seconds: float | None = None  # per draft forward
        self.target_seconds: dict[int, float] = {}  # new tokens per row -> seconds of a target forward
        self.accepted = self.tested_confidence = 0.0  # calibration: accepted drafts / their tested confidence
        self.acceptance: float | None = None  # running acceptance rate of first positions

    def _known(self) -> bool:
        return self.draft_seconds is not None and self.acceptance is not None and len(self.target_seconds) >= 2

    def limit(self) -> int:
        """The most tokens this step may propose (0: the target steps alone)."""
        self.steps += 1
        if self.steps <= 2:
            return min(2, self.max_tokens) if self.steps == 1 else 0  # measures t_draft, t(3) and t(1)
        if not self._known() or self._pays(self.acceptance, 1, drafting=True):
            self.skipped, self.probe_every = 0, self.first_probe
            return self.max_tokens
        if self.skipped >= self.probe_every:  # one token: enough to measure first-position acceptance, cheaply
            self.skipped, self.probe_every = 0, min(2 * self.probe_every, 64)
            return 1
        self.skipped += 1
        return 0

    def calibration(self) -> float:
        """Accepted drafts per unit of draft confidence, in this call (1 before any test)."""
        return min(self.accepted / self.tested_confidence, 1.0) if self.tested_confidence > 0 else 1.0

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """Rows for which verifying drafted position ``position`` pays, ``reach  # [b]`` being the estimated
        chance of accepting positions 1..``position``; None while the costs are unknown."""
        return self._pays(reach, position, drafting=False) if self._known() else None

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        """Whether drafting position ``position + 1`` pays for some row (its acceptance assumed at the rate so far)."""
        return not self._known() or bool(self._pays(reach.max() * self.acceptance, position + 1, drafting=True))

    def _pays(self, reach, position: int, drafting: bool):
        """``reach * t(1) > [t_draft] + t(position + 1) - t(position)``."""
        cost = self._target_time(position + 1) - self._target_time(position)
        return reach * self._target_time(1) > cost + (self.draft_seconds if drafting else 0.0)

    def clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def observe(self, proposal, num_accepted, draft_seconds: float, target_seconds: float, new_tokens: int) -> None:
        """Learn from one step: its proposal, ``num_accepted  # [b]``, the seconds of its draft forwards and of its
        target forward over ``new_tokens`` positions per row (0 when that forward also read a prompt)."""
        drafted = proposal.ids.shape[1]
        if drafted and draft_seconds > 0:
            self.draft_seconds = _ema(self.draft_seconds, draft_seconds / drafted)
        if new_tokens:
            self.target_seconds[new_tokens] = _ema(self.target_seconds.get(new_tokens), target_seconds)
        proposed = proposal.lengths()
        if not bool((proposed > 0).any()):
            return
        positions = torch.arange(drafted, device=num_accepted.device)
        tested = (positions <= num_accepted[:, None]) & (proposal.ids >= 0)  # up to the first rejection
        confidence = proposal.confidence if proposal.confidence is not None else tested.to(torch.float32)
        self.accepted = EMA * self.accepted + float(num_accepted.sum())
        self.tested_confidence = EMA * self.tested_confidence + float((confidence * tested).sum())
        self.acceptance = _ema(self.acceptance, float((num_accepted[proposed > 0] > 0).float().mean()))

    def _target_time(self, n: int) -> float:
        """``t(n)``: a least-squares line through the measured forwards, never decreasing."""
        sizes = sorted(self.target_seconds)
        mean_n = sum(sizes) / len(sizes)
        mean_t = sum(self.target_seconds[s] for s in sizes) / len(sizes)
        spread = sum((s - mean_n) ** 2 for s in sizes)
        slope = sum((s - mean_n) * (self.target_seconds[s] - mean_t) for s in sizes) / spread
        return mean_t + max(slope, 0.0) * (n - mean_n)


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else EMA * previous + (1 - EMA) * value
