"""``decoding-bench``'s timed grid: every (mode, batch size, method) measured on one process's share of the
prompts, interleaved, with the cost ratios ``c`` and ``v``; and the gathering of every process's results under
data parallel.

Methods (:func:`make_methods`): the target alone, ``assistant_model=`` (batch 1) and ``SpeculativeDecoding``
per draft length. Every batch is run by every method in turn, in an order that rotates from batch to batch and
round to round, so background load hits every method alike; one untimed warm-up call per method first; the
device is synchronized around every timed call. Processes run each round in step (:class:`_Sync`), so that
:func:`decoding.evals.bench_cells.combine` can divide the tokens of all processes by the slowest one's time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

import decoding

from decoding.evals.bench.generation_costs import generation_cost_ratios
from decoding.evals.bench.pair import Pair
from decoding.evals.bench.prompts import Batch, Prompt, make_batches
from decoding.evals.common import measure

__all__ = ["Method", "Progress", "gather_shares", "generation_kwargs", "make_methods", "measure_share",
           "work_units"]


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One column of the benchmark: how to generate a batch, and what it measured."""

    name: str
    kind: str  # "target" | "assisted" | "speculative"
    g: int | None
    generate: Callable  # (ids, mask) -> LongTensor [b, width + new]
    strategy: object = None
    seconds: list = field(default_factory=list)  # per round, all batches of this process
    tokens: list = field(default_factory=list)  # new tokens per round
    stats: dict = field(default_factory=dict)  # acceptance counters, all timed rounds
    per_category: dict = field(default_factory=dict)  # category -> counters (batch 1 only)
    rows: list = field(default_factory=list)  # new token ids per row, first timed round


def generation_kwargs(mode: str, max_new_tokens: int, pad_token_id: int, temperature: float) -> dict:
    """What every method passes to ``generate`` in ``mode``: pure temperature sampling, or greedy."""
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id}
    if mode == "greedy":
        return {**common, "do_sample": False}
    return {**common, "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def make_methods(target, draft, batch_size: int, draft_lengths: Sequence[int], kwargs: dict,
                 assisted: bool = True) -> list[Method]:
    """``target`` first, then for each ``g``: ``assisted g`` (batch 1) and ``speculative g``; last ``prefill``.

    ``prefill`` is the target's ``generate`` of one new token: the prompt encoding every method pays before its
    first token, which :func:`decoding.evals.bench_cells.combine` subtracts to get decoding-only rates.
    """
    methods = [Method("target", "target", None, lambda ids, mask: target.generate(ids, attention_mask=mask, **kwargs))]
    for g in draft_lengths:
        if assisted and batch_size == 1:
            methods.append(Method(f"assisted g={g}", "assisted", g, _assisted(target, draft, g, kwargs)))
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
        methods.append(Method(
            f"speculative g={g}", "speculative", g,
            lambda ids, mask, s=strategy: target.generate(ids, attention_mask=mask, strategy=s, **kwargs),
            strategy,
        ))
    one_token = {**kwargs, "max_new_tokens": 1}
    methods.append(Method("prefill", "prefill", None,
                          lambda ids, mask: target.generate(ids, attention_mask=mask, **one_token)))
    return methods


def _assisted(target, draft, g: int, kwargs: dict):
    def generate(ids, mask):
        # transformers reads these from the draft's own generation config only. A confidence threshold of 0
        # disables early stopping of the draft, so that it proposes exactly g tokens, like the strategy.
        config = draft.generation_config
        config.num_assistant_tokens = g
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
        return target.generate(ids, attention_mask=mask, assistant_model=draft, **kwargs)

    return generate


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr: rich's when stderr is a terminal (tqdm's without rich), else plain lines."""

    def __init__(self, total: int, enabled: bool = True):
        self.enabled, self.total, self.done = enabled, total, 0
        self._rich = self._tqdm = None
        self._last_line = 0.0
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._task = self._rich.add_task("starting", total=total)
            self._rich.start()
        except ImportError:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, description=text)
        elif self._tqdm is not None:
            self._tqdm.set_description_str(text)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.advance(self._task, n)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def log(self, text: str) -> None:
        """A line that stays (plain mode only: the bar shows the same information live)."""
        if self.enabled and self._rich is None and self._tqdm is None:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self._tqdm is not None:
            self._tqdm.close()


def work_units(num_prompts: int, batch_sizes, draft_lengths, modes, rounds: int, assisted: bool = True) -> int:
    """Number of generate calls (warm-up included) and cost measurements a run makes, for the progress bar."""
    total = 0
    for batch_size in batch_sizes:
        batches = -(-num_prompts // batch_size)
        methods = 2 + len(draft_lengths) * (2 if assisted and batch_size == 1 else 1)  # target, prefill
        total += len(modes) * methods * (1 + rounds * batches) + 1  # + 1: the cost measurement
    return total


# ----------------------------------------------------------------------------------------------- measuring


class _Sync:
    """Barriers between processes (no-ops in a single process)."""

    def __init__(self, state=None):
        self.state = state if state is not None and state.num_processes > 1 else None

    def __call__(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def measure_share(pair: Pair, prompts: list[Prompt], *, batch_sizes: Sequence[int], draft_lengths: Sequence[int],
                  modes: Sequence[str] = ("greedy",), max_new_tokens: int = 64, temperature: float = 0.7,
                  rounds: int = 3, cost_repeats: int = 31, seed: int = 0, assisted: bool = True,
                  warmup_tokens: int | None = 8, state=None, progress: Progress | None = None) -> dict:
    """Measure every (mode, batch size, method) on this process's ``prompts``; returns raw, JSON-able results.

    ``{"blocks": [{"mode", "batch_size", "methods": [{"name", "kind", "g", "seconds", "tokens", "stats",
    "per_category", "rows"}]}], "costs": {batch_size: cost_ratios(...) + context_length}, "device_name",
    "prompt_tokens"}``: ``seconds``/``tokens`` per round, ``rows`` the new ids of every row in round 0
    (greedy blocks only). :func:`decoding.evals.bench_cells.combine` turns the results of all processes into
    report cells.
    """
    target, draft = pair.target, pair.draft
    device = target.device
    decoding.enable(target)
    progress = progress or Progress(0, enabled=False)
    sync = _Sync(state)
    ids = [p.ids for p in prompts]
    categories = [p.category for p in prompts]
    context_length = round(statistics.mean(p.numel() for p in ids) + max_new_tokens / 2)
    out = {"blocks": [], "costs": {}, "device_name": measure.device_name(device),
           "prompt_tokens": [p.numel() for p in ids]}
    with torch.no_grad():
        for batch_size in batch_sizes:
            data = make_batches(ids, batch_size, device, pair.pad_token_id)
            for mode in modes:
                kwargs = generation_kwargs(mode, max_new_tokens, pair.pad_token_id, temperature)
                methods = make_methods(target, draft, batch_size, draft_lengths, kwargs, assisted)
                label = f"{mode}, batch {batch_size}"
                progress.describe(f"{label}: warm-up")
                progress.log(f"{label}: {len(data)} batch(es) x {rounds} round(s) of "
                             + ", ".join(m.name for m in methods))
                warm = dict(kwargs, max_new_tokens=min(max_new_tokens, warmup_tokens or max_new_tokens))
                warm_methods = make_methods(target, draft, batch_size, draft_lengths, warm, assisted)
                for method in warm_methods:  # untimed
                    torch.manual_seed(seed)
                    method.generate(data[0].ids, data[0].mask)
                    progress.advance()
                for round_ in range(rounds):
                    sync()  # processes run each round in step
                    for method in methods:
                        method.seconds.append(0.0)
                        method.tokens.append(0)
                    for b, batch in enumerate(data):
                        progress.describe(f"{label}, round {round_ + 1}/{rounds}, batch {b + 1}/{len(data)}")
                        for method in measure.rotated(methods, round_ + b):
                            _time_call(method, batch, categories, round_, b, mode, seed, pair.eos_token_ids)
                            progress.advance()
                    progress.log(f"{label}, round {round_ + 1}/{rounds}: " + ", ".join(
                        f"{m.name} {m.tokens[-1] / m.seconds[-1]:.1f} tok/s" for m in methods))
                out["blocks"].append({"mode": mode, "batch_size": batch_size, "methods": [
                    {"name": m.name, "kind": m.kind, "g": m.g, "seconds": m.seconds, "tokens": m.tokens,
                     "stats": m.stats, "per_category": m.per_category, "rows": m.rows} for m in methods]})
            progress.describe(f"batch {batch_size}: measuring c and v ({context_length}-token cache)")
            progress.log(f"batch {batch_size}: measuring c and v ({context_length}-token cache, {cost_repeats} repeats)")
            sync()
            cost = measure.cost_ratios(target, draft, batch_size, context_length, draft_lengths, repeats=cost_repeats)
            prompt_length = round(statistics.mean(p.numel() for p in ids))
            prefill = measure.prefill_ratios(target, draft, batch_size, prompt_length,
                                             repeats=max(3, cost_repeats // 3))
            greedy = generation_kwargs("greedy", max_new_tokens, pair.pad_token_id, temperature)
            in_generation = generation_cost_ratios(target, draft, [(b.ids, b.mask) for b in data], greedy,
                                                   draft_lengths)
            progress.advance()
            out["costs"][batch_size] = {"c": cost["c"], "v": {g: v for g, v in cost["v"].items()},
                                        "generation": in_generation,
                                        "seconds": {**cost["seconds"], **{f"{k}@prompt": x for k, x in
                                                                          prefill["seconds"].items()}},
                                        "context_length": context_length, "prompt_length": prompt_length,
                                        "prefill_target": prefill["target"], "prefill_draft": prefill["draft"]}
    return out


def _time_call(method: Method, batch: Batch, categories, round_: int, b: int, mode: str, seed: int, eos) -> None:
    """One timed ``generate`` of ``batch``, added to the method's current round; outputs and counters kept."""
    device = batch.ids.device
    if mode != "greedy":
        torch.manual_seed(seed + 7919 * round_ + b)  # the same seed for every method
    measure.synchronize(device)
    start = time.perf_counter()
    output = method.generate(batch.ids, batch.mask)
    measure.synchronize(device)
    method.seconds[-1] += time.perf_counter() - start
    counts = measure.new_token_counts(output, batch.ids.shape[1], eos)
    method.tokens[-1] += sum(counts)
    if round_ == 0 and mode == "greedy":
        width = batch.ids.shape[1]
        method.rows += [output[r, width:width + n].tolist() for r, n in enumerate(counts)]
    if method.strategy is not None:
        measure.merge_stats(method.stats, method.strategy.stats)
        if batch.ids.shape[0] == 1:
            measure.merge_stats(method.per_category.setdefault(categories[batch.prompts[0]], {}),
                                method.strategy.stats)


def gather_shares(raw: dict, state) -> list[dict]:
    """The :func:`measure_share` results of every process, in process order (``[raw]`` in a single process)."""
    if state.num_processes == 1:
        return [raw]
    from accelerate.utils import gather_object

    return gather_object([raw])
