"""``python -m decoding.model_pairs.train``: see :mod:`decoding.model_pairs.train.cli`."""

from .cli import main

raise SystemExit(main())
