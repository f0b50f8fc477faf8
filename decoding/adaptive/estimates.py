"""What the adaptive draft length estimates from the steps it observes, each estimate a small immutable record:
the drafts' acceptance (overall and by confidence bin), the seconds of target and draft forwards (and the line of
t(n)), and the realized tokens per second of plain and drafting steps. Why each is as it is: ``docs/ADAPTIVE.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch

EMA = 0.8  # weight of the past in the running estimates of seconds
LINE_MEMORY = 0.95  # decay per forward of the weights of the forwards that t(n >= 2) is fitted through
# Decay per step of the acceptance counts and of the rates' sums (a batch-1 step tests one or two drafts: ~10 steps)
MEMORY = 0.9
BINS = 16  # confidence bins of the acceptance estimate
PRIOR = 2.0  # pseudo-tests at the overall acceptance rate in every bin


@dataclass(frozen=True)
class Acceptance:
    """Decayed counts of tested drafts, accepted and tested, in all and by confidence bin."""

    accepted: float = 0.0
    tested: float = 0.0
    bin_accepted: tuple = (0.0,) * BINS
    bin_tested: tuple = (0.0,) * BINS

    @property
    def rate(self) -> float:
        """Accepted over tested (decayed); 1 before any test."""
        return self.accepted / self.tested if self.tested > 0 else 1.0

    def chances(self, device) -> torch.Tensor:
        """Every bin's estimated chance ``# [BINS]``: its rate with :data:`PRIOR` tests at the overall rate."""
        return torch.tensor([(accepted + PRIOR * self.rate) / (tested + PRIOR)
                             for accepted, tested in zip(self.bin_accepted, self.bin_tested)], device=device)

    def learned(self, accepted: list, tested: list) -> Acceptance:
        """With one step's counts by bin added (``accepted``, ``tested``: ``BINS`` numbers each)."""
        return Acceptance(*decayed((self.accepted, self.tested), (sum(accepted), sum(tested))),
                          decayed(self.bin_accepted, accepted), decayed(self.bin_tested, tested))


@dataclass(frozen=True)
class Seconds:
    """Running estimates of what a step costs: a draft forward, the rest of a step after its target forward, and
    target forwards by the new tokens per row they read (``target``; ``line``: decayed sums over the forwards of
    n >= 2 tokens of weights, n, t, n^2 and n t)."""

    draft: float | None = None
    rest: float | None = None
    target: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # read-only: shared across calls
    line: tuple = (0.0,) * 5

    def known(self) -> bool:
        return self.draft is not None and len(self.target) >= 2

    def with_target(self, new_tokens: int, seconds: float) -> Seconds:
        """With a target forward over ``new_tokens`` tokens per row that took ``seconds``."""
        target = MappingProxyType({**self.target, new_tokens: ema(self.target.get(new_tokens), seconds)})
        line = self.line
        if new_tokens > 1:
            n, t = float(new_tokens), seconds
            line = decayed(line, (1.0, n, t, n * n, n * t), LINE_MEMORY)
        return replace(self, target=target, line=line)

    def target_time(self, n: int) -> float:
        """``t(n)``: ``t(1)`` as measured, and for ``n >= 2`` a least-squares line through the forwards measured over
        2 or more tokens, weighted by recency (one token often takes a faster matrix-vector path, so it is kept off
        the line); never decreasing."""
        ones = self.target.get(1)
        weight, sum_n, sum_t, sum_nn, sum_nt = self.line
        if n == 1 and ones is not None or weight == 0:
            return ones if ones is not None else self.target[min(self.target)]
        spread = weight * sum_nn - sum_n * sum_n
        slope = max((weight * sum_nt - sum_n * sum_t) / spread, 0.0) if spread > 1e-9 * weight * sum_nn else 0.0
        line = (sum_t - slope * sum_n) / weight + slope * n
        return max(line, ones) if ones is not None else line


@dataclass(frozen=True)
class Rates:
    """Tokens per row and seconds of whole steps, plain and drafting: decayed sums (a ratio of sums: a step's
    tokens vary from 1 to g + 1); both kinds decay with every step."""

    plain: tuple = (0.0, 0.0)
    draft: tuple = (0.0, 0.0)

    def rate(self, kind: str) -> float | None:
        """Tokens per row per second of ``kind`` ("plain" or "draft") steps lately (None: none yet)."""
        tokens, seconds = getattr(self, kind)
        return tokens / seconds if seconds > 0 else None

    def recorded(self, kind: str, tokens: float, seconds: float) -> Rates:
        """With a step of ``kind`` added."""
        return Rates(*(decayed(getattr(self, name), (tokens, seconds) if name == kind else (0.0, 0.0))
                       for name in ("plain", "draft")))


def confidence_bin(confidence: torch.Tensor) -> torch.Tensor:
    """The confidence bin of each probability in ``confidence``: ``[0, 1/BINS)`` is bin 0, ``1`` is the last."""
    return (confidence * BINS).long().clamp(0, BINS - 1)


def decayed(sums: tuple, new, memory: float = MEMORY) -> tuple:
    """Decayed sums: each of ``sums`` times ``memory``, plus its counterpart in ``new``."""
    return tuple(memory * past + value for past, value in zip(sums, new))


def ema(previous: float | None, value: float) -> float:
    return value if previous is None else EMA * previous + (1 - EMA) * value
