"""``decoding-eval``: quality of continuations by decoding method (manual: ``docs/QUALITY.md``; command line:
:mod:`decoding.evals.quality.cli`)."""
