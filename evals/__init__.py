"""Evaluations: measurement helpers (:mod:`decoding.evals.measure`) and the speedup benchmark
(``python -m decoding.evals.speedup``, :mod:`decoding.evals.speedup`; not imported here so that ``-m`` runs it
cleanly)."""

from .measure import ceiling, cost_ratios, efficiency, time_calls, tokens_per_second

__all__ = ["ceiling", "cost_ratios", "efficiency", "time_calls", "tokens_per_second"]
