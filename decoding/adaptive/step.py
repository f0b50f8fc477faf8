"""One speculative step as the length policy learns from it (:class:`StepFacts`), and the stopwatch that times a
step's phases for it (:class:`Stopwatch`), so that the decoding loop itself holds no timing logic."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepFacts:
    """What one step proposed and accepted, and what it cost.

    - ``proposal``: what the drafter proposed, before trimming (``ids  # [b, w]``, -1 where a row proposed nothing,
      with ``confidence  # [b, w]`` or None): its width ``w`` is the positions drafted, whether or not some row
      proposed the last ones and the target verified them (``w = 0``: a plain target step);
    - ``num_accepted  # [b]``: the drafts each row kept; ``rows  # [b]``: the batch's original rows they belong to;
    - ``new_tokens``: the tokens per row the target forward read (``g + 1``), 0 when it also read a prompt;
    - ``draft_seconds``: proposing, the draft's forwards included; ``target_seconds``: the target's forward;
      ``rest_seconds``: the previous step after its target forward (verification, commit, rollback), None for a
      call's first step;
    - ``live  # [b']``: the positions of the unfinished rows when finished ones stay in the batch (their drafts
      say nothing of the others'), None when every row is unfinished.
    """

    proposal: object
    num_accepted: torch.Tensor
    new_tokens: int
    rows: torch.Tensor | None = None
    draft_seconds: float = 0.0
    target_seconds: float = 0.0
    rest_seconds: float | None = None
    live: torch.Tensor | None = None

    def unfinished(self) -> tuple:
        """``(ids  # [b', w], confidence  # [b', w] or None, num_accepted  # [b'], rows  # [b'] or None)`` of the
        unfinished rows."""
        values = (self.proposal.ids, self.proposal.confidence, self.num_accepted, self.rows)
        return tuple(v if self.live is None or v is None else v[self.live] for v in values)

    @property
    def width(self) -> int:
        """The positions drafted this step (a draft forward each)."""
        return self.proposal.ids.shape[1]


class Stopwatch:
    """Seconds of a step's phases, ``"draft"``, ``"target"`` and ``"verify"``, and of the rest between the end of
    one step's target phase and the start of the next step's draft phase; ``totals`` sums each phase over the call.
    On CUDA it synchronizes before every reading, so that a phase is charged for its own kernels."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}
        self.rest: float | None = None
        self.totals: dict[str, float] = {}
        self._target_ended: float | None = None
        self._started = self.now()

    def split(self) -> dict[str, float]:
        """Seconds of the call so far per phase, and ``"other"``: the rest of its time (commit, stopping, cache
        rollback and compaction, statistics)."""
        total = self.now() - self._started
        return {**self.totals, "other": max(total - sum(self.totals.values()), 0.0)}

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def phase(self, name: str):
        started = self.now()
        if name == "draft":
            self.seconds = {}
            self.rest = None if self._target_ended is None else started - self._target_ended
        yield
        ended = self.now()
        self.seconds[name] = ended - started
        self.totals[name] = self.totals.get(name, 0.0) + ended - started
        if name == "target":
            self._target_ended = ended


class NoStopwatch:
    """The stopwatch of a policy that learns nothing: phases are not timed."""

    seconds: dict = {}
    rest = None

    @contextmanager
    def phase(self, name: str):
        yield
