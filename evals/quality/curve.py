"""Quality against speed of speculative cascades: joins ``decoding-eval``'s JSON (the quality of its ``sample``,
``speculative_sample`` and ``cascade:RULE:THRESHOLD`` rows) with ``decoding-bench``'s (the speed of the same
methods in sample mode, at the same temperature and draft length) into one table and one plot::

    python -m decoding.evals.quality.curve --eval quality.json --bench bench.json --plot curve.png --markdown curve.md

Quality is the expert's NLL per token against the target's own samples (``nll_vs_sample``, one standard error);
speed is ``decoding-bench``'s speedup over the target alone. Several ``--eval`` files join when their ``sample``
rows are the very same texts (same prompts, seed, batch size); a cascade that ``decoding-bench`` did not time is
left off the curve and named on stderr, and a file pair without any common cascade is an error."""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from decoding.evals.bench.plot import check_plotting, pyplot, save_figure
from decoding.evals.quality.generate import is_cascade, label

__all__ = ["Point", "join", "main", "markdown", "merged_rows", "plot_curve"]


@dataclass(frozen=True)
class Point:
    """One method on the curve."""

    method: str  # decoding-eval's name: "sample", "speculative_sample", "cascade:chow:0.3"
    speedup: float  # over the target alone, decoding-bench, sample mode
    nll: float  # expert NLL per token minus the target samples' (0 for the target itself)
    se: float  # its standard error over prompts (0 for the target)
    tau: float | None  # mean accepted length (tokens per verification step); None for the target

    @property
    def within_noise(self) -> bool:
        """Within two standard errors of the target's own samples (False where either is unknown)."""
        known = all(isinstance(x, (int, float)) and math.isfinite(x) for x in (self.nll, self.se))
        return known and abs(self.nll) <= 2 * self.se


def _bench_name(method: str, g: int) -> str:
    if method == "sample":
        return "target"
    return f"{'speculative' if method == 'speculative_sample' else label(method)} g={g}"


def _check_settings(quality: dict, bench: dict) -> None:
    q_temperature = quality["config"].get("temperature")
    b_temperature = bench["meta"]["arguments"].get("temperature")
    if q_temperature != b_temperature:
        raise ValueError(f"the two files sampled at different temperatures: decoding-eval {q_temperature}, "
                         f"decoding-bench {b_temperature}; run both with the same --temperature")
    if "sample" not in bench["meta"]["arguments"].get("modes", []):
        raise ValueError("the decoding-bench file has no sample mode; run it with --modes sample")


def merged_rows(qualities: list[dict]) -> dict:
    """The rows of several ``decoding-eval`` results whose ``sample`` rows are the same texts (first file first)."""
    if any("sample" not in q["methods"] for q in qualities):
        raise ValueError("a decoding-eval file has no 'sample' row: add sample to its --methods")
    baseline = qualities[0]["methods"]["sample"]["per_prompt_perplexity"]
    rows: dict = {}
    for quality in qualities:
        if quality["methods"]["sample"]["per_prompt_perplexity"] != baseline:
            raise ValueError("the decoding-eval files sampled different texts for 'sample' (other prompts, seed, "
                             "temperature or batch size): their differences are not comparable")
        for key in ("temperature", "num_draft_tokens"):
            if quality["config"].get(key) != qualities[0]["config"].get(key):
                raise ValueError(f"the decoding-eval files differ in {key}")
        rows.update({m: r for m, r in quality["methods"].items() if m not in rows})
    return rows


def join(qualities: dict | list[dict], bench: dict, batch_size: int, log=None) -> list[Point]:
    """The points of every sampled method of ``qualities`` (``decoding-eval`` results), timed at ``batch_size`` in
    ``bench`` (a ``decoding-bench`` result), in the files' order; ``log`` hears which cascades were not timed."""
    qualities = [qualities] if isinstance(qualities, dict) else qualities
    for quality in qualities:
        _check_settings(quality, bench)
    g = qualities[0]["config"]["num_draft_tokens"]
    cells = {c["name"]: c for c in bench["cells"] if c["mode"] == "sample" and c["batch_size"] == batch_size}
    points, untimed = [], []
    for method, row in merged_rows(qualities).items():
        if method not in ("sample", "speculative_sample") and not is_cascade(method):
            continue
        name = _bench_name(method, g)
        if name not in cells:
            if is_cascade(method):
                untimed.append(method)
                continue
            raise ValueError(f"decoding-bench has no {name!r} cell at batch size {batch_size} in sample mode "
                             f"(it has: {', '.join(sorted(cells)) or 'none'})")
        cell = cells[name]
        nll, se = (0.0, 0.0) if method == "sample" else (row["nll_vs_sample"], row["nll_vs_sample_se"])
        points.append(Point(method, cell["speedup"], nll, se, cell.get("mean_accepted_length")))
    if not any(is_cascade(p.method) for p in points):
        raise ValueError(f"decoding-bench timed none of the cascades at batch size {batch_size} in sample mode "
                         f"(it has: {', '.join(sorted(cells)) or 'none'})")
    if untimed and log is not None:
        log(f"not timed by decoding-bench at batch size {batch_size}, left off the curve: {', '.join(untimed)}")
    return points


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown(points: list[Point]) -> str:
    """A Markdown table, one row per point."""
    lines = ["| method | speedup | tau | expert NLL vs target samples (± 1 s.e.) | within 2 s.e. |",
             "|---|---|---|---|---|"]
    for p in points:
        name = "target alone" if p.method == "sample" else label(p.method)
        nll = "0 (reference)" if p.method == "sample" else f"{_fmt(p.nll, '+.3f')} ± {_fmt(p.se, '.3f')}"
        within = "-" if p.method == "sample" else ("yes" if p.within_noise else "no")
        lines.append(f"| {name} | {p.speedup:.2f}x | {_fmt(p.tau, '.2f')} | {nll} | {within} |")
    return "\n".join(lines) + "\n"


def plot_curve(points: list[Point], path: str | Path, title: str = "") -> Path:
    """PNG: speedup (x) against the NLL difference (y, with 2-s.e. bars), one marker per rule, thresholds
    annotated; the target alone at (1, 0)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.6))
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.method.split(":")[1] if is_cascade(p.method) else p.method, []).append(p)
    for (group, members), marker in zip(groups.items(), "o^sDv<>"):
        members = sorted(members, key=lambda p: p.speedup)
        name = {"sample": "target alone", "speculative_sample": "speculative (lossless)"}.get(group, f"cascade {group}")
        axis.errorbar([p.speedup for p in members], [p.nll for p in members], yerr=[2 * p.se for p in members],
                      fmt=marker + ("-" if is_cascade(members[0].method) else ""), capsize=3, label=name)
        for p in members:
            if is_cascade(p.method):
                axis.annotate(p.method.split(":")[2], (p.speedup, p.nll), textcoords="offset points", xytext=(4, 4),
                              fontsize=7)
    axis.axhline(0.0, color="grey", linewidth=1)
    axis.set_xlabel("speedup over the target alone (decoding-bench, sample mode)")
    axis.set_ylabel("expert NLL/token minus target samples' (lower is better)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title, fontsize=9)
    return save_figure(figure, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.quality.curve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", type=Path, required=True, action="append",
                        help="decoding-eval --json output (repeat to join runs that share their 'sample' row)")
    parser.add_argument("--bench", type=Path, required=True, help="decoding-bench --json output (sample mode)")
    parser.add_argument("--batch-size", type=int, default=1, help="the decoding-bench batch size to read speed at")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG here (needs matplotlib)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    try:
        if args.plot is not None:
            check_plotting()
        qualities = [json.loads(path.read_text()) for path in args.eval]
        bench = json.loads(args.bench.read_text())
        points = join(qualities, bench, args.batch_size, log=lambda line: print(line, file=sys.stderr))
    except (OSError, ValueError, ImportError) as error:
        print(f"{parser.prog}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyError as error:
        print(f"{parser.prog}: error: no {error} in the files: --eval takes decoding-eval --json files, --bench a "
              "decoding-bench --json file", file=sys.stderr)
        return 2
    table = markdown(points)
    print(table, end="")
    if args.markdown is not None:
        args.markdown.write_text(table)
    if args.plot is not None:
        config = qualities[0]["config"]
        plot_curve(points, args.plot, f"{config.get('pair', '')}, batch {args.batch_size}, "
                                      f"T={config.get('temperature')}, g={config['num_draft_tokens']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
