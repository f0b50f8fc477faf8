"""Evaluations: the benchmark and evaluation command lines (manual: ``docs/BENCHMARKS.md``).

- ``decoding-bench`` (:mod:`decoding.evals.bench`): speculative decoding speedup on a real pair, explained by
  its measured ceiling;
- ``decoding-eval`` (:mod:`decoding.evals.quality`): quality of contrastive decoding and the other methods;
- ``python -m decoding.evals.contrastive_speed``, ``python -m decoding.evals.speedup`` and
  ``python -m decoding.evals.kernel_bench``;
- :mod:`decoding.evals.common`: what they share (timing, cost ratios and the ceiling in
  :mod:`decoding.evals.common.measure`; the pair, prompt files, tables, output files).

None of the command-line modules is imported here, so that ``-m`` runs each cleanly."""

from decoding.evals.common.measure import ceiling, cost_ratios, efficiency, time_calls, tokens_per_second

__all__ = ["ceiling", "cost_ratios", "efficiency", "time_calls", "tokens_per_second"]
