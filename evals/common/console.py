"""Terminal output of the benchmarks: tables (rich when installed, plain text otherwise) and transformers'
logging kept quiet during a run."""

from __future__ import annotations

import contextlib
from collections.abc import Container, Sequence

__all__ = ["has_rich", "plain_table", "quiet_transformers", "rich_table", "stdout_console", "table_width"]


def has_rich() -> bool:
    """Whether rich can be imported."""
    try:
        import rich.console  # noqa: F401
    except ImportError:
        return False
    return True


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Container[int] = (0,),
                rule: bool = False) -> str:
    """Columns two spaces apart, right-aligned but those in ``left``; with ``rule`` a line of dashes under the
    header."""
    table = [list(header)] + [list(row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i in left else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in table]
    if rule:
        lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def rich_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], left: Container[int] = (0,), *,
               no_wrap: bool = False, sections: Container[int] = (), styles: Sequence[str | None] | None = None,
               **options):
    """A rich ``Table`` of ``rows``: a section line before every row index in ``sections``, a style per row;
    ``options`` go to ``Table``."""
    from rich.table import Table

    table = Table(title=title, **options)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i in left else "right", no_wrap=no_wrap)
    for i, row in enumerate(rows):
        if i in sections:
            table.add_section()
        table.add_row(*row, style=styles[i] if styles is not None else None)
    return table


def stdout_console(piped_width: int):
    """A rich console on stdout; when stdout is not a terminal, at least ``piped_width`` columns wide."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, piped_width))
    return console


def table_width(console, table) -> int:
    """The width ``table`` takes on ``console`` when nothing limits it."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=10_000), table).maximum


@contextlib.contextmanager
def quiet_transformers(progress_bars: bool = True):
    """transformers' per-call warnings silenced inside the block (and its progress bars, unless
    ``progress_bars``); both restored after."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    if not progress_bars:
        transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()

