"""Checks shared by the tests of the command-line tools."""

from __future__ import annotations


def error_line(capsys, prog: str = "decoding-bench") -> str:
    """The one line a command wrote to stderr for a usage or setup error (no traceback anywhere), checked to start
    with ``<prog>: error: ``."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: ")
    return lines[0]
