"""``python -m decoding.model_pairs.distill``: see :mod:`decoding.model_pairs.distill.cli`."""

from .cli import main

raise SystemExit(main())
