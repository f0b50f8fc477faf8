"""What ``decoding-bench``, ``decoding-eval`` and the other benchmarks share."""
