"""``python -m decoding.evals.bench``: the ``decoding-bench`` command."""

import sys

from decoding.evals.bench.cli import main

sys.exit(main())
