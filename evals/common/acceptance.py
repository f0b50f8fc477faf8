"""Acceptance counters of the speculative strategies, summed over calls, prompts and processes, and the figures
derived from them (:class:`Acceptance`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from decoding.evals.common.measure import per_token_acceptance

__all__ = ["Acceptance", "acceptance_summary", "merge_stats", "merge_totals"]

COUNTERS = ("steps", "drafted", "accepted", "rejected")
PER_POSITION = ("position_steps", "position_accepted")


def merge_stats(total: dict, stats) -> dict:
    """Add one call's ``AcceptanceStats`` (or a dict of the same counters) into ``total``; returns ``total``.

    ``total`` holds plain counters (:data:`COUNTERS` and the per-position lists :data:`PER_POSITION`), so totals
    of several calls, prompts or processes add up exactly and travel through JSON or ``gather_object``.
    """
    get = stats.get if isinstance(stats, dict) else lambda key, default: getattr(stats, key, default)
    for key in COUNTERS:
        total[key] = total.get(key, 0) + get(key, 0)
    for key in PER_POSITION:
        values = list(get(key, []))
        old = total.setdefault(key, [])
        old.extend([0] * (len(values) - len(old)))
        for i, value in enumerate(values):
            old[i] += value
    return total


def merge_totals(totals: Iterable[dict]) -> dict:
    """The sum of several :func:`merge_stats` totals."""
    out: dict = {}
    for total in totals:
        merge_stats(out, total)
    return out


@dataclass
class Acceptance:
    """Acceptance figures of summed counters at one draft length ``g`` (the keys of the JSON, in order)."""

    acceptance_rate: float  # accepted / drafted (vLLM's)
    alpha: float  # per-token acceptance reproducing tau in the ceiling formula (measure.per_token_acceptance)
    alpha_tested: float  # accepted / acceptance tests run (AcceptanceStats.alpha)
    mean_accepted_length: float  # tau: tokens per row and step, bonus token counted
    per_position_acceptance: list[float]  # accepted at draft position i / steps that reached it
    steps: int
    drafted: int
    accepted: int

    @classmethod
    def from_totals(cls, total: dict, g: int) -> Acceptance:
        steps, drafted, accepted = total.get("steps", 0), total.get("drafted", 0), total.get("accepted", 0)
        tests = accepted + total.get("rejected", 0)
        tau = 1.0 + accepted / steps if steps else 0.0
        return cls(
            acceptance_rate=accepted / drafted if drafted else 0.0,
            alpha=per_token_acceptance(tau, g),
            alpha_tested=accepted / tests if tests else 0.0,
            mean_accepted_length=tau,
            per_position_acceptance=[a / s if s else 0.0 for a, s in
                                     zip(total.get("position_accepted", []), total.get("position_steps", []))],
            steps=steps,
            drafted=drafted,
            accepted=accepted,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def acceptance_summary(total: dict, g: int) -> dict:
    """:class:`Acceptance` of summed counters at draft length ``g``, as a dict."""
    return Acceptance.from_totals(total, g).to_dict()
