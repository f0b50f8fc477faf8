"""The held-out acceptance curve of a head's training run, as its card shows it: the table's rows, the paragraph on
held-out sets that changed along the way, and the projection of the tokens each acceptance goal needs."""

from __future__ import annotations

import math

__all__ = ["curve_row", "held_out_changes", "in_vocab", "last_set", "measured", "number", "projection",
           "projection_lines", "whole_positions"]


def number(value) -> str:
    """``1234567`` as ``1,234,567``; floats that are whole as integers."""
    value = float(value)
    return f"{int(value):,}" if value == int(value) else f"{value:,}"


def whole_positions(point: dict) -> bool:
    """Whether a curve point's acceptance counts every position (measured since 2026-12-06, beside the
    in-vocabulary figure); before, ``acceptance`` (or, in resumed runs, ``acceptance_in_vocab``) was its only one."""
    return "acceptance" in point and "acceptance_in_vocab" in point


def in_vocab(point: dict) -> list[float]:
    """A curve point's acceptance over the positions its head could draft (runs before 2026-12-06: its only one)."""
    return point.get("acceptance_in_vocab", point.get("acceptance", []))


def curve_row(point: dict, ttt: int) -> str:
    """One row of the card's curve: every-position figures where measured, dashes before 2026-12-06."""
    whole = whole_positions(point)
    cells = [f"{a:.3f}" for a in point["acceptance"]] + [f"{point['reach'][-1]:.3f}", f"{sum(point['reach']):.3f}",
                                                         f"{point['coverage']:.3f}"] if whole else ["—"] * (ttt + 3)
    return (f"| {point['step']} | {number(point['tokens'])} | {point['minutes']} | "
            f"{number(point.get('positions', 0))} | " + " | ".join(cells) + f" | {in_vocab(point)[0]:.3f} |")


def measured(curve: list[dict]) -> list[dict]:
    """The points the projection reads: those over every position when there are any, else every point; of two
    measured at one step (a head changed before it went on, its vocabulary chosen again), the later."""
    whole = [p for p in curve if whole_positions(p)] or curve
    return [p for p, after in zip(whole, whole[1:] + [None])
            if after is None or "step" not in p or after.get("step") != p["step"]]


def last_set(curve: list[dict]) -> list[dict]:
    """The curve's points measured on its last held-out set (as many positions as the last point)."""
    return [p for p in curve if p.get("positions") == curve[-1].get("positions")] if curve else []


def held_out_changes(curve: list[dict]) -> list[str]:
    """A paragraph when the held-out set changed along the curve (the data grew on resumed runs)."""
    changes = [(p["step"], p.get("positions", 0)) for before, p in zip(curve, curve[1:])
               if p.get("positions") != before.get("positions") and whole_positions(p) == whole_positions(before)]
    counted = next((p["step"] for before, p in zip(curve, curve[1:])
                    if whole_positions(p) and not whole_positions(before)), None)
    lines = []
    if changes:
        grew = "; ".join(f"from step {step} on, {number(positions)} positions" for step, positions in changes)
        lines += [f"The held-out set grew with the data (more prompts, by the same hash), so the points are measured "
                  f"on different sets: {number(curve[0].get('positions', 0))} positions at first; {grew}. The "
                  "projection fits the last set's points only, where they span a doubling of tokens or more."]
    if counted is not None:
        lines += [f"From step {counted} on, held-out positions count every answer position, the undraftable too "
                  "(before: the draftable ones only)."]
    return [" ".join(lines), ""] if lines else []


MIN_SPAN = math.log10(2)  # a line fitted over less than a doubling of tokens says more about noise than trend


def projection(curve: list[dict], goals=(0.6, 0.7)) -> dict | None:
    """A least-squares line of the first position's held-out acceptance against ``log10`` of the tokens trained,
    over the curve's second half (the start is the head leaving its initialisation), or over every point on the
    last held-out set when the set changed along the curve; where those points span less than a doubling of
    tokens, over every point (measured over every position, when some are); and the tokens at which the line
    reaches each goal: ``{"slope_per_10x", "points", "over", "tokens": {goal: tokens or None}}``, ``over`` saying
    which points; None with fewer than two points. A projection, not a promise: such curves bend down as they
    near what the head can learn."""
    curve = measured(curve)
    same = last_set(curve)
    chosen, over = (same, "last set") if len(same) < len(curve) else (curve[len(curve) // 2:], "second half")
    if _span(chosen) < MIN_SPAN and _span(curve) > _span(chosen):
        chosen, over = curve, "every point"
    points = [(math.log10(p["tokens"]), p["acceptance"][0]) for p in chosen if p["tokens"] > 0]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    reach = {goal: (round(10 ** (mean_x + (goal - mean_y) / slope)) if slope > 0 else None) for goal in goals}
    return {"slope_per_10x": slope, "points": len(points), "over": over, "tokens": reach}


def _span(points: list[dict]) -> float:
    """How many decades of tokens trained ``points`` span."""
    logs = [math.log10(p["tokens"]) for p in points if p.get("tokens", 0) > 0]
    return max(logs) - min(logs) if logs else 0.0


def projection_lines(curve: list[dict]) -> list[str]:
    """The card's projection paragraph (nothing when the curve is too short)."""
    fit = projection(curve)
    if fit is None:
        return []
    reach = ", ".join(f"{goal} at about {number(tokens)} tokens" if tokens else f"{goal} never (the line falls)"
                      for goal, tokens in fit["tokens"].items())
    where = {"second half": "the second half of the curve", "last set": "the points on the last held-out set",
             "every point": "every point of the curve"}[fit["over"]]
    if len(measured(curve)) < len(curve):
        where += " measured over every position"
    why = (" The last held-out set's points span less than a doubling of tokens, too narrow a range for a line; the "
           "other sets hold like prompts.") if fit["over"] == "every point" else ""
    return ["", "## Projection", "",
            f"A line through {where} (first-position acceptance against log10 of the tokens "
            f"trained, {fit['points']} points) rises {fit['slope_per_10x']:.3f} per tenfold tokens and reaches {reach}."
            f"{why} Tokens trained count repeats: the line assumes that more of them keep bringing new data, where a "
            "curve over a fixed set of answers flattens as it is read again. A projection, not a promise: such curves "
            "also bend down as they near what one layer can learn."]
