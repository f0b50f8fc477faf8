"""``python -m decoding.evals.quality``: the ``decoding-eval`` command."""

import sys

from decoding.evals.quality.cli import main

sys.exit(main())
