"""What the benchmarks' command lines share: argument types (comma-separated lists, bounded numbers, each raising
``argparse.ArgumentTypeError`` with a one-line message), the dtype and thread options, the two errors a command
reports as one line (:class:`UsageError`, :class:`SetupError`) and the entry point that reports them
(:func:`run_command`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["DTYPES", "MAX_THREADS", "OneLineParser", "SetupError", "UsageError", "choice_list", "int_list",
           "name_list", "non_negative", "positive", "run_command", "threads"]

# --dtype of both commands: "auto" is the checkpoint's dtype (float32 for a synthetic pair).
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
MAX_THREADS = 4096


class UsageError(Exception):
    """A bad command line: reported as one line on stderr, exit status 2."""


class SetupError(Exception):
    """Bad input found while loading models or prompts, or an output that could not be written: reported as one
    line on stderr, exit status 1."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`UsageError` (one line, no usage block) for
    :func:`run_command` to print."""

    def error(self, message):
        raise UsageError(message)


def run_command(prog: str, run: Callable[[list[str] | None], object], argv=None) -> int:
    """Call ``run(argv)`` and turn what ends it into one line on stderr and an exit status: 0 when done, 2 for a
    :class:`UsageError`, 1 for a :class:`SetupError`, 130 when interrupted (Ctrl-C), 1 when stdout is a closed
    pipe."""
    try:
        run(argv)
    except UsageError as error:
        print(f"{prog}: error: {error} (see {prog} --help)", file=sys.stderr)
        return 2
    except SetupError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which has exited
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


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


def _bounded(kind, maximum, zero: bool):
    """A finite number of ``kind`` above 0 (or at least 0 with ``zero``), up to ``maximum``."""
    lowest = "a value >= 0" if zero else "a value > 0"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        low = value >= 0 if zero else value > 0
        if not low or (maximum is not None and value > maximum) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {lowest}"
                                             + (f" and <= {maximum}" if maximum is not None else ""))
        return value

    return parse


def positive(kind=int, maximum=None):
    """A number of ``kind`` above 0 (finite), up to ``maximum``."""
    return _bounded(kind, maximum, zero=False)


def non_negative(kind=int, maximum=None):
    """A number of ``kind`` of at least 0 (finite), up to ``maximum``."""
    return _bounded(kind, maximum, zero=True)


# --threads of both commands: torch CPU threads, at least one.
threads = positive(int, MAX_THREADS)
