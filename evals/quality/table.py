"""``decoding-eval``'s table: one row per method (and the human references), then what was unavailable and the
checks."""

from __future__ import annotations

import math

from decoding.evals.common.console import has_rich, plain_table, rich_table, stdout_console
from decoding.evals.quality.generate import label

__all__ = ["COLUMNS", "format_table", "print_table", "table_rows"]

# (result key, header, format)
COLUMNS = (("rep_2", "rep-2", ".2f"), ("rep_3", "rep-3", ".2f"), ("rep_4", "rep-4", ".2f"),
           ("diversity", "div", ".3f"), ("coherence", "coh", ".3f"), ("mauve", "MAUVE", ".1f"),
           ("perplexity", "ppl", ".2f"), ("mean_words", "words", ".1f"), ("tokens_per_second", "tok/s", ".1f"))
HEADER = ["method"] + [title for _, title, _ in COLUMNS]


def _cell(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, fmt)


COMPARED = "NLL vs sample"  # the expert's NLL per token against the target's own samples, +- one standard error


def _compared(row: dict) -> str:
    if row.get("nll_vs_sample") is None:
        return "-"
    return f"{_cell(row['nll_vs_sample'], '+.3f')}±{_cell(row['nll_vs_sample_se'], '.3f')}"


def _has_comparison(result: dict) -> bool:
    return any("nll_vs_sample" in row for row in result["methods"].values())


def _header(result: dict) -> list[str]:
    return HEADER + [COMPARED] if _has_comparison(result) else HEADER


def table_rows(result: dict) -> list[list[str]]:
    compared = _has_comparison(result)
    return [[label(method)] + [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS]
            + ([_compared(row)] if compared else []) for method, row in result["methods"].items()]


def format_table(result: dict) -> str:
    return plain_table(_header(result), table_rows(result))


def print_table(result: dict, title: str) -> None:
    """Print the table with rich when it is installed, plain text otherwise; then what was unavailable."""
    if has_rich():
        stdout_console(150).print(rich_table(title, _header(result), table_rows(result)))
    else:
        print(title)
        print(format_table(result))
    for key, reason in result["unavailable"].items():
        print(f"{key}: unavailable ({reason})")
    for key, value in result["checks"].items():
        print(f"{key}: {value:.3f}")
