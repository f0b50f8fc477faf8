"""Evaluations: the benchmark and evaluation command lines and their helpers.

- ``decoding-bench`` (:mod:`decoding.evals.bench`): speculative decoding speedup on a real pair, explained by
  its measured ceiling (the embedded pair by default);
- ``decoding-eval`` (:mod:`decoding.evals.quality`): quality of contrastive decoding and the other methods;
- ``python -m decoding.evals.contrastive_speed``, ``python -m decoding.evals.speedup`` (the synthetic pair) and
  ``python -m decoding.evals.kernel_bench`` (the CUDA kernels);
- :mod:`decoding.evals.measure`: timing, cost ratios and the ceiling.

None of the command-line modules is imported here, so that ``-m`` runs each cleanly."""

from decoding.evals.common.measure import ceiling, cost_ratios, efficiency, time_calls, tokens_per_second

__all__ = ["ceiling", "cost_ratios", "efficiency", "time_calls", "tokens_per_second"]
