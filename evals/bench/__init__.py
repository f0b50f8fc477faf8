"""``decoding-bench``: speculative decoding speedup on a real draft/target pair, explained by its measured ceiling
(manual: ``docs/BENCHMARKS.md``; command line: :mod:`decoding.evals.bench.cli`)."""
