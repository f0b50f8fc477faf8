"""``decoding-bench``'s cells: the raw measurements of every process (:func:`decoding.evals.bench.grid.
measure_share`) combined into one :class:`~decoding.evals.bench.records.Cell` per mode, batch size and method,
the cost ratios per batch size, the greedy checks, and the summary of the best draft length."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from decoding.evals.bench.grid import RawCost, RawMethod, RawShare
from decoding.evals.bench.records import Agreement, Cell, Check, Cost, DraftFigures, Summary
from decoding.evals.bench.step_split import combine_splits
from decoding.evals.common.acceptance import Acceptance, merge_stats, merge_totals
from decoding.evals.common.measure import ceiling, efficiency, prefill_ceiling

__all__ = ["combine", "combine_costs", "summarize"]

ASSISTED_SOURCE = "speculative strategy at the same mode, batch and g"
HF_LOOKUP_SOURCE = "lookup strategy at the same mode, batch and g"
# Methods without counters of their own, and whose acceptance they borrow (kind at the same g).
BORROWED = {"assisted": ("speculative", ASSISTED_SOURCE), "hf-lookup": ("lookup", HF_LOOKUP_SOURCE)}
CATEGORY_KEYS = ("acceptance_rate", "alpha", "mean_accepted_length", "steps")


def combine(shares: list[RawShare], max_new_tokens: int | None = None) -> tuple[list[Cell], dict[int, Cost],
                                                                                   list[Check]]:
    """Cells, costs and greedy checks of the results of every process.

    Per round, a method's rate is the new tokens of all processes over the slowest process's seconds (the
    processes start every round together); its tokens/s is the median over rounds. ``c`` and ``v`` are means
    over processes; acceptance counters are summed. ``max_new_tokens`` adds the prefill-aware figures.
    """
    costs = combine_costs(shares)
    cells = [cell for index in range(len(shares[0]["blocks"]))
             for cell in _block_cells(shares, index, costs, max_new_tokens)]
    _mark_best(cells)
    checks = [Check.of(cell) for cell in cells if cell.mode == "greedy" and cell.method != "target"]  # lossy flagged
    return cells, costs, checks


def combine_costs(shares: list[RawShare]) -> dict[int, Cost]:
    """Per batch size, the cost ratios averaged over processes."""
    return {batch_size: _mean_cost([s["costs"][batch_size] for s in shares]) for batch_size in shares[0]["costs"]}


def _mean_cost(entries: list[RawCost]) -> Cost:
    gs = list(entries[0]["v"])
    generation = [e.get("generation") or {"c": None, "v": {}} for e in entries]
    return Cost(
        c=statistics.mean(e["c"] for e in entries),
        v={g: statistics.mean(e["v"][g] for e in entries) for g in gs},
        c_generation=_mean_measured(x["c"] for x in generation),
        v_generation={g: _mean_measured(x["v"].get(g) for x in generation) for g in gs},
        seconds={k: _mean_measured(e["seconds"].get(k) for e in entries) for k in entries[0]["seconds"]},
        context_length=round(statistics.mean(e["context_length"] for e in entries)),
        prompt_length=round(statistics.mean(e["prompt_length"] for e in entries)),
        prefill_target=statistics.mean(e["prefill_target"] for e in entries),
        prefill_draft=statistics.mean(e["prefill_draft"] for e in entries),
        per_process=[{"c": e["c"], "v": e["v"]} for e in entries] if len(entries) > 1 else None,
        # A draft head's c at each g (evals/bench/head_costs.py); absent for a draft model.
        c_per_g={g: statistics.mean(e["c_per_g"][g] for e in entries) for g in gs}
        if "c_per_g" in entries[0] else None,
        c_generation_per_g={g: _mean_measured(x.get("c_per_g", {}).get(g) for x in generation) for g in gs}
        if "c_per_g" in entries[0] else None,
    )


def _mean_measured(values) -> float | None:
    """The mean of the values that were measured (not None); None if none was."""
    values = [x for x in values if x is not None]
    return statistics.mean(values) if values else None


@dataclass
class _Block:
    """What every cell of one (mode, batch size) block is computed against."""

    mode: str
    batch_size: int
    processes: int
    cost: Cost
    base: dict  # the target's measured figures
    by_kind: dict  # (kind, g) -> a method's measured figures (assisted and hf-lookup cells borrow acceptance)
    max_new_tokens: int | None

    @property
    def static(self) -> dict | None:
        """The ``static-target`` baseline's measured figures, when it ran in this block."""
        return self.by_kind.get(("static-target", None))

    @property
    def fast(self) -> dict | None:
        """The ``fast-target`` baseline's measured figures (the target alone in the CPU layout), when it ran."""
        return self.by_kind.get(("fast-target", None))


def _block_cells(shares: list[RawShare], index: int, costs: dict[int, Cost], max_new_tokens: int | None) -> list[Cell]:
    """The cells of block ``index``: its methods measured over all processes, the ``prefill`` method's time and
    first tokens taken off the others for their decoding rates (it gets no cell itself)."""
    block = shares[0]["blocks"][index]
    measured = [_measured([s["blocks"][index]["methods"][m] for s in shares]) for m in range(len(block["methods"]))]
    prefill = next((m for m in measured if m["kind"] == "prefill"), None)
    measured = [m for m in measured if m["kind"] != "prefill"]
    for m in measured:
        m["decode_tokens_per_s"] = _decode_rate(m, prefill)
    context = _Block(block["mode"], block["batch_size"], len(shares), costs[block["batch_size"]], measured[0],
                     {(m["kind"], m["g"]): m for m in measured}, max_new_tokens)
    return [_cell(m, context) for m in measured]


def _measured(parts: list[RawMethod]) -> dict:
    """One method's figures over all processes."""
    rounds = len(parts[0]["seconds"])
    tokens = [sum(p["tokens"][r] for p in parts) for r in range(rounds)]
    seconds = [max(p["seconds"][r] for p in parts) for r in range(rounds)]
    rates = [t / s if s > 0 else float("nan") for t, s in zip(tokens, seconds)]
    per_category: dict = {}
    for part in parts:
        for category, totals in part["per_category"].items():
            merge_stats(per_category.setdefault(category, {}), totals)
    return {"name": parts[0]["name"], "kind": parts[0]["kind"], "g": parts[0]["g"],
            "tokens_per_s": statistics.median(rates), "rounds": rates, "tokens": statistics.median(tokens),
            "tokens_per_round": tokens, "seconds_per_round": seconds,
            "stats": merge_totals(p["stats"] for p in parts), "per_category": per_category,
            "rows": [row for p in parts for row in p["rows"]], "lossy": parts[0].get("lossy", False),
            "draft_free": parts[0].get("draft_free", False), "split": combine_splits([p.get("split") for p in parts])}


def _decode_rate(method: dict, prefill: dict | None) -> float:
    """Median over rounds of the new tokens after each row's first over the seconds after the prompt encoding:
    the time and the one token per row of the round's ``prefill`` calls taken off. NaN without a prefill
    measurement, or where noise leaves no time."""
    if prefill is None:
        return float("nan")
    rates = []
    for tokens, seconds, rows, encoding in zip(method["tokens_per_round"], method["seconds_per_round"],
                                               prefill["tokens_per_round"], prefill["seconds_per_round"]):
        rates.append((tokens - rows) / (seconds - encoding) if seconds > encoding else float("nan"))
    return statistics.median(rates)


def _ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def _cell(m: dict, block: _Block) -> Cell:
    base = block.base
    cell = Cell(block.mode, block.batch_size, m["kind"], m["name"], m["g"], m["tokens_per_s"], m["rounds"],
                m["tokens"], speedup=_ratio(m["tokens_per_s"], base["tokens_per_s"]),
                decode_tokens_per_s=m["decode_tokens_per_s"],
                decode_speedup=_ratio(m["decode_tokens_per_s"], base["decode_tokens_per_s"]),
                agreement=Agreement.of(m["rows"], base["rows"]) if block.mode == "greedy" else Agreement.sampled(),
                lossy=m["lossy"], step_split=m["split"])
    if block.static is not None:
        cell.speedup_vs_static = _ratio(m["tokens_per_s"], block.static["tokens_per_s"])
        cell.decode_speedup_vs_static = _ratio(m["decode_tokens_per_s"], block.static["decode_tokens_per_s"])
    if block.fast is not None:
        cell.speedup_vs_fast = _ratio(m["tokens_per_s"], block.fast["tokens_per_s"])
        cell.decode_speedup_vs_fast = _ratio(m["decode_tokens_per_s"], block.fast["decode_tokens_per_s"])
    if m["kind"] == "target":
        cell.forwards_per_token = _forwards_per_token(m, block)
    else:
        cell.draft = _draft_figures(m, cell, block)
    return cell


def _forwards_per_token(m: dict, block: _Block) -> float | None:
    """What one generated token costs the target alone, in cached target forwards, prompt encoding left out:
    above 1 by the per-step work of generate's loop, which the ceiling does not count."""
    if block.max_new_tokens is None or not m["tokens_per_s"] > 0:
        return None
    seconds_per_step = block.batch_size * block.processes / m["tokens_per_s"]
    return seconds_per_step / block.cost.seconds["target_1"] - block.cost.prefill_target / block.max_new_tokens


def _acceptance_source(m: dict, block: _Block) -> tuple[dict | None, str | None]:
    """The counters a cell's acceptance comes from: its own strategy's, else those of the method it borrows from
    (:data:`BORROWED`), else none (the target, hf-dynamic, a borrowed method that did not run)."""
    if m["stats"].get("steps"):
        return m["stats"], None
    kind, source = BORROWED.get(m["kind"], (None, None))
    lender = block.by_kind.get((kind, m["g"]))
    return (lender["stats"], source) if lender is not None else (None, None)


def _draft_figures(m: dict, cell: Cell, block: _Block) -> DraftFigures | None:
    """Acceptance, cost ratios and ceilings of a draft method: ``c`` is 0 for draft-free methods (prompt lookup);
    a method without a fixed ``g`` (adaptive) has its acceptance at its longest draft and no ceiling."""
    totals, source = _acceptance_source(m, block)
    if totals is None:
        return None
    cost = block.cost
    g = m["g"] if m["g"] is not None else len(totals.get("position_steps", []))  # adaptive: its longest draft
    c, c_generation = (0.0, 0.0) if m["draft_free"] else cost.c_at(m["g"])  # a draft head's c depends on g
    acceptance = Acceptance.from_totals(totals, g)
    if m["g"] is None or g not in cost.v:
        figures = DraftFigures(acceptance, c, None, None, None, None, c_generation, None)
    else:
        figures = _ceilings(acceptance, g, c, c_generation, cell, block, m["draft_free"])
    if source is not None:
        figures.acceptance_source = source
    elif m["per_category"]:
        figures.per_category = {category: _category_figures(totals, g)
                                for category, totals in m["per_category"].items()}
    return figures


def _ceilings(acceptance: Acceptance, g: int, c: float, c_generation: float | None, cell: Cell, block: _Block,
              draft_free: bool) -> DraftFigures:
    """The figures of a method drafting ``g`` tokens a step: its ceilings at ``c`` and the measured ``v``."""
    a, cost = acceptance.alpha, block.cost
    ceil = ceiling(a, g, c, cost.v[g])
    figures = DraftFigures(acceptance, c, cost.v[g], ceil, ceiling(a, g, c, 1.0),
                           efficiency(cell.decode_speedup, ceil), c_generation, cost.v_generation[g])
    if c_generation is not None and cost.v_generation[g] is not None:
        figures.ceiling_generation = ceiling(a, g, c_generation, cost.v_generation[g])
    if block.max_new_tokens is not None:
        prefill_draft = 0.0 if draft_free else cost.prefill_draft
        figures.ceiling_with_prefill = prefill_ceiling(a, g, c, cost.v[g], cost.prefill_target, prefill_draft,
                                                       block.max_new_tokens)
        figures.efficiency_with_prefill = efficiency(cell.speedup, figures.ceiling_with_prefill)
    return figures


def _category_figures(totals: dict, g: int) -> dict:
    return {k: v for k, v in Acceptance.from_totals(totals, g).to_dict().items() if k in CATEGORY_KEYS}


def _mark_best(cells: list[Cell]) -> None:
    """Mark the fastest speculative cell of every mode and batch size."""
    for mode in dict.fromkeys(c.mode for c in cells):
        for batch_size in dict.fromkeys(c.batch_size for c in cells):
            spec = [c for c in cells if c.mode == mode and c.batch_size == batch_size and c.method == "speculative"]
            if spec:
                max(spec, key=lambda c: c.speedup).best = True


def summarize(cells: list[Cell]) -> list[Summary]:
    """One line per mode and batch size: the best speculative cell, with the assisted speedup at its ``g`` and
    the target's forwards per token."""
    out = []
    for cell in (c for c in cells if c.best):
        same = [c for c in cells if c.mode == cell.mode and c.batch_size == cell.batch_size]
        assisted = next((c for c in same if c.method == "assisted" and c.num_draft_tokens == cell.num_draft_tokens),
                        None)
        target = next(c for c in same if c.method == "target")
        out.append(Summary(cell.mode, cell.batch_size, cell.num_draft_tokens, cell.speedup, cell.decode_speedup,
                           cell.draft.ceiling, cell.draft.efficiency, cell.draft.ceiling_with_prefill,
                           cell.draft.acceptance.alpha, assisted.speedup if assisted else None,
                           target.forwards_per_token, cell.speedup_vs_static,
                           cell.draft.efficiency_with_prefill, cell.speedup_vs_fast))
    return out
