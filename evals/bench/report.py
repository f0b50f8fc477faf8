"""``decoding-bench``'s terminal report, from the JSON form of its results (:meth:`Result.to_dict`, or a loaded
``--json`` file): a table per mode, the greedy checks, the per-step split (``--step-split``), acceptance by
category and the best draft lengths."""

from __future__ import annotations

import math
import sys

from decoding.evals.common.console import has_rich, plain_table, rich_table, stdout_console, table_width

__all__ = ["COLUMNS", "NOT_MEASURABLE", "SPLIT_COLUMNS", "format_split", "format_table", "head_lines", "print_checks",
           "print_report", "print_table", "summary_line", "title"]

# (header, cell key, format)
COLUMNS = [("batch", "batch_size", "{}"), ("method", "name", "{}"), ("tok/s", "tokens_per_s", "{:.1f}"),
           ("speedup", "speedup", "{:.2f}x"), ("decode", "decode_speedup", "{:.2f}x"),
           ("vs static", "speedup_vs_static", "{:.2f}x"), ("vs fast", "speedup_vs_fast", "{:.2f}x"),
           ("acc", "acceptance_rate", "{:.3f}"),
           ("alpha", "alpha", "{:.3f}"), ("tau", "mean_accepted_length", "{:.2f}"), ("c", "c", "{:.3f}"),
           ("v", "v", "{:.2f}"), ("ceiling", "ceiling", "{:.2f}x"), ("eff", "efficiency", "{:.2f}"),
           ("= target", "matches_target", "{}"), ("per-position acceptance", "per_position_acceptance", "{}")]

LEFT = ("method", "per-position acceptance")
# The --step-split table: (header, key of the cell's step_split, format); milliseconds and counts per step.
SPLIT_COLUMNS = [("steps", "steps", "{:.0f}"), ("ms/step", "call_ms", "{:.3f}"), ("draft", "draft_ms", "{:.3f}"),
                 ("target", "target_ms", "{:.3f}"), ("verify", "verify_ms", "{:.3f}"), ("other", "other_ms", "{:.3f}"),
                 ("reads/step", "host_reads", "{:.2f}"), ("ops/step", "ops", "{:.0f}"),
                 ("steady reads", "steady_host_reads", "{:.2f}"), ("steady ops", "steady_ops", "{:.0f}")]


def _format(cell: dict, key: str, fmt: str) -> str:
    value = cell.get(key)
    if key == "matches_target":
        if cell.get("mode", "greedy") != "greedy" or cell.get("method") == "target":
            return "-"
        if cell.get("lossy"):
            return f"lossy ({cell['rows_matching_target']})"
        return ("yes" if value else "NO") + f" ({cell['rows_matching_target']})"
    if value is None:
        return "-"
    if key == "per_position_acceptance":
        return " ".join(f"{x:.2f}" for x in value) if value else "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def _columns(cells: list[dict]) -> list[tuple[str, str, str]]:
    columns = COLUMNS
    if all(c.get("mode", "greedy") != "greedy" for c in cells):
        columns = [col for col in columns if col[1] != "matches_target"]  # sampled outputs are not compared
    if all(c.get("speedup_vs_static") is None for c in cells):
        columns = [col for col in columns if col[1] != "speedup_vs_static"]  # no static-target baseline ran
    if all(c.get("speedup_vs_fast") is None for c in cells):
        columns = [col for col in columns if col[1] != "speedup_vs_fast"]  # no fast-target baseline ran
    return columns


def _rows(cells: list[dict], columns) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and the indexes of left-aligned columns."""
    header = [name for name, _, _ in columns]
    return header, [[_format(c, k, f) for _, k, f in columns] for c in cells], \
        [i for i, name in enumerate(header) if name in LEFT]


def format_table(cells: list[dict]) -> str:
    """The cells as a plain-text table."""
    header, rows, left = _rows(cells, _columns(cells))
    return plain_table(header, rows, left, rule=True)


def _rich(cells: list[dict], columns, title: str):
    from rich import box

    header, rows, left = _rows(cells, columns)
    sections = [i for i in range(1, len(cells)) if cells[i]["batch_size"] != cells[i - 1]["batch_size"]]
    styles = ["bold" if c.get("best") else None for c in cells]
    return rich_table(title, header, rows, left, no_wrap=True, sections=sections, styles=styles,
                      title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)


def print_table(cells: list[dict], title: str, file=None) -> None:
    """Print the table with rich when it is installed (and ``file`` is stdout), plain text otherwise."""
    file = file if file is not None else sys.stdout
    if not has_rich() or file is not sys.stdout:
        print(title, file=file)
        print(format_table(cells), file=file)
        return
    console = stdout_console(200)  # not a terminal: no squeezing
    columns = _columns(cells)
    table = _rich(cells, columns, title)
    if table_width(console, table) > console.width:  # too wide for this terminal: per-position acceptance is in the JSON
        table = _rich(cells, [c for c in columns if c[1] != "per_position_acceptance"], title)
    console.width = max(console.width, table_width(console, table))  # never squeeze numbers into ellipses
    console.print(table)


def print_checks(checks: list[dict], file=None) -> None:
    """One line per greedy cell: does its output equal the target's own greedy output? (For a lossy method, how
    many rows do: its match rate, not a failure.)"""
    for check in checks:
        if check.get("lossy"):
            print(f"lossy: batch {check['batch_size']}, {check['name']}: greedy output equal to the target's on "
                  f"{check['rows_matching_target']} rows (a lossy method: not checked)", file=file)
            continue
        verdict = "equal" if check["matches_target"] else "DIFFERENT"
        extra = ""
        if not check["matches_target"] and check.get("mean_agreeing_prefix") is not None:
            extra = f", differing rows agree on their first {check['mean_agreeing_prefix']:.1f} new tokens on average"
        print(f"check: batch {check['batch_size']}, {check['name']}: greedy output {verdict} to the target's "
              f"({check['rows_matching_target']} rows{extra})", file=file)


def title(result: dict, what: str) -> str:
    """A table's title: ``what``, then the pair, the run's size and the device."""
    meta = result["meta"]
    processes = f", {meta['num_processes']} processes" if meta["num_processes"] > 1 else ""
    args = meta["arguments"]
    draft = "draft head" if meta.get("draft_head") else "draft"
    return (f"{what}: {meta['target']} ({meta['target_parameters'] / 1e6:.1f}M target, "
            f"{meta['draft_parameters'] / 1e6:.1f}M {draft}, {meta['dtype']}), {args['max_new_tokens']} new tokens, "
            f"{len(result['prompts'])} prompts, {meta['device_name']}{processes}")


def print_report(result: dict) -> None:
    """The whole report: per mode a table (and for greedy the checks), acceptance by category, the best cells."""
    cells = result["cells"]
    for line in head_lines(result):
        print(line)
    for mode in dict.fromkeys(c["mode"] for c in cells):
        what = "greedy" if mode == "greedy" else f"sampling, temperature {result['meta']['arguments']['temperature']}"
        print_table([c for c in cells if c["mode"] == mode], title(result, what))
        if mode == "greedy":
            print_checks([c for c in result["checks"] + result.get("lossy_checks", []) if c["mode"] == mode])
        split = format_split([c for c in cells if c["mode"] == mode])
        if split:
            print(f"\nper-step split, {what} (untimed calls after the rounds: a profiled twin of each strategy, "
                  "then each method under an operation counter; milliseconds and counts per step, the whole call's "
                  "ms/step with its prompt encoding; steady: per step beyond a call's fixed reads and ops; the "
                  "target alone: per token)")
            print(split)
        print()
    categories = category_lines(cells)
    if categories:
        print("\n".join(categories))
        print()
    for summary in result["summary"]:
        print(summary_line(summary))


def head_lines(result: dict) -> list[str]:
    """With a draft head (``--head``): what drafts, what its ``c`` is, and the methods left out (``notes``);
    nothing otherwise."""
    meta = result["meta"]
    lines = []
    if meta.get("draft_head"):
        where = "" if meta["draft_head"] in meta["draft"] else f" ({meta['draft_head']})"
        lines.append(f"draft: {meta['draft']}{where}, an EAGLE-3 head reading the target's hidden states, in every "
                     "library method")
        costs = ", ".join(f"batch {b}: " + " ".join(f"g={g} {_figure(c, '{:.3f}')}" for g, c in
                                                     cost.get("c_per_g", {}).items())
                          for b, cost in result.get("costs", {}).items())
        lines.append("c of the head: its drafting seconds per drafted position in profiled greedy calls (the reading "
                     "of the prompt, its prefill, left out) over one cached target forward of one token; by g, "
                     f"{costs}")
    lines += [f"note: {note}" for note in result.get("notes", [])]
    return lines + [""] if lines else []


def format_split(cells: list[dict]) -> str:
    """The ``--step-split`` figures of the cells that have them as a plain table ("" when none has)."""
    cells = [c for c in cells if c.get("step_split")]
    if not cells:
        return ""
    header = ["batch", "method"] + [name for name, _, _ in SPLIT_COLUMNS]
    rows = [[str(c["batch_size"]), c["name"]] + [_split_figure(c["step_split"].get(key), fmt)
                                                 for _, key, fmt in SPLIT_COLUMNS] for c in cells]
    return plain_table(header, rows, (1,), rule=True)


def _split_figure(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


NOT_MEASURABLE = "not measurable"


def _figure(value, fmt: str = "{:.2f}x") -> str:
    """A figure of the summary, or "not measurable" where there is none or it is NaN (as the table's ``-``: timing
    noise left no time to divide by, e.g. no decoding time after the prompt encoding)."""
    if value is None or not math.isfinite(value):
        return NOT_MEASURABLE
    return fmt.format(value)


def summary_line(s: dict) -> str:
    """The best speculative cell of one mode and batch size, its ceiling and what else ran there."""
    assisted = "" if s["assisted_speedup"] is None else \
        f"; assistant_model= at g={s['best_draft_length']}: {_figure(s['assisted_speedup'])}"
    prefill = "" if s["ceiling_with_prefill"] is None else f" ({_figure(s['ceiling_with_prefill'])} counting prefill)"
    whole = "" if s.get("efficiency_with_prefill") is None else \
        f" ({_figure(s['efficiency_with_prefill'], '{:.2f}')} counting prefill)"
    overhead = "" if s["target_forwards_per_token"] is None else \
        f"; target alone: {_figure(s['target_forwards_per_token'], '{:.2f}')} forwards/token"
    if s.get("static_target_speedup") is not None:
        overhead += f"; over the static target: {_figure(s['static_target_speedup'])}"
    if s.get("fast_target_speedup") is not None:
        overhead += f"; over the fast target: {_figure(s['fast_target_speedup'])}"
    return (f"best {s['mode']}, batch {s['batch_size']}: speculative g={s['best_draft_length']} "
            f"{_figure(s['speedup'])} (decoding {_figure(s['decode_speedup'])}); ceiling {_figure(s['ceiling'])}"
            f"{prefill}, efficiency {_figure(s['efficiency'], '{:.2f}')}{whole}, alpha {_figure(s['alpha'], '{:.2f}')}"
            f"{assisted}{overhead}")


def category_lines(cells: list[dict]) -> list[str]:
    """Mean accepted length per prompt category (batch 1, speculative and the variants' strategies), one line per
    category."""
    spec = [c for c in cells if c.get("per_category")]
    if not spec:
        return []
    categories = list(dict.fromkeys(k for c in spec for k in c["per_category"]))
    head = [f"{c['mode']} g={c['num_draft_tokens']}" if c["method"] == "speculative" else f"{c['mode']} {c['name']}"
            for c in spec]
    width = max(len(c) for c in categories + ["category"])
    lines = ["mean accepted length (tau) by category, batch 1: " + ", ".join(head)]
    for category in categories:
        values = [c["per_category"].get(category, {}).get("mean_accepted_length") for c in spec]
        lines.append(f"  {category.ljust(width)}  " + "  ".join(
            (f"{v:.2f}" if v is not None else "-").rjust(len(h)) for v, h in zip(values, head)))
    return lines
