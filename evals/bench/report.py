"""Output of the speedup benchmarks: terminal tables (rich when installed, plain text otherwise), JSON and a plot.

Every function takes the benchmark's *cells*: one dict per (mode, batch size, method) with the keys that
:mod:`decoding.evals.bench` documents (``tokens_per_s``, ``speedup``, ``acceptance_rate``, ``ceiling``, ...).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import textwrap
from pathlib import Path

__all__ = ["COLUMNS", "PLOT_REQUIREMENT", "check_plotting", "format_table", "print_table", "plot_speedup",
           "print_checks", "write_json"]

# (header, cell key, format)
COLUMNS = [("batch", "batch_size", "{}"), ("method", "name", "{}"), ("tok/s", "tokens_per_s", "{:.1f}"),
           ("speedup", "speedup", "{:.2f}x"), ("decode", "decode_speedup", "{:.2f}x"),
           ("acc", "acceptance_rate", "{:.3f}"),
           ("alpha", "alpha", "{:.3f}"), ("tau", "mean_accepted_length", "{:.2f}"), ("c", "c", "{:.3f}"),
           ("v", "v", "{:.2f}"), ("ceiling", "ceiling", "{:.2f}x"), ("eff", "efficiency", "{:.2f}"),
           ("= target", "matches_target", "{}"), ("per-position acceptance", "per_position_acceptance", "{}")]

LEFT = ("method", "per-position acceptance")

PLOT_REQUIREMENT = "--plot needs matplotlib: pip install 'pairdecode[eval]' (or pip install matplotlib)"


def _format(cell: dict, key: str, fmt: str) -> str:
    value = cell.get(key)
    if key == "matches_target":
        if cell.get("mode", "greedy") != "greedy" or cell.get("method") == "target":
            return "-"
        return ("yes" if value else "NO") + f" ({cell['rows_matching_target']})"
    if value is None:
        return "-"
    if key == "per_position_acceptance":
        return " ".join(f"{x:.2f}" for x in value) if value else "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def _columns(cells: list[dict]) -> list[tuple[str, str, str]]:
    if all(c.get("mode", "greedy") != "greedy" for c in cells):
        return [col for col in COLUMNS if col[1] != "matches_target"]  # sampled outputs are not compared
    return COLUMNS


def format_table(cells: list[dict]) -> str:
    """The results as a plain-text table."""
    columns = _columns(cells)
    rows = [[name for name, _, _ in columns]] + [[_format(c, k, f) for _, k, f in columns] for c in cells]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if columns[i][0] in LEFT else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def print_table(cells: list[dict], title: str, file=None) -> None:
    """Print the table with rich when it is installed (and ``file`` is stdout), plain text otherwise."""
    file = file if file is not None else sys.stdout
    try:
        from rich.console import Console
    except ImportError:
        Console = None
    if Console is None or file is not sys.stdout:
        print(title, file=file)
        print(format_table(cells), file=file)
        return
    console = Console() if sys.stdout.isatty() else Console(width=200)  # not a terminal: no squeezing
    columns = _columns(cells)
    table = _rich_table(cells, columns, title)
    if _width(console, table) > console.width:  # too wide for this terminal: per-position acceptance is in the JSON
        table = _rich_table(cells, [c for c in columns if c[1] != "per_position_acceptance"], title)
    console.width = max(console.width, _width(console, table))  # never squeeze numbers into ellipses
    console.print(table)


def _rich_table(cells: list[dict], columns, title: str):
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name, _, _ in columns:
        table.add_column(name, justify="left" if name in LEFT else "right", no_wrap=True)
    previous = None
    for cell in cells:
        if previous is not None and cell["batch_size"] != previous:
            table.add_section()
        previous = cell["batch_size"]
        table.add_row(*[_format(cell, k, f) for _, k, f in columns], style="bold" if cell.get("best") else None)
    return table


def _width(console, table) -> int:
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update(width=10_000), table).maximum


def print_checks(checks: list[dict], file=None) -> None:
    """One line per greedy cell: does its output equal the target's own greedy output?"""
    for check in checks:
        verdict = "equal" if check["matches_target"] else "DIFFERENT"
        extra = ""
        if not check["matches_target"] and check.get("mean_agreeing_prefix") is not None:
            extra = f", differing rows agree on their first {check['mean_agreeing_prefix']:.1f} new tokens on average"
        print(f"check: batch {check['batch_size']}, {check['name']}: greedy output {verdict} to the target's "
              f"({check['rows_matching_target']} rows{extra})", file=file)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write ``result`` as indented JSON (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def check_writable(path: str | os.PathLike, option: str) -> None:
    """Raise ``OSError`` naming ``option`` unless a file can be written at ``path`` (checked before a long run,
    by creating it; a file that did not exist is removed again)."""
    path = Path(path)
    existed = path.exists()
    try:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as error:
        raise OSError(f"{option} {path} cannot be written ({error.strerror or error}): choose another path") from None
    if not existed:
        path.unlink()


def write_json_or_fallback(result: dict, path: str | os.PathLike) -> tuple[Path, OSError | None]:
    """Write ``result`` at ``path``; if that fails late (disk full, folder removed), write it to a temporary
    file instead. Returns ``(where it was written, the error or None)``, so results are never lost."""
    try:
        return write_json(result, path), None
    except OSError as error:
        handle, fallback = tempfile.mkstemp(prefix="decoding-results-", suffix=".json")
        os.close(handle)
        return write_json(result, fallback), error


def check_plotting() -> None:
    """Raise ``ImportError`` with an install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_REQUIREMENT) from None


def _speedup(cell: dict) -> float:
    value = cell.get("decode_speedup")
    return cell["speedup"] if value is None or value != value else value


def plot_speedup(cells: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """PNG of decoding speedup (prompt encoding excluded, the speedup the ceiling bounds) against draft length:
    one solid line per (mode, batch size) for this library's strategy, its ceiling as a dashed line of the same
    colour, transformers' ``assistant_model=`` as crosses, and 1x as the baseline (target alone). One panel per
    mode. Cells without a decoding speedup (older results) fall back to the whole-call speedup."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(c.get("mode", "greedy") for c in cells))
    figure, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    batch_sizes = sorted({c["batch_size"] for c in cells})
    top = 1.0
    for axis, mode in zip(axes[0], modes):
        for i, batch in enumerate(batch_sizes):
            color = colors[i % len(colors)]
            spec = sorted((c for c in cells if c.get("mode", "greedy") == mode and c["batch_size"] == batch
                           and c["method"] == "speculative"), key=lambda c: c["num_draft_tokens"])
            if not spec:
                continue
            g = [c["num_draft_tokens"] for c in spec]
            axis.plot(g, [_speedup(c) for c in spec], "o-", color=color, label=f"batch {batch}")
            axis.plot(g, [c["ceiling"] for c in spec], "--", color=color, alpha=0.8, label=f"batch {batch} ceiling")
            top = max(top, *(_speedup(c) for c in spec), *(c["ceiling"] for c in spec))
            assisted = sorted((c for c in cells if c.get("mode", "greedy") == mode and c["batch_size"] == batch
                               and c["method"] == "assisted"), key=lambda c: c["num_draft_tokens"])
            if assisted:
                axis.plot([c["num_draft_tokens"] for c in assisted], [_speedup(c) for c in assisted], "x:",
                          color=color, markersize=8, label=f"batch {batch}, transformers assistant_model=")
                top = max(top, *(_speedup(c) for c in assisted))
        axis.axhline(1.0, color="grey", linewidth=1, label="target alone")
        axis.set_title(mode)
        axis.set_xlabel("draft length g")
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("decoding speedup over target alone")
    axes[0][0].set_ylim(0, top * 1.1)
    if title:
        figure.suptitle(textwrap.fill(title, 60 * len(modes)), fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
