"""``decoding-bench``'s methods, the columns of its grid: the target alone, transformers' ``assistant_model=``
(batch 1) and ``SpeculativeDecoding`` per draft length, the ``--variants`` methods (the ``static-target``
baseline among them: transformers' static cache and compiled forward), and the one-token ``prefill`` call."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import CompileConfig

import decoding
from decoding.evals.bench import variants as bench_variants
from decoding.evals.bench.variants import PER_G, Variant, use_draft_config
from decoding.proposers.eagle_head import Eagle3Head
from decoding.vocab import vocab_size

__all__ = ["Method", "compile_config", "generation_kwargs", "make_methods"]


@dataclass
class Method:
    """One column of the benchmark: how to generate a batch, and what it measured (the fields after
    ``strategy``: :class:`decoding.evals.bench.grid.RawMethod`)."""

    name: str
    kind: str
    g: int | None
    generate: Callable  # (ids, mask, **overrides of generate's kwargs) -> LongTensor [b, width + new]
    strategy: object = None
    seconds: list = field(default_factory=list)
    tokens: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    per_category: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)
    lossy: bool = False  # its greedy output may differ from the target's by design (cascades)
    draft_free: bool = False  # no draft model runs (prompt lookup): cost ratio c = 0
    build: Callable | None = None  # () -> a new strategy like ``strategy`` (the step split's profiled twin)
    split: dict | None = None  # per-step figures of --step-split (decoding.evals.bench.step_split)

    def raw(self) -> dict:
        """What :func:`decoding.evals.bench.grid.measure_share` reports of this method (a ``RawMethod``)."""
        return {"name": self.name, "kind": self.kind, "g": self.g, "seconds": self.seconds, "tokens": self.tokens,
                "stats": self.stats, "per_category": self.per_category, "rows": self.rows, "lossy": self.lossy,
                "draft_free": self.draft_free, "split": self.split}


def generation_kwargs(mode: str, max_new_tokens: int, pad_token_id: int, temperature: float) -> dict:
    """What every method passes to ``generate`` in ``mode``: pure temperature sampling, or greedy."""
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id}
    if mode == "greedy":
        return {**common, "do_sample": False}
    return {**common, "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def make_methods(target, draft, batch_size: int, draft_lengths: Sequence[int], kwargs: dict,
                 assisted: bool = True, variants: Sequence[Variant] = (), tokenizers: tuple | None = None,
                 cross_tokenizer: bool = False, cache_length: int | None = None) -> list[Method]:
    """``target`` first, then for each ``g``: ``assisted g`` (batch 1), ``speculative g`` and the per-``g``
    variants; then the variants without a ``g``; last ``prefill``, the target's ``generate`` of one new token: the
    prompt encoding every method pays before its first token, which :func:`decoding.evals.bench.cells.combine`
    subtracts to get decoding-only rates. ``tokenizers``: ``(target, draft)`` tokenizers given to the strategies;
    with ``cross_tokenizer`` (they disagree) transformers' methods get them too (universal assisted generation).
    ``cache_length``: the static cache's length of the ``static-target`` variant (the longest prompt plus the new
    tokens), fixed so that no call recompiles for another length. A ``draft`` that is a draft head
    (:class:`~decoding.proposers.eagle_head.Eagle3Head`) drafts in every library strategy; transformers'
    ``assistant_model=`` methods and cascades, which cannot use one, are left out
    (:func:`decoding.evals.bench.variants.head_skips`)."""
    assistant_tokenizers = tokenizers if cross_tokenizer else None
    if isinstance(draft, Eagle3Head):  # a draft head: the library's strategies only (decoding-bench --head)
        assisted, variants, _ = bench_variants.head_skips(assisted, variants)
    # transformers drafts across tokenizers (universal assisted generation) only between vocabularies of different
    # sizes; with equal sizes it would read the draft's ids as the target's.
    no_transformers_draft = cross_tokenizer and vocab_size(target) == vocab_size(draft)
    assisted = assisted and not no_transformers_draft
    variants = [v for v in variants if not (v.kind == "hf-dynamic" and no_transformers_draft)]
    methods = [Method("target", "target", None, _generate(target, kwargs))]
    for g in draft_lengths:
        if assisted and batch_size == 1:
            methods.append(Method(f"assisted g={g}", "assisted", g,
                                  _assisted(target, draft, g, kwargs, assistant_tokenizers)))
        methods.append(_strategy_method(f"speculative g={g}", "speculative", g, target, kwargs, functools.partial(
            decoding.SpeculativeDecoding, draft, num_draft_tokens=g, tokenizers=tokenizers)))
        methods += [_variant(v, target, draft, g, kwargs, tokenizers, assistant_tokenizers) for v in variants
                    if v.kind in PER_G and v.runs_at(batch_size)]
    methods += [_variant(v, target, draft, None, kwargs, tokenizers, assistant_tokenizers, cache_length)
                for v in variants if v.kind not in PER_G and v.runs_at(batch_size)]
    methods.append(Method("prefill", "prefill", None, _generate(target, kwargs, max_new_tokens=1)))
    return methods


def _generate(target, kwargs: dict, **fixed) -> Callable:
    """``target.generate`` of ``(ids, mask)`` with ``kwargs`` (any of which a call may override) and ``fixed`` (which
    no call overrides: the one-token ``prefill`` warms up on one token too)."""
    def generate(ids, mask, **overrides):
        return target.generate(ids, attention_mask=mask, **{**kwargs, **overrides, **fixed})

    return generate


def _strategy_method(name: str, kind: str, g: int | None, target, kwargs: dict, build: Callable,
                     around: Callable | None = None, **flags) -> Method:
    """A method generating with the strategy ``build()`` makes; ``build`` kept for the step split's twin;
    ``around()``: a context every call runs in (compiled forwards)."""
    strategy = build()
    generate = _generate(target, kwargs, strategy=strategy)
    if around is not None:
        generate = _within(generate, around)
    return Method(name, kind, g, generate, strategy, build=build, **flags)


def _within(generate: Callable, around: Callable) -> Callable:
    """``generate`` with every call inside the context ``around()`` makes."""
    def inside(ids, mask, **overrides):
        with around():
            return generate(ids, mask, **overrides)

    return inside


def _variant(variant: Variant, target, draft, g: int | None, kwargs: dict, tokenizers, assistant_tokenizers,
             cache_length: int | None = None) -> Method:
    """The method of one ``--variants`` item at ``g`` (None: a variant without a draft length)."""
    name = variant.label if g is None else f"{variant.label} g={g}"
    if variant.kind == "hf-lookup":
        return Method(name, variant.kind, g, _generate(target, kwargs, prompt_lookup_num_tokens=g), draft_free=True)
    if variant.kind == "hf-dynamic":
        return Method(name, variant.kind, g, _assisted(target, draft, None, kwargs, assistant_tokenizers))
    if variant.kind == "static-target":
        return Method("static target", variant.kind, None, _static_target(target, kwargs, cache_length))
    if variant.kind == "fast-target":
        return Method("fast target", variant.kind, None, _fast_target(target, kwargs))
    build = functools.partial(bench_variants.strategy, variant, draft, g, tokenizers)
    around = functools.partial(bench_variants.compiled_forwards, (target, draft)) \
        if variant.kind == "static-compiled" else None
    return _strategy_method(name, variant.kind, g, target, kwargs, build, around, lossy=variant.lossy,
                            draft_free=variant.kind == "lookup")


def compile_config(device):
    """transformers' ``CompileConfig`` of the ``static-target`` method on ``device``: ``dynamic=True`` (one
    compilation serves every batch size above 1, which torch specializes, where a static one would recompile per
    size: minutes each on an 8B-shaped model), otherwise transformers' defaults on CUDA
    (``mode="reduce-overhead"``: CUDA graphs, one per shape); elsewhere ``mode="default"``, and transformers' flag
    that lets ``generate`` compile off CUDA too (it compiles on accelerators only otherwise)."""
    if torch.device(device).type == "cuda":
        return CompileConfig(dynamic=True)
    config = CompileConfig(dynamic=True, mode="default")
    config._compile_all_devices = True  # transformers' own switch "for testing purposes": no public one
    return config


def _static_target(target, kwargs: dict, cache_length: int | None) -> Callable:
    """The target alone with a static KV cache of ``cache_length`` slots and its decoding forward compiled
    (``generate(..., cache_implementation="static", compile_config=...)``); the prompt's forward stays eager."""
    static = {"cache_implementation": "static", "compile_config": compile_config(target.device)}
    if cache_length is not None:
        static["max_cache_len"] = cache_length
    return _generate(target, kwargs, **static)


def _fast_target(target, kwargs: dict) -> Callable:
    """The target alone inside :func:`decoding.fast_cpu_linears` (a no-op off a CPU)."""
    return _within(_generate(target, kwargs), functools.partial(decoding.fast_cpu_linears, target))


def _assisted(target, draft, g: int | None, kwargs: dict, tokenizers: tuple | None = None):
    """transformers' ``assistant_model=``: ``g`` tokens a step, or (``g`` None) its default dynamic settings;
    with ``tokenizers`` (a draft of another tokenizer) its universal assisted generation."""
    # transformers reads these from the draft's own generation config only, set for the call and restored after.
    # A confidence threshold of 0 disables early stopping of the draft, so that it proposes exactly g tokens,
    # like the strategy.
    settings = bench_variants.hf_dynamic_settings() if g is None else {
        "num_assistant_tokens": g, "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0}

    across = {} if tokenizers is None else {"tokenizer": tokenizers[0], "assistant_tokenizer": tokenizers[1]}

    def generate(ids, mask, **overrides):
        with use_draft_config(draft, **settings):
            return target.generate(ids, attention_mask=mask, assistant_model=draft, **across,
                                   **{**kwargs, **overrides})

    return generate
