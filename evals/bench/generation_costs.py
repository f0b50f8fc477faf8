"""The cost ratios ``c`` and ``v`` timed on the forwards of real ``generate`` calls: ``decoding-bench``'s
diagnostic beside the isolated ratios of :func:`decoding.evals.common.measure.cost_ratios` (``docs/BENCHMARKS.md``,
"Measurement"). ``c = draft_1 / target_1``, ``v(g) = target_<g+1> / target_1``, as in REFERENCES.md §1."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence

import torch

import decoding

from decoding.evals.common.measure import synchronize

__all__ = ["forward_log", "generation_cost_ratios"]


@contextlib.contextmanager
def forward_log(model, log: list, limit: int | None = None):
    """Append ``(rows, new_tokens, seconds)`` for every forward of ``model`` inside the block to ``log`` (only the
    first ``limit`` when given: the hooks are removed then, so that later forwards run, and synchronize, as they would
    unobserved)."""
    starts, handles = [], []

    def before(module, args, kwargs):
        synchronize(model.device)
        starts.append(time.perf_counter())

    def after(module, args, kwargs, output):
        synchronize(model.device)
        seconds = time.perf_counter() - starts.pop()
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            log.append((ids.shape[0], ids.shape[1], seconds))
        if limit is not None and len(log) >= limit:
            for handle in handles:
                handle.remove()

    handles += [model.register_forward_pre_hook(before, with_kwargs=True),
                model.register_forward_hook(after, with_kwargs=True)]
    try:
        yield log
    finally:
        for handle in handles:
            handle.remove()


def _kept(log: list, rows: int, new_tokens: int) -> list[float]:
    """Seconds of the logged forwards of ``rows`` rows and ``new_tokens`` tokens, the first (the prompt
    encoding) left out."""
    return [s for r, n, s in log[1:] if r == rows and n == new_tokens]


def _median(seconds: list[float]) -> float | None:
    return statistics.median(seconds) if seconds else None


def generation_cost_ratios(target, draft, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], kwargs: dict,
                           draft_lengths: Sequence[int], tokenizers: tuple | None = None) -> dict:
    """``{"c": float | None, "v": {g: float | None}, "seconds": {...}}`` from generating every batch of
    ``batches``: ``(ids, mask)  # [b, width]`` pairs of one batch size ``b``; medians pool the batches' forwards.

    ``kwargs`` are the calls' ``generate`` arguments (greedy, with ``max_new_tokens``). A ratio is None where
    the calls ran no forward of its kind (too few new tokens).
    """
    rows = batches[0][0].shape[0]
    single, drafts, verifying = [], [], {g: [] for g in draft_lengths}
    with torch.no_grad():
        for ids, mask in batches:
            with forward_log(target, []) as alone:
                target.generate(ids, attention_mask=mask, **kwargs)
            single += _kept(alone, rows, 1)
            for g in draft_lengths:
                strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, tokenizers=tokenizers)
                with forward_log(target, []) as verify, forward_log(draft, []) as drafting:
                    target.generate(ids, attention_mask=mask, custom_generate=strategy, **kwargs)
                verifying[g] += _kept(verify, rows, g + 1)
                drafts += _kept(drafting, rows, 1)
    seconds = {"target_1": _median(single), "draft_1": _median(drafts),
               **{f"target_{g + 1}": _median(verifying[g]) for g in draft_lengths}}
    one = seconds["target_1"]

    def ratio(key: str) -> float | None:
        return seconds[key] / one if one and seconds[key] is not None else None

    return {"c": ratio("draft_1"), "v": {g: ratio(f"target_{g + 1}") for g in draft_lengths}, "seconds": seconds}
