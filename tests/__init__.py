"""Test package (an ``__init__.py`` so that test modules import helpers as ``from tests.models import ...``).

pytest's default ``prepend`` import mode puts the repository root on ``sys.path`` because of this file, so
``pytest`` run from the repository root (or ``pytest tests/...``) can import ``tests.models`` and
``tests.strategies``.
"""
