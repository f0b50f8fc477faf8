"""``decoding-eval``'s generation: the continuations of every prompt by every decoding method (:data:`METHODS`),
batched and left-padded, each call timed.

Batches (prompts sorted by length, so that a batch holds similar lengths) are generated in turn by every method,
in an order that rotates per batch so that background load hits all alike, each call timed with
:func:`decoding.evals.measure.time_calls` after one untimed warm-up call per method. Sampling methods reseed per
batch (``--seed`` + batch index), so runs are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import decoding

from decoding.evals.common.measure import merge_stats, rotated, time_calls
from decoding.evals.quality.pair import Pair

__all__ = ["DEFAULT_METHODS", "METHODS", "Generations", "generate_all"]

DEFAULT_METHODS = ("greedy", "nucleus", "top_k", "contrastive", "speculative_contrastive")
METHODS = {  # name -> table label
    "greedy": "greedy",
    "nucleus": "nucleus p=0.95",
    "top_k": "top-k k=50",
    "contrastive": "CD",
    "speculative_contrastive": "SCD",
    "contrastive_sample": "CD sampled",
    "speculative_contrastive_sample": "SCD sampled",
}


def _strategy(method: str, amateur, args):
    if method.startswith("speculative_contrastive"):
        return decoding.SpeculativeContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta,
                                                       num_draft_tokens=args.num_draft_tokens, form=args.form,
                                                       amateur_temperature=args.amateur_temperature)
    if method.startswith("contrastive"):
        return decoding.ContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta, form=args.form,
                                            amateur_temperature=args.amateur_temperature)
    return None


def _sampling(method: str) -> dict:
    if method == "greedy" or method in ("contrastive", "speculative_contrastive"):
        return {"do_sample": False}
    if method == "nucleus":
        return {"do_sample": True, "top_p": 0.95, "top_k": 0, "temperature": 1.0}
    if method == "top_k":
        return {"do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 1.0}
    if method.endswith("_sample"):  # the contrastive distribution itself: no truncation beyond its own mask
        return {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


@dataclass
class Generations:
    """One method's continuations (token ids per prompt, EOS included, padding dropped) and timing."""

    method: str
    continuations: dict = field(default_factory=dict)  # prompt index -> list[int]
    seconds: float = 0.0
    tokens: int = 0
    stats: dict = field(default_factory=dict)  # summed strategy counters


def _trim(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (what follows is padding)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else set(eos if isinstance(eos, list) else [eos])


def _record_stats(total: dict, strategy) -> None:
    """Add the strategy's statistics of its last call into ``total``."""
    stats = getattr(strategy, "stats", None)
    if isinstance(stats, decoding.AcceptanceStats):
        merge_stats(total, stats)
    elif isinstance(stats, decoding.MixingStats):
        total["steps"] = total.get("steps", 0) + stats.steps
        forwards = total.setdefault("forwards", {})
        for role, count in stats.forwards.items():
            forwards[role] = forwards.get(role, 0) + count


def generate_all(pair: Pair, prompt_ids: list[list[int]], methods: list[str], args, log=print) -> dict:
    """Continuations of every prompt by every method: ``{method: Generations}``."""
    tokenizer, target = pair.tokenizer, pair.target
    device = target.device
    decoding.enable(target)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else target.generation_config.pad_token_id
    eos_ids = _eos_ids(target)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding per batch
    batches = [order[k : k + args.batch_size] for k in range(0, len(order), args.batch_size)]
    strategies = {m: _strategy(m, pair.amateur, args) for m in methods}
    results = {m: Generations(m) for m in methods}

    def run(method: str, rows: list[int], max_new_tokens: int, seed: int):
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
            mask[r, width - len(prompt_ids[i]) :] = 1
        kwargs = dict(attention_mask=mask.to(device), max_new_tokens=max_new_tokens, pad_token_id=pad,
                      **_sampling(method))
        if strategies[method] is not None:
            kwargs["strategy"] = strategies[method]
        torch.manual_seed(seed)
        with torch.no_grad():
            return target.generate(ids.to(device), **kwargs)[:, width:].cpu()

    for method in methods:  # warm-up: one short untimed call each
        run(method, batches[0], 2, args.seed)
    for k, rows in enumerate(batches):
        for method in rotated(methods, k):
            out = {}
            seconds = time_calls(lambda: out.update(ids=run(method, rows, args.max_new_tokens, args.seed + k)),
                                 repeats=1, warmup=0, device=device)[0]
            gen = results[method]
            gen.seconds += seconds
            for r, i in enumerate(rows):
                gen.continuations[i] = _trim(out["ids"][r].tolist(), eos_ids)
                gen.tokens += len(gen.continuations[i])
            _record_stats(gen.stats, strategies[method])
        log(f"batch {k + 1}/{len(batches)} done")
    return results
