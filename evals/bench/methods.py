"""``decoding-bench``'s methods, the columns of its grid: the target alone, transformers' ``assistant_model=``
(batch 1) and ``SpeculativeDecoding`` per draft length, and the one-token ``prefill`` call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import decoding

__all__ = ["Method", "generation_kwargs", "make_methods"]


@dataclass
class Method:
    """One column of the benchmark: how to generate a batch, and what it measured (the fields after
    ``strategy``: :class:`decoding.evals.bench.grid.RawMethod`)."""

    name: str
    kind: str
    g: int | None
    generate: Callable  # (ids, mask) -> LongTensor [b, width + new]
    strategy: object = None
    seconds: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    per_category: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    def raw(self) -> dict:
        """What :func:`decoding.evals.bench.grid.measure_share` reports of this method (a ``RawMethod``)."""
        return {"name": self.name, "kind": self.kind, "g": self.g, "seconds": self.seconds, "tokens": self.tokens,
                "stats": self.stats, "per_category": self.per_category, "rows": self.rows}


def generation_kwargs(mode: str, max_new_tokens: int, pad_token_id: int, temperature: float) -> dict:
    """What every method passes to ``generate`` in ``mode``: pure temperature sampling, or greedy."""
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id}
    if mode == "greedy":
        return {**common, "do_sample": False}
    return {**common, "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def make_methods(target, draft, batch_size: int, draft_lengths: Sequence[int], kwargs: dict,
                 assisted: bool = True) -> list[Method]:
    """``target`` first, then for each ``g``: ``assisted g`` (batch 1) and ``speculative g``; last ``prefill``,
    the target's ``generate`` of one new token: the prompt encoding every method pays before its first token,
    which :func:`decoding.evals.bench.cells.combine` subtracts to get decoding-only rates."""
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
