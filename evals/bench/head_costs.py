"""``decoding-bench``'s cost ratios when the draft is a draft head (``--head``; manual: ``docs/BENCHMARKS.md``,
"A draft head").

A head (:class:`~decoding.proposers.eagle_head.Eagle3Head`) cannot be timed like a draft model, by a forward of its
own on token ids: each forward reads the target's hidden states of the tokens the last step committed (or, for
further positions, its own output state), and a step's drafting is more than its forwards (the reading of the
target's features, the map from its draft vocabulary to the target's). So its ``c`` is timed where it runs: in
profiled greedy calls ``SpeculativeDecoding(head, g, profile=True)`` over the block's batches, whose
``stats.seconds["draft"]`` is all the drafting the call did. Of that, the head's first forward is its reading of
the prompt, its prefill (``p_d``, as a draft model's prompt encoding), and is taken off; the rest over the drafted
positions (``stats.drafted`` over the rows: the positions of a batch that stays together) is the drafting seconds of
one position, and

    c(g) = drafting seconds per drafted position at g / seconds of one cached target forward of one token,

so that ``g * c(g)`` is what drafting adds to a step, in target forwards: the ``g*c`` of the ceiling. The
denominator is the target's isolated forward at the mean context length (``cost_ratios``' ``target_1``), and ``c``
(without a g) pools every g's calls; the in-generation ``c_generation`` divides the same drafting seconds by the
target's single-token forwards timed inside its own ``generate`` calls. ``v`` is the target's, measured as for a
draft model.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

import decoding
from decoding.evals.bench.generation_costs import forward_log
from decoding.evals.common.measure import forward_timer, interleaved_medians, prefill_timer

__all__ = ["head_cost_ratios", "head_generation_costs", "target_costs", "target_prefill"]


def target_costs(target, batch_size: int, context_length: int, draft_lengths: Sequence[int], repeats: int = 31,
                 warmup: int = 3) -> dict:
    """The target's side of :func:`decoding.evals.common.measure.cost_ratios`: ``{"v": {g: float}, "seconds":
    {"target_1": s, "target_<g+1>": s}}``, cached forwards after ``context_length`` tokens, interleaved medians."""
    timers = {"target_1": forward_timer(target, batch_size, context_length, 1)}
    timers.update({f"target_{g + 1}": forward_timer(target, batch_size, context_length, g + 1) for g in draft_lengths})
    seconds = interleaved_medians(timers, repeats, warmup)
    return {"v": {g: seconds[f"target_{g + 1}"] / seconds["target_1"] for g in draft_lengths}, "seconds": seconds}


def target_prefill(target, batch_size: int, prompt_length: int, repeats: int = 7, warmup: int = 1) -> dict:
    """The target's side of :func:`decoding.evals.common.measure.prefill_ratios`: ``{"target": p_t, "seconds":
    {"target_prefill": s, "target_1": s}}``, the prompt's encoding in one-token forwards at ``prompt_length``."""
    timers = {"target_prefill": prefill_timer(target, batch_size, prompt_length, torch.Generator().manual_seed(0)),
              "target_1": forward_timer(target, batch_size, prompt_length, 1)}
    seconds = interleaved_medians(timers, repeats, warmup)
    return {"target": seconds["target_prefill"] / seconds["target_1"], "seconds": seconds}


def _median(seconds: list[float]) -> float | None:
    return statistics.median(seconds) if seconds else None


def head_generation_costs(target, head, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], kwargs: dict,
                          draft_lengths: Sequence[int]) -> dict:
    """The head's drafting and the target's forwards timed inside real greedy calls over ``batches`` (``(ids,
    mask)  # [b, width]`` of one batch size ``b``; ``kwargs``: greedy ``generate`` arguments).

    Returns ``{"c": float | None, "c_per_g": {g: float | None}, "v": {g: float | None}, "seconds": {...},
    "positions": {g: float}}``: ``seconds`` holds ``target_1`` and ``target_<g+1>`` (medians of the target's
    forwards in its own calls and in the strategy's verifications, each call's prompt encoding left out, as
    :func:`decoding.evals.bench.generation_costs.generation_cost_ratios`), ``head_position`` (the head's drafting
    seconds per drafted position, all g pooled), ``head_position_g=<g>`` (per g) and ``head_prompt`` (the median
    seconds of the head's reading of a prompt). The ratios are over the in-generation ``target_1``; None where
    nothing was drafted.
    """
    rows = batches[0][0].shape[0]
    single, verifying, prompt_reads = [], {g: [] for g in draft_lengths}, []
    drafting = {g: 0.0 for g in draft_lengths}
    positions = {g: 0.0 for g in draft_lengths}
    with torch.no_grad():
        for ids, mask in batches:
            with forward_log(target, []) as alone:
                target.generate(ids, attention_mask=mask, **kwargs)
            single += [s for r, n, s in alone[1:] if r == rows and n == 1]
            for g in draft_lengths:
                strategy = decoding.SpeculativeDecoding(head, num_draft_tokens=g, profile=True)
                read = []
                with forward_log(target, []) as verify, forward_log(head, read, limit=1):
                    target.generate(ids, attention_mask=mask, custom_generate=strategy, **kwargs)
                verifying[g] += [s for r, n, s in verify[1:] if r == rows and n == g + 1]
                read = [seconds for _, _, seconds in read]  # the head's first forward: its reading of the prompt
                prompt_reads += read
                drafted = strategy.stats.drafted / ids.shape[0]  # positions per row
                if drafted:
                    drafting[g] += max(strategy.stats.seconds.get("draft", 0.0) - sum(read), 0.0)
                    positions[g] += drafted
    per_position = {g: drafting[g] / positions[g] if positions[g] else None for g in draft_lengths}
    total = sum(positions.values())
    seconds = {"target_1": _median(single), **{f"target_{g + 1}": _median(verifying[g]) for g in draft_lengths},
               "head_position": sum(drafting.values()) / total if total else None,
               **{f"head_position_g={g}": per_position[g] for g in draft_lengths},
               "head_prompt": _median(prompt_reads)}
    one = seconds["target_1"]

    def ratio(value: float | None) -> float | None:
        return value / one if one and value is not None else None

    return {"c": ratio(seconds["head_position"]), "c_per_g": {g: ratio(per_position[g]) for g in draft_lengths},
            "v": {g: ratio(seconds[f"target_{g + 1}"]) for g in draft_lengths}, "seconds": seconds,
            "positions": positions}


def head_cost_ratios(target, head, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], kwargs: dict,
                     draft_lengths: Sequence[int], *, batch_size: int, context_length: int, prompt_length: int,
                     repeats: int = 31) -> dict:
    """Everything :meth:`decoding.evals.bench.grid._Grid.costs` reports (a ``RawCost``) for a draft head: the
    target's ``v`` and prefill timed in isolation, the head's ``c`` per g (``c_per_g``) and pooled (``c``) from its
    drafting in profiled calls (:func:`head_generation_costs`) over the isolated ``target_1``, and its prefill, its
    reading of the prompt, in one-token target forwards at the prompt length. A ``c`` is NaN where the calls drafted
    nothing (too few new tokens)."""
    costs = target_costs(target, batch_size, context_length, draft_lengths, repeats=repeats)
    prefill = target_prefill(target, batch_size, prompt_length, repeats=max(3, repeats // 3))
    generation = head_generation_costs(target, head, batches, kwargs, draft_lengths)
    one, at_prompt = costs["seconds"]["target_1"], prefill["seconds"]["target_1"]
    measured = generation["seconds"]

    def ratio(value: float | None, base: float) -> float:
        return value / base if value is not None else float("nan")

    seconds = {**costs["seconds"], **{f"{k}@prompt": x for k, x in prefill["seconds"].items()},
               **{f"{k}@generation": x for k, x in measured.items() if x is not None}}
    return {"c": ratio(measured["head_position"], one),
            "c_per_g": {g: ratio(measured[f"head_position_g={g}"], one) for g in draft_lengths},
            "v": dict(costs["v"]), "generation": generation, "seconds": seconds, "context_length": context_length,
            "prompt_length": prompt_length, "prefill_target": prefill["target"],
            "prefill_draft": ratio(measured["head_prompt"], at_prompt)}
