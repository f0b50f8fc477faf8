"""Argument types shared by the benchmarks' command lines: comma-separated lists and bounded numbers, each
raising ``argparse.ArgumentTypeError`` with a one-line message."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

__all__ = ["choice_list", "int_list", "name_list", "positive"]


def _items(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


def int_list(name: str, maximum: int | None = None):
    """``"1,4"`` -> ``[1, 4]``: positive integers up to ``maximum``, duplicates dropped."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in _items(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {name}, got {text!r}")
        bad = [v for v in values if v < 1 or maximum is not None and v > maximum]
        if bad:
            allowed = f"1 to {maximum}" if maximum is not None else "a value >= 1"
            raise argparse.ArgumentTypeError(f"{name} {bad[0]} is out of range: use {allowed}")
        return list(dict.fromkeys(values))

    return parse


def choice_list(choices: Sequence[str], what: str):
    """``"a,b"`` -> ``["a", "b"]``, each one of ``choices``."""
    def parse(text: str) -> list[str]:
        values = _items(text)
        bad = [v for v in values if v not in choices]
        if bad or not values:
            shown = bad[0] if bad else text
            raise argparse.ArgumentTypeError(f"unknown {what} {shown!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return parse


def name_list(what: str):
    """``"a,b"`` -> ``["a", "b"]``: any names, at least one."""
    def parse(text: str) -> list[str]:
        values = _items(text)
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} names")
        return list(dict.fromkeys(values))

    return parse


def positive(kind=int, maximum=None):
    """A number of ``kind`` above 0 (finite), up to ``maximum``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or (maximum is not None and value > maximum) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use a value > 0"
                                             + (f" and <= {maximum}" if maximum is not None else ""))
        return value

    return parse
