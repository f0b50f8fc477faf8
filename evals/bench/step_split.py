"""``decoding-bench --step-split``: where a decoding step's time goes, measured apart from the timed rounds.

After a block's timed rounds, each strategy method runs once more through a profiled twin (the same strategy built
anew with ``profile=True``: its ``stats.seconds`` split the call into ``draft``, ``target``, ``verify`` and
``other``; on CUDA every phase boundary synchronizes, which is why this is not a timed call), and every method
once more under :class:`~decoding.evals.common.host_reads.OpCounter` (host reads and dispatched operations), and
once with half the new tokens, so that the reads and ops of a step in the steady state (``steady_*``: the
difference over the difference in steps) stand apart from a call's fixed ones. All figures are per step: a
speculative step is one verification (``stats.steps // batch``: row-steps over rows), a step of the target alone
one new token per row (transformers' own loop). The ``static-target`` baseline gets its time per step only (a
dispatch mode around compiled code would count something else). Every call runs on the block's first batch,
``ids, mask  # [b, width]``.
"""

from __future__ import annotations

import statistics
import time
from typing import TypedDict

import torch

from decoding.evals.common.batches import Batch
from decoding.evals.common.host_reads import OpCounter
from decoding.evals.common.measure import synchronize

__all__ = ["PHASES", "RawSplit", "combine_splits", "measure_split"]

PHASES = ("draft", "target", "verify", "other")
TIMED_ONLY = ("static-target",)  # methods timed per step, not counted
COUNTED = ("target", "static-target")  # methods without a strategy that get a split: the targets alone


class RawSplit(TypedDict, total=False):
    """One method's step split on one process, per step (all keys but ``steps`` and ``batch_size``)."""

    batch_size: int  # rows of the measured batch (the block's first)
    steps: float  # decoding steps of the profiled (or timed) call
    call_ms: float  # the whole call's milliseconds (prompt encoding included) per step
    draft_ms: float  # strategies: the phases of the profiled call, per step; they sum to about call_ms
    target_ms: float
    verify_ms: float
    other_ms: float
    counted_steps: float  # steps of the counted call (greedy: the same as steps)
    host_reads: float  # per step, of the counted call
    ops: float
    reads: dict[str, float]  # host reads per step by kind (item, nonzero, masked_select, bool_index, tolist, ...)
    steady_host_reads: float  # per step beyond a call's fixed reads (two counted calls, the full and half length)
    steady_ops: float


def measure_split(method, target, kwargs: dict, batch: Batch, seed: int) -> RawSplit | None:
    """The step split of ``method`` on ``batch``; None for methods that get none (transformers' drafting
    methods, the ``prefill`` call). ``kwargs``: the block's ``generate`` keyword arguments (the twin's too)."""
    if getattr(method, "build", None) is not None:
        split = _profiled(method.build, target, kwargs, batch, seed)
        split.update(_counted(method, batch, seed, kwargs["max_new_tokens"]))
        return split
    if method.kind not in COUNTED:
        return None
    split = _timed(method, batch, seed)
    if method.kind not in TIMED_ONLY:
        split.update(_counted(method, batch, seed, kwargs["max_new_tokens"]))
    return split


def _call(generate, batch: Batch, seed: int) -> tuple[torch.Tensor, float]:
    """``generate(ids, mask)  # [b, width + new]`` from ``seed`` (sampling draws the same for every method), and
    its seconds."""
    torch.manual_seed(seed)
    synchronize(batch.ids.device)
    start = time.perf_counter()
    output = generate(batch.ids, batch.mask)
    synchronize(batch.ids.device)
    return output, time.perf_counter() - start


def _strategy_steps(strategy, batch: Batch) -> float:
    """Decoding steps of a strategy's last call: its row-steps over the batch's rows (at least 1)."""
    return max(strategy.stats.steps // batch.ids.shape[0], 1)


def _loop_steps(output: torch.Tensor, batch: Batch) -> float:
    """Steps of transformers' loop: one per new column of ``output  # [b, width + new]`` (at least 1)."""
    return max(output.shape[1] - batch.ids.shape[1], 1)


def _profiled(build, target, kwargs: dict, batch: Batch, seed: int) -> RawSplit:
    """One call of a new strategy from ``build`` with ``profile=True``: the call and its phases per step."""
    twin = build()
    twin.profile = True  # an attribute of every SpeculativeDecoding, whatever its constructor takes
    _, seconds = _call(lambda ids, mask: target.generate(ids, attention_mask=mask, **kwargs, strategy=twin), batch,
                       seed)
    steps = _strategy_steps(twin, batch)
    phases = getattr(twin.stats, "seconds", None) or {}
    out: RawSplit = {"batch_size": batch.ids.shape[0], "steps": steps, "call_ms": 1e3 * seconds / steps}
    for phase in PHASES:
        out[f"{phase}_ms"] = 1e3 * phases.get(phase, float("nan")) / steps
    return out


def _timed(method, batch: Batch, seed: int) -> RawSplit:
    """One call of a method without a strategy: its milliseconds per step (per token)."""
    output, seconds = _call(method.generate, batch, seed)
    steps = _loop_steps(output, batch)
    return {"batch_size": batch.ids.shape[0], "steps": steps, "call_ms": 1e3 * seconds / steps}


def _counted(method, batch: Batch, seed: int, new_tokens: int) -> RawSplit:
    """``method`` itself under :class:`OpCounter`: host reads and ops per step of a call of ``new_tokens``, and
    per step beyond a call's fixed ones (``steady_``: the difference from a call of half the tokens, over the
    difference in steps; NaN where the two calls take as many steps)."""
    full, steps = _count(method, batch, seed, new_tokens)
    out: RawSplit = {"counted_steps": steps, "host_reads": full.host_reads / steps, "ops": full.ops / steps,
                     "reads": {kind: n / steps for kind, n in sorted(full.reads.items())}}
    half, half_steps = _count(method, batch, seed, max(new_tokens // 2, 1))
    more = steps - half_steps
    out["steady_host_reads"] = (full.host_reads - half.host_reads) / more if more > 0 else float("nan")
    out["steady_ops"] = (full.ops - half.ops) / more if more > 0 else float("nan")
    return out


def _count(method, batch: Batch, seed: int, new_tokens: int) -> tuple[OpCounter, float]:
    """One call of ``new_tokens`` under a counter: the counter and the call's steps."""
    torch.manual_seed(seed)
    with OpCounter() as counter:
        output = method.generate(batch.ids, batch.mask, max_new_tokens=new_tokens)
    strategy = getattr(method, "strategy", None)
    steps = _strategy_steps(strategy, batch) if strategy is not None else _loop_steps(output, batch)
    return counter, steps


def combine_splits(parts: list[RawSplit | None]) -> dict | None:
    """One method's split over processes: the mean of every figure (None where no process measured one)."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    out: dict = {}
    for key in parts[0]:
        if key == "reads":
            kinds = dict.fromkeys(k for p in parts for k in p.get("reads", {}))
            out[key] = {k: statistics.mean(p.get("reads", {}).get(k, 0.0) for p in parts) for k in kinds}
        else:
            out[key] = statistics.mean(p[key] for p in parts if key in p)
    return out

