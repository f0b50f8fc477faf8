"""``decoding-eval``'s generation: the continuations of every prompt by every decoding method (:data:`METHODS`, and
speculative cascades named ``cascade:RULE:THRESHOLD``), batched (prompts sorted by length) and left-padded, each call
timed; batches go to every method in turn, in an order that rotates per batch, and sampling methods reseed per
batch (``--seed`` + batch index)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import decoding
from decoding.cascade import Cascade
from decoding.evals.common.acceptance import merge_stats
from decoding.evals.common.batches import left_pad
from decoding.evals.common.measure import rotated, time_calls
from decoding.evals.common.pairs import Pair, eos_token_ids

__all__ = ["DEFAULT_METHODS", "METHODS", "Generations", "at_temperature", "generate_all", "is_cascade", "label"]

DEFAULT_METHODS = ("greedy", "nucleus", "top_k", "contrastive", "speculative_contrastive")
METHODS = {  # name -> table label
    "greedy": "greedy",
    "nucleus": "nucleus p=0.95",
    "top_k": "top-k k=50",
    "contrastive": "CD",
    "speculative_contrastive": "SCD",
    "contrastive_sample": "CD sampled",
    "speculative_contrastive_sample": "SCD sampled",
    "sample": "sample",
    "speculative_sample": "speculative",
}


def label(method: str) -> str:
    """The table's name of a method: ``"cascade:chow:0.3"`` reads ``"cascade chow:0.3"``."""
    return METHODS.get(method) or method.replace("cascade:", "cascade ", 1)


def is_cascade(method: str) -> bool:
    return method.startswith("cascade:")


def at_temperature(method: str) -> bool:
    """Pure sampling at ``--temperature``: the target alone, lossless speculative decoding (the same law) and every
    cascade, so that a cascade's quality is compared with the law it approximates."""
    return method in ("sample", "speculative_sample") or is_cascade(method)


def _strategy(method: str, amateur, args):
    if is_cascade(method):
        cascade = Cascade.parse(method)
        return decoding.SpeculativeCascade(amateur, cascade.rule, cascade.threshold,
                                           num_draft_tokens=args.num_draft_tokens)
    if method == "speculative_sample":
        return decoding.SpeculativeDecoding(amateur, num_draft_tokens=args.num_draft_tokens)
    if method.startswith("speculative_contrastive"):
        return decoding.SpeculativeContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta,
                                                       num_draft_tokens=args.num_draft_tokens, form=args.form,
                                                       amateur_temperature=args.amateur_temperature)
    if method.startswith("contrastive"):
        return decoding.ContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta, form=args.form,
                                            amateur_temperature=args.amateur_temperature)
    return None


def _sampling(method: str, temperature: float) -> dict:
    if at_temperature(method):
        return {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": temperature}
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

    def add(self, rows: list[int], new_ids: torch.Tensor, seconds: float, eos_ids: set[int]) -> None:
        """One timed call's new ids of the prompts ``rows``."""
        self.seconds += seconds
        for r, i in enumerate(rows):
            self.continuations[i] = _trim(new_ids[r].tolist(), eos_ids)
            self.tokens += len(self.continuations[i])


def _trim(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (what follows is padding)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


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


def _generate(pair: Pair, prompt_ids: list[list[int]], method: str, strategy, rows: list[int], max_new_tokens: int,
              seed: int, temperature: float) -> torch.Tensor:
    """The new ids ``# [len(rows), max_new_tokens]`` of one ``generate`` call on the prompts ``rows``."""
    ids, mask = left_pad([torch.tensor(prompt_ids[i]) for i in rows], pair.pad_token_id)
    kwargs = dict(attention_mask=mask.to(pair.target.device), max_new_tokens=max_new_tokens,
                  pad_token_id=pair.pad_token_id, **_sampling(method, temperature))
    if strategy is not None:
        kwargs["strategy"] = strategy
    torch.manual_seed(seed)
    with torch.no_grad():
        return pair.target.generate(ids.to(pair.target.device), **kwargs)[:, ids.shape[1]:].cpu()


def generate_all(pair: Pair, prompt_ids: list[list[int]], methods: list[str], args, log=print) -> dict:
    """Continuations of every prompt by every method: ``{method: Generations}``."""
    decoding.enable(pair.target)
    eos_ids = set(eos_token_ids(pair.target))  # what generate stops at: the model's own EOS
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding per batch
    batches = [order[k : k + args.batch_size] for k in range(0, len(order), args.batch_size)]
    strategies = {m: _strategy(m, pair.draft, args) for m in methods}
    results = {m: Generations(m) for m in methods}
    for method in methods:  # warm-up: one short untimed call each
        _generate(pair, prompt_ids, method, strategies[method], batches[0], 2, args.seed, args.temperature)
    for k, rows in enumerate(batches):
        for method in rotated(methods, k):
            out = {}
            seconds = time_calls(lambda: out.update(ids=_generate(pair, prompt_ids, method, strategies[method], rows,
                                                                  args.max_new_tokens, args.seed + k,
                                                                  args.temperature)),
                                 repeats=1, warmup=0, device=pair.target.device)[0]
            results[method].add(rows, out["ids"], seconds, eos_ids)
            _record_stats(results[method].stats, strategies[method])
        log(f"batch {k + 1}/{len(batches)} done")
    return results
