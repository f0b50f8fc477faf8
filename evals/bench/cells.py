"""``decoding-bench``'s cells: the raw measurements of every process
(:func:`decoding.evals.bench_grid.measure_share`) combined into one report cell per mode, batch size and method
(tokens/s, speedup, greedy equality with the target, acceptance, ``c``, ``v``, ceiling and efficiency), and the
summary of the best draft length."""

from __future__ import annotations

import statistics

from decoding.evals.common import measure

__all__ = ["combine", "summarize"]


def combine(shares: list[dict], max_new_tokens: int | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Report cells, costs and greedy checks from the :func:`~decoding.evals.bench_grid.measure_share` results of
    every process.

    Per round, a method's rate is the new tokens of all processes over the slowest process's seconds for that
    method (the processes start every round together); its tokens/s is the median over rounds, and its decoding
    rate the same with the ``prefill`` method's seconds and one token per row taken off each round
    (:func:`_decode_rate`; the ``prefill`` method itself gets no cell). ``c`` and ``v`` are means over
    processes; acceptance counters are summed. With ``max_new_tokens``, draft cells also get
    ``ceiling_with_prefill`` (:func:`decoding.evals.measure.prefill_ceiling`, for that many new tokens per row)
    and target cells ``forwards_per_token``.
    """
    costs = {}
    for batch_size in shares[0]["costs"]:
        entries = [s["costs"][batch_size] for s in shares]
        gs = list(entries[0]["v"])
        isolated = {"c": statistics.mean(e["c"] for e in entries),
                    "v": {g: statistics.mean(e["v"][g] for e in entries) for g in gs}}
        generation = _generation_costs(entries, gs)
        costs[batch_size] = {
            **isolated,  # the ceiling's c and v; the in-generation figures are a diagnostic beside them
            "c_generation": generation["c"], "v_generation": generation["v"],
            "seconds": {k: statistics.mean(e["seconds"][k] for e in entries) for k in entries[0]["seconds"]},
            "context_length": round(statistics.mean(e["context_length"] for e in entries)),
            "prompt_length": round(statistics.mean(e["prompt_length"] for e in entries)),
            "prefill_target": statistics.mean(e["prefill_target"] for e in entries),
            "prefill_draft": statistics.mean(e["prefill_draft"] for e in entries),
        }
        if len(entries) > 1:
            costs[batch_size]["per_process"] = [{"c": e["c"], "v": e["v"]} for e in entries]
    cells, checks = [], []
    for index, block in enumerate(shares[0]["blocks"]):
        mode, batch_size = block["mode"], block["batch_size"]
        per_method = [[s["blocks"][index]["methods"][m] for s in shares] for m in range(len(block["methods"]))]
        measured = [_measured(parts) for parts in per_method]
        prefill = next((m for m in measured if m["kind"] == "prefill"), None)
        measured = [m for m in measured if m["kind"] != "prefill"]
        for m in measured:
            m["decode_tokens_per_s"] = _decode_rate(m, prefill)
        base_rate, base_decode = measured[0]["tokens_per_s"], measured[0]["decode_tokens_per_s"]
        cost = costs[batch_size]
        acceptance = {m["g"]: m for m in measured if m["kind"] == "speculative"}
        for m in measured:
            cell = {"mode": mode, "batch_size": batch_size, "method": m["kind"], "name": m["name"],
                    "num_draft_tokens": m["g"], "tokens_per_s": m["tokens_per_s"],
                    "tokens_per_s_rounds": m["rounds"], "new_tokens_per_round": m["tokens"],
                    "speedup": m["tokens_per_s"] / base_rate if base_rate else float("nan"),
                    "decode_tokens_per_s": m["decode_tokens_per_s"],
                    "decode_speedup": m["decode_tokens_per_s"] / base_decode if base_decode else float("nan")}
            if m["kind"] == "target" and max_new_tokens is not None and m["tokens_per_s"] > 0:
                # What one generated token costs target alone, in cached target forwards, prompt encoding left out:
                # above 1 by the per-step work of generate's loop, which the ceiling does not count.
                seconds_per_step = batch_size * len(shares) / m["tokens_per_s"]
                cell["forwards_per_token"] = (seconds_per_step / cost["seconds"]["target_1"]
                                              - cost["prefill_target"] / max_new_tokens)
            if mode == "greedy":
                cell.update(_equality(m["rows"], measured[0]["rows"]))
            else:
                cell.update({"matches_target": None, "rows_matching_target": "sampled"})
            g = m["g"]
            if g is not None:
                summary = measure.acceptance_summary(acceptance[g]["stats"], g)
                ceil = measure.ceiling(summary["alpha"], g, cost["c"], cost["v"][g])
                cell.update(summary)
                cell.update({"c": cost["c"], "v": cost["v"][g], "ceiling": ceil,
                             "ceiling_v1": measure.ceiling(summary["alpha"], g, cost["c"], 1.0),
                             "efficiency": measure.efficiency(cell["decode_speedup"], ceil),
                             "c_generation": cost["c_generation"], "v_generation": cost["v_generation"][g]})
                if cost["c_generation"] is not None and cost["v_generation"][g] is not None:
                    cell["ceiling_generation"] = measure.ceiling(summary["alpha"], g, cost["c_generation"],
                                                                 cost["v_generation"][g])
                if max_new_tokens is not None:
                    cell["ceiling_with_prefill"] = measure.prefill_ceiling(
                        summary["alpha"], g, cost["c"], cost["v"][g], cost["prefill_target"], cost["prefill_draft"],
                        max_new_tokens)
                    cell["efficiency_with_prefill"] = measure.efficiency(cell["speedup"], cell["ceiling_with_prefill"])
                if m["kind"] == "assisted":
                    cell["acceptance_source"] = "speculative strategy at the same mode, batch and g"
                elif m["per_category"]:
                    cell["per_category"] = {
                        cat: {k: v for k, v in measure.acceptance_summary(t, g).items()
                              if k in ("acceptance_rate", "alpha", "mean_accepted_length", "steps")}
                        for cat, t in m["per_category"].items()}
            cells.append(cell)
            if mode == "greedy" and m["kind"] != "target":
                checks.append({k: cell[k] for k in ("mode", "batch_size", "name", "matches_target",
                                                    "rows_matching_target", "mean_agreeing_prefix")})
    for mode in dict.fromkeys(c["mode"] for c in cells):
        for batch_size in dict.fromkeys(c["batch_size"] for c in cells):
            spec = [c for c in cells if c["mode"] == mode and c["batch_size"] == batch_size
                    and c["method"] == "speculative"]
            if spec:
                max(spec, key=lambda c: c["speedup"])["best"] = True
    return cells, costs, checks


def _generation_costs(entries: list[dict], gs: list) -> dict:
    """Mean over processes of the in-generation ``c`` and ``v(g)`` (None where no process measured one)."""
    def mean(values):
        values = [x for x in values if x is not None]
        return statistics.mean(values) if values else None

    generation = [e.get("generation") or {"c": None, "v": {}} for e in entries]
    return {"c": mean(x["c"] for x in generation), "v": {g: mean(x["v"].get(g) for x in generation) for g in gs}}


def _measured(parts: list[dict]) -> dict:
    """One method's figures over all processes."""
    rounds = len(parts[0]["seconds"])
    tokens = [sum(p["tokens"][r] for p in parts) for r in range(rounds)]
    seconds = [max(p["seconds"][r] for p in parts) for r in range(rounds)]
    rates = [t / s if s > 0 else float("nan") for t, s in zip(tokens, seconds)]
    per_category: dict = {}
    for part in parts:
        for category, totals in part["per_category"].items():
            measure.merge_stats(per_category.setdefault(category, {}), totals)
    return {"name": parts[0]["name"], "kind": parts[0]["kind"], "g": parts[0]["g"],
            "tokens_per_s": statistics.median(rates), "rounds": rates, "tokens": statistics.median(tokens),
            "tokens_per_round": tokens, "seconds_per_round": seconds,
            "stats": measure.merge_totals(p["stats"] for p in parts), "per_category": per_category,
            "rows": [row for p in parts for row in p["rows"]]}


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


def _equality(rows: list[list[int]], reference: list[list[int]]) -> dict:
    equal = sum(a == b for a, b in zip(rows, reference))
    differing = [(a, b) for a, b in zip(rows, reference) if a != b]
    prefix = None
    if differing:
        prefix = statistics.mean(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                                 for a, b in differing)
    return {"matches_target": equal == len(reference) and len(rows) == len(reference),
            "rows_matching_target": f"{equal}/{len(reference)}", "mean_agreeing_prefix": prefix}


def summarize(cells: list[dict]) -> list[dict]:
    """One line per mode and batch size: the best speculative cell, with the assisted speedup at its ``g`` and
    the target's forwards per token."""
    out = []
    for cell in cells:
        if not cell.get("best"):
            continue
        assisted = next((c for c in cells if c["mode"] == cell["mode"] and c["batch_size"] == cell["batch_size"]
                         and c["method"] == "assisted" and c["num_draft_tokens"] == cell["num_draft_tokens"]), None)
        target = next(c for c in cells if c["mode"] == cell["mode"] and c["batch_size"] == cell["batch_size"]
                      and c["method"] == "target")
        out.append({"mode": cell["mode"], "batch_size": cell["batch_size"], "best_draft_length": cell["num_draft_tokens"],
                    "speedup": cell["speedup"], "decode_speedup": cell["decode_speedup"],
                    "ceiling": cell["ceiling"], "efficiency": cell["efficiency"],
                    "ceiling_with_prefill": cell.get("ceiling_with_prefill"),
                    "alpha": cell["alpha"], "assisted_speedup": assisted["speedup"] if assisted else None,
                    "target_forwards_per_token": target.get("forwards_per_token")})
    return out
