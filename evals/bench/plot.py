"""``decoding-bench --plot``: decoding speedup against draft length, with its ceiling, as a PNG (matplotlib)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

__all__ = ["PLOT_REQUIREMENT", "check_plotting", "plot_speedup", "pyplot", "save_figure"]

PLOT_REQUIREMENT = "--plot needs matplotlib: pip install 'pairdecode[eval]' (or pip install matplotlib)"


def check_plotting() -> None:
    """Raise ``ImportError`` with an install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(PLOT_REQUIREMENT) from None


def pyplot():
    """matplotlib's ``pyplot`` on the file-only Agg backend (``ImportError`` with an install hint without it)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Lay out ``figure``, write it as a PNG at ``path`` (folders made) and close it."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    import matplotlib.pyplot as plt  # made by pyplot(), which drew the figure

    plt.close(figure)
    return path


def _speedup(cell: dict) -> float:
    value = cell.get("decode_speedup")
    return cell["speedup"] if value is None or value != value else value


def _curves(cells: list[dict], mode: str, batch: int, method: str) -> list[dict]:
    return sorted((c for c in cells if c.get("mode", "greedy") == mode and c["batch_size"] == batch
                   and c["method"] == method), key=lambda c: c["num_draft_tokens"])


VARIANT_MARKERS = "s^v<>Dph*"


def _variants(axis, cells: list[dict], mode: str, batch: int, color, g_range: list[int]) -> float:
    """The ``--variants`` methods of one batch size: a line per method with a draft length (its label, the name
    less " g=N"), a horizontal segment over the drawn draft lengths for one without (adaptive, hf-dynamic)."""
    top = 0.0
    same = [c for c in cells if c.get("mode", "greedy") == mode and c["batch_size"] == batch
            and c["method"] not in ("target", "speculative", "assisted")]
    labels = list(dict.fromkeys(c["name"].split(" g=")[0] for c in same))
    for i, label in enumerate(labels):
        line = sorted((c for c in same if c["name"].split(" g=")[0] == label),
                      key=lambda c: c["num_draft_tokens"] or 0)
        ys = [_speedup(c) for c in line]
        if line[0]["num_draft_tokens"] is None:
            axis.plot([min(g_range), max(g_range)], ys * 2, "-.", color=color, alpha=0.7, linewidth=1)
            axis.annotate(f"{label} b{batch}", (max(g_range), ys[0]), fontsize=6, color=color)
        else:
            axis.plot([c["num_draft_tokens"] for c in line], ys, VARIANT_MARKERS[i % len(VARIANT_MARKERS)] + ":",
                      color=color, alpha=0.8, markersize=5, label=f"batch {batch}, {label}")
        top = max(top, *ys)
    return top


def _panel(axis, cells: list[dict], mode: str, colors: list) -> float:
    """One mode's lines on ``axis``; returns the highest value drawn."""
    top = 1.0
    for i, batch in enumerate(sorted({c["batch_size"] for c in cells})):
        color = colors[i % len(colors)]
        spec = _curves(cells, mode, batch, "speculative")
        if not spec:
            continue
        g = [c["num_draft_tokens"] for c in spec]
        axis.plot(g, [_speedup(c) for c in spec], "o-", color=color, label=f"batch {batch}")
        axis.plot(g, [c["ceiling"] for c in spec], "--", color=color, alpha=0.8, label=f"batch {batch} ceiling")
        top = max(top, *(_speedup(c) for c in spec), *(c["ceiling"] for c in spec))
        assisted = _curves(cells, mode, batch, "assisted")
        if assisted:
            axis.plot([c["num_draft_tokens"] for c in assisted], [_speedup(c) for c in assisted], "x:",
                      color=color, markersize=8, label=f"batch {batch}, transformers assistant_model=")
            top = max(top, *(_speedup(c) for c in assisted))
        top = max(top, _variants(axis, cells, mode, batch, color, g))
    axis.axhline(1.0, color="grey", linewidth=1, label="target alone")
    axis.set_title(mode)
    axis.set_xlabel("draft length g")
    axis.grid(alpha=0.3)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(fontsize=6 if len(axis.get_lines()) > 8 else 8)
    return top


def plot_speedup(cells: list[dict], path: str | os.PathLike, title: str = "") -> Path:
    """PNG of decoding speedup (prompt encoding excluded, the speedup the ceiling bounds) against draft length:
    one solid line per (mode, batch size) for this library's strategy, its ceiling dashed in the same colour,
    transformers' ``assistant_model=`` as crosses, ``--variants`` dotted (dash-dotted where without a draft
    length), 1x as the baseline; one panel per mode. Cells without a
    decoding speedup (older results) fall back to the whole-call speedup."""
    plt = pyplot()
    modes = list(dict.fromkeys(c.get("mode", "greedy") for c in cells))
    figure, axes = plt.subplots(1, len(modes), figsize=(6.2 * len(modes), 4.6), squeeze=False, sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    top = max(_panel(axis, cells, mode, colors) for axis, mode in zip(axes[0], modes))
    axes[0][0].set_ylabel("decoding speedup over target alone")
    axes[0][0].set_ylim(0, top * 1.1)
    if title:
        figure.suptitle(textwrap.fill(title, 60 * len(modes)), fontsize=9)
    return save_figure(figure, path)
