"""``decoding-bench``'s timed grid: every (mode, batch size, method) measured on one process's share of the
prompts, interleaved, with the cost ratios ``c`` and ``v``; and the gathering of every process's results under
data parallel (how and why: ``docs/BENCHMARKS.md``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import torch

import decoding
from decoding.evals.bench.generation_costs import generation_cost_ratios
from decoding.evals.bench.head_costs import head_cost_ratios
from decoding.evals.bench.methods import Method, generation_kwargs, make_methods
from decoding.evals.bench.progress import Progress
from decoding.evals.bench.prompts import Prompt
from decoding.evals.bench.step_split import RawSplit, measure_split
from decoding.evals.common.acceptance import merge_stats
from decoding.evals.common.batches import Batch, make_batches
from decoding.evals.common.measure import (
    cost_ratios,
    new_token_counts,
    prefill_ratios,
    rotated,
    synchronize,
)
from decoding.evals.common.pairs import Pair
from decoding.evals.common.provenance import device_name

__all__ = ["RawBlock", "RawCost", "RawMethod", "RawShare", "gather_shares", "measure_share"]


class RawMethod(TypedDict):
    """One method's measurements on one process (:meth:`Method.raw`)."""

    name: str
    kind: str  # "target" | "assisted" | "speculative" | "prefill" | a --variants kind (evals.bench.variants)
    g: int | None
    seconds: list[float]  # per round, all batches
    tokens: list[int]  # new tokens per round
    stats: dict  # acceptance counters of all timed rounds (decoding.evals.common.acceptance.merge_stats)
    per_category: dict[str, dict]  # category -> counters (batch 1 only)
    rows: list[list[int]]  # new ids of every row in round 0 (greedy blocks only)
    lossy: bool  # output may differ from the target's by design (absent in older results: False)
    draft_free: bool  # no draft model runs: c = 0 (absent in older results: False)
    split: RawSplit | None  # --step-split figures per step (absent in older results, None without the option)


class RawBlock(TypedDict):
    mode: str
    batch_size: int
    methods: list[RawMethod]


class RawCost(TypedDict):
    """The cost ratios at one batch size (decoding.evals.common.measure.cost_ratios and prefill_ratios; for a draft
    head, decoding.evals.bench.head_costs.head_cost_ratios, which adds ``c_per_g``)."""

    c: float
    c_per_g: dict[int, float]  # a draft head only (absent for a draft model): its c at each g
    v: dict[int, float]
    generation: dict  # generation_cost_ratios: c and v timed inside real generate calls
    seconds: dict[str, float]
    context_length: int
    prompt_length: int
    prefill_target: float
    prefill_draft: float


class RawShare(TypedDict):
    """What one process measured; :func:`decoding.evals.bench.cells.combine` makes report cells of them all."""

    blocks: list[RawBlock]
    costs: dict[int, RawCost]
    device_name: str
    prompt_tokens: list[int]


class _Sync:
    """Barriers between processes (no-ops in a single process)."""

    def __init__(self, state=None):
        self.state = state if state is not None and state.num_processes > 1 else None

    def __call__(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def measure_share(pair: Pair, prompts: list[Prompt], *, batch_sizes: Sequence[int], draft_lengths: Sequence[int],
                  modes: Sequence[str] = ("greedy",), max_new_tokens: int = 64, temperature: float = 0.7,
                  rounds: int = 3, cost_repeats: int = 31, seed: int = 0, assisted: bool = True, variants=(),
                  warmup_tokens: int | None = 8, state=None, progress: Progress | None = None,
                  step_split: bool = False) -> RawShare:
    """Measure every (mode, batch size, method) on this process's ``prompts`` (tokenized), in that order, and
    the cost ratios per batch size; processes run each round in step. ``step_split``: after each block's rounds,
    the per-step split of every method (:mod:`decoding.evals.bench.step_split`)."""
    decoding.enable(pair.target)
    ids = [p.ids for p in prompts]
    grid = _Grid(pair, [p.category for p in prompts], draft_lengths, max_new_tokens, temperature, rounds, seed,
                 assisted, tuple(variants), warmup_tokens, cost_repeats, _Sync(state),
                 progress or Progress(0, enabled=False), step_split, max(p.numel() for p in ids) + max_new_tokens)
    out: RawShare = {"blocks": [], "costs": {}, "device_name": device_name(pair.target.device),
                     "prompt_tokens": [p.numel() for p in ids]}
    with torch.no_grad():
        for batch_size in batch_sizes:
            data = make_batches(ids, batch_size, pair.target.device, pair.pad_token_id)
            for mode in modes:
                out["blocks"].append(grid.block(mode, batch_size, data))
            out["costs"][batch_size] = grid.costs(batch_size, data, ids)
    return out


@dataclass
class _Grid:
    """The settings of one :func:`measure_share` call, and how it measures a block and the costs."""

    pair: Pair
    categories: list[str]  # per prompt
    draft_lengths: Sequence[int]
    max_new_tokens: int
    temperature: float
    rounds: int
    seed: int
    assisted: bool
    variants: tuple  # decoding.evals.bench.variants.Variant
    warmup_tokens: int | None
    cost_repeats: int
    sync: _Sync
    progress: Progress
    step_split: bool = False
    cache_length: int | None = None  # the static-target variant's static cache: longest prompt + new tokens

    def kwargs(self, mode: str) -> dict:
        return generation_kwargs(mode, self.max_new_tokens, self.pair.pad_token_id, self.temperature)

    def methods(self, mode: str, batch_size: int) -> list[Method]:
        return make_methods(self.pair.target, self.pair.draft, batch_size, self.draft_lengths, self.kwargs(mode),
                            self.assisted, self.variants, self.pair.tokenizers, self.pair.cross_tokenizer,
                            self.cache_length)

    def block(self, mode: str, batch_size: int, data: list[Batch]) -> RawBlock:
        """Every method on every batch, ``rounds`` times, after one untimed warm-up call per method (the very
        methods timed: a strategy that learns across calls, like ``num_draft_tokens="auto"``, is timed warm)."""
        methods = self.methods(mode, batch_size)
        label = f"{mode}, batch {batch_size}"
        self.progress.describe(f"{label}: warm-up")
        self.progress.log(f"{label}: {len(data)} batch(es) x {self.rounds} round(s) of "
                          + ", ".join(m.name for m in methods))
        warm = min(self.max_new_tokens, self.warmup_tokens or self.max_new_tokens)
        for method in methods:  # untimed
            torch.manual_seed(self.seed)
            method.generate(data[0].ids, data[0].mask, max_new_tokens=warm)
            self.progress.advance()
        for round_ in range(self.rounds):
            self.round(methods, round_, data, mode, label)
        if self.step_split:
            self.split(methods, data[0], mode, label)
        return {"mode": mode, "batch_size": batch_size, "methods": [m.raw() for m in methods]}

    def split(self, methods: list[Method], batch: Batch, mode: str, label: str) -> None:
        """Every method's per-step split on the block's first batch, untimed (profiled and counted calls)."""
        self.progress.describe(f"{label}: step split")
        for method in methods:
            method.split = measure_split(method, self.pair.target, self.kwargs(mode), batch, self.seed)
            self.progress.advance()
        self.progress.log(f"{label}, step split: " + ", ".join(
            f"{m.name} {m.split['call_ms']:.2f} ms/step" for m in methods if m.split))

    def round(self, methods: list[Method], round_: int, data: list[Batch], mode: str, label: str) -> None:
        """One timed round: every batch by every method, in an order that rotates per batch and round."""
        self.sync()  # processes run each round in step
        for method in methods:
            method.seconds.append(0.0)
            method.tokens.append(0)
        for b, batch in enumerate(data):
            self.progress.describe(f"{label}, round {round_ + 1}/{self.rounds}, batch {b + 1}/{len(data)}")
            for method in rotated(methods, round_ + b):
                self.time_call(method, batch, round_, b, mode)
                self.progress.advance()
        self.progress.log(f"{label}, round {round_ + 1}/{self.rounds}: " + ", ".join(
            f"{m.name} {m.tokens[-1] / m.seconds[-1]:.1f} tok/s" for m in methods))

    def time_call(self, method: Method, batch: Batch, round_: int, b: int, mode: str) -> None:
        """One timed ``generate`` of ``batch``, added to the method's current round; outputs and counters kept."""
        device = batch.ids.device
        if mode != "greedy":
            torch.manual_seed(self.seed + 7919 * round_ + b)  # the same seed for every method
        synchronize(device)
        start = time.perf_counter()
        output = method.generate(batch.ids, batch.mask)
        synchronize(device)
        method.seconds[-1] += time.perf_counter() - start
        counts = new_token_counts(output, batch.ids.shape[1], self.pair.eos_token_ids)
        method.tokens[-1] += sum(counts)
        if round_ == 0 and mode == "greedy":
            width = batch.ids.shape[1]
            method.rows += [output[r, width:width + n].tolist() for r, n in enumerate(counts)]
        if method.strategy is not None:
            merge_stats(method.stats, method.strategy.stats)
            if batch.ids.shape[0] == 1:
                merge_stats(method.per_category.setdefault(self.categories[batch.prompts[0]], {}),
                            method.strategy.stats)

    def costs(self, batch_size: int, data: list[Batch], ids: list[torch.Tensor]) -> RawCost:
        """``c`` and ``v`` at the mean context length during generation, the prefill costs at the mean prompt
        length, and ``c``, ``v`` timed inside real calls (a diagnostic). A draft head's ``c`` is its drafting timed
        in profiled calls, per g (:func:`decoding.evals.bench.head_costs.head_cost_ratios`)."""
        target, draft = self.pair.target, self.pair.draft
        context_length = round(statistics.mean(p.numel() for p in ids) + self.max_new_tokens / 2)
        self.progress.describe(f"batch {batch_size}: measuring c and v ({context_length}-token cache)")
        self.progress.log(f"batch {batch_size}: measuring c and v ({context_length}-token cache, "
                          f"{self.cost_repeats} repeats)")
        self.sync()
        prompt_length = round(statistics.mean(p.numel() for p in ids))
        if self.pair.draft_is_head:  # c from the head's drafting in real calls (evals/bench/head_costs.py)
            greedy = generation_kwargs("greedy", self.max_new_tokens, self.pair.pad_token_id, self.temperature)
            cost = head_cost_ratios(target, draft, [(b.ids, b.mask) for b in data], greedy, self.draft_lengths,
                                    batch_size=batch_size, context_length=context_length,
                                    prompt_length=prompt_length, repeats=self.cost_repeats)
            self.progress.advance()
            return cost
        cost = cost_ratios(target, draft, batch_size, context_length, self.draft_lengths, repeats=self.cost_repeats)
        prefill = prefill_ratios(target, draft, batch_size, prompt_length, repeats=max(3, self.cost_repeats // 3))
        greedy = generation_kwargs("greedy", self.max_new_tokens, self.pair.pad_token_id, self.temperature)
        in_generation = generation_cost_ratios(target, draft, [(b.ids, b.mask) for b in data], greedy,
                                               self.draft_lengths, self.pair.tokenizers)
        self.progress.advance()
        return {"c": cost["c"], "v": dict(cost["v"]), "generation": in_generation,
                "seconds": {**cost["seconds"], **{f"{k}@prompt": x for k, x in prefill["seconds"].items()}},
                "context_length": context_length, "prompt_length": prompt_length,
                "prefill_target": prefill["target"], "prefill_draft": prefill["draft"]}


def gather_shares(raw: RawShare, state) -> list[RawShare]:
    """The :func:`measure_share` results of every process, in process order (``[raw]`` in a single process)."""
    if state.num_processes == 1:
        return [raw]
    from accelerate.utils import gather_object

    return gather_object([raw])
