"""``decoding-bench --variants``: further methods measured beside the default columns (adaptive draft length,
block verification, prompt lookup alone or first with a draft head, transformers' prompt lookup and dynamic
assistant, speculative cascades, static caches with and without compiled forwards, and the target alone with
transformers' static cache and compiled forward or with the strategies' layout of a CPU's linear layers)."""

from __future__ import annotations

import argparse
import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import decoding

__all__ = ["ASSISTED_WITH_HEAD", "HEADLESS", "HEAD_ONLY", "HF_DYNAMIC_KEYS", "PER_G", "VARIANTS", "Variant",
           "compiled_forwards", "head_skips", "hf_dynamic_settings", "method_count", "parse_variants",
           "use_draft_config"]

# Variant name -> what it adds; "cascade" is given as cascade:RULE:THRESHOLD.
VARIANTS = {
    "adaptive": "SpeculativeDecoding(draft, num_draft_tokens='auto')",
    "block": "SpeculativeDecoding(draft, g, verification='block') per g",
    "lookup": "SpeculativeDecoding(PromptLookup(), g) per g: no draft model (c = 0)",
    "lookup-first": "SpeculativeDecoding(LookupFirst(head), g) per g: prompt lookup where a row's last 2-3 tokens "
                    "occurred before, the draft head elsewhere (--head only)",
    "hf-lookup": "transformers' prompt_lookup_num_tokens=g per g (batch 1)",
    "hf-dynamic": "transformers' assistant_model= with its default dynamic settings (batch 1)",
    "cascade": "cascade:RULE:THRESHOLD, SpeculativeCascade(draft, RULE, THRESHOLD, g) per g (lossy)",
    "fast-target": "the target alone inside decoding.fast_cpu_linears: the layout of a CPU's linear layers that "
                   "the strategies' forwards use, without speculation (a baseline)",
    "static-target": "the target alone, transformers' static cache and compiled forward (a baseline; meant for "
                     "CUDA, slow to compile on a CPU)",
    "static": "SpeculativeDecoding(draft, g, cache='static') per g: fixed shapes every step",
    "static-compiled": "cache='static' per g, with the target's and draft's forwards through torch.compile "
                       "(CUDA graphs on CUDA: mode='reduce-overhead'; meant for CUDA, slow to compile on a CPU)",
}
PER_G = ("block", "lookup", "lookup-first", "hf-lookup", "cascade", "static", "static-compiled")  # one per g
HEAD_ONLY = ("lookup-first",)  # variants that need a draft head (decoding-bench --head)
BATCH_1_ONLY = ("hf-lookup", "hf-dynamic")
# Variants that cannot draft with a draft head (decoding-bench --head), and why: they are left out, with a note.
HEADLESS = {
    "hf-dynamic": "transformers' assistant_model= runs the draft as a causal LM on token ids, while a draft head "
                  "reads the target's hidden states",
    "cascade": "SpeculativeCascade's deferral rules read a draft model's law over the target's whole vocabulary "
               "(it refuses a draft head)",
}
ASSISTED_WITH_HEAD = ("assisted g (transformers' assistant_model=) skipped, as with --no-assisted: it runs the draft "
                      "as a causal LM on token ids, while a draft head reads the target's hidden states")
# The draft's generation-config fields transformers' assisted generation reads.
HF_DYNAMIC_KEYS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


@dataclass(frozen=True)
class Variant:
    """One ``--variants`` item: ``kind`` (a key of :data:`VARIANTS`), and for a cascade its rule and threshold."""

    kind: str
    rule: str | None = None
    threshold: float | None = None

    @property
    def label(self) -> str:
        return f"cascade {self.rule}:{self.threshold:g}" if self.kind == "cascade" else self.kind

    @property
    def lossy(self) -> bool:
        return self.kind == "cascade"

    def runs_at(self, batch_size: int) -> bool:
        return self.kind not in BATCH_1_ONLY or batch_size == 1


def _known() -> str:
    return ", ".join(k if k != "cascade" else "cascade:RULE:THRESHOLD" for k in VARIANTS)


def _cascade(item: str) -> Variant:
    from decoding.cascade import Cascade

    try:
        cascade = Cascade.parse(item)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad variant: {error}") from None
    return Variant("cascade", cascade.rule, cascade.threshold)


def parse_variants(text: str) -> list[Variant]:
    """``"adaptive,cascade:chow:0.3"`` -> variants (duplicates dropped); an unknown name lists the known ones."""
    out = []
    for item in (x for x in text.replace(" ", "").split(",") if x):
        if item.startswith("cascade:") or item == "cascade":
            out.append(_cascade(item))
        elif item in VARIANTS:
            out.append(Variant(item))
        else:
            raise argparse.ArgumentTypeError(f"unknown variant {item!r}; known variants: {_known()}")
    return list(dict.fromkeys(out))


def head_skips(assisted: bool, variants: Sequence[Variant]) -> tuple[bool, list[Variant], list[str]]:
    """With a draft head as the draft: ``(assisted, variants, notes)``, without the methods that cannot use a head
    (transformers' ``assistant_model=``, :data:`HEADLESS`), and one note per method left out."""
    notes = [ASSISTED_WITH_HEAD] if assisted else []
    kept = []
    for variant in variants:
        if variant.kind in HEADLESS:
            notes.append(f"{variant.label} skipped: {HEADLESS[variant.kind]}")
        else:
            kept.append(variant)
    return False, kept, notes


def method_count(variants: Sequence[Variant], batch_size: int, num_draft_lengths: int) -> int:
    """The methods ``variants`` add at ``batch_size`` (for the progress bar)."""
    return sum(num_draft_lengths if v.kind in PER_G else 1 for v in variants if v.runs_at(batch_size))


def hf_dynamic_settings() -> dict:
    """transformers' own defaults of :data:`HF_DYNAMIC_KEYS` in the installed version (5.24: 20 tokens,
    "constant" schedule, confidence threshold 0.4, which it re-tunes during the call with scikit-learn)."""
    from transformers import GenerationConfig

    fallback = {"num_assistant_tokens": 20, "num_assistant_tokens_schedule": "constant",
                "assistant_confidence_threshold": 0.4}
    try:
        defaults = GenerationConfig._get_default_generation_params()
    except AttributeError:  # older versions set them in GenerationConfig.__init__
        defaults = vars(GenerationConfig())
    return {key: defaults.get(key, fallback[key]) if defaults.get(key) is not None else fallback[key]
            for key in HF_DYNAMIC_KEYS}


@contextlib.contextmanager
def use_draft_config(draft, **values):
    """Set fields of ``draft.generation_config`` for one call and restore them after, so that no method sees
    another's assisted-generation settings."""
    config = draft.generation_config
    saved = {key: getattr(config, key, None) for key in values}
    for key, value in values.items():
        setattr(config, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(config, key, value)


def strategy(variant: Variant, draft, g: int | None, tokenizers: tuple | None = None):
    """The library strategy of ``variant`` at ``g`` (None for transformers' own methods); ``tokenizers``: the
    pair's ``(target, draft)`` tokenizers, when the draft has its own. Each call builds a new one (the step
    split builds a profiled twin so)."""
    if variant.kind == "adaptive":
        return decoding.SpeculativeDecoding(draft, num_draft_tokens="auto", tokenizers=tokenizers)
    if variant.kind == "block":
        return decoding.SpeculativeDecoding(draft, num_draft_tokens=g, verification="block", tokenizers=tokenizers)
    if variant.kind == "lookup":
        return decoding.SpeculativeDecoding(decoding.PromptLookup(), num_draft_tokens=g)
    if variant.kind == "lookup-first":
        return decoding.SpeculativeDecoding(decoding.LookupFirst(draft), num_draft_tokens=g)
    if variant.kind == "cascade":
        return decoding.SpeculativeCascade(draft, variant.rule, variant.threshold, num_draft_tokens=g)
    if variant.kind in ("static", "static-compiled"):
        return decoding.SpeculativeDecoding(draft, num_draft_tokens=g, cache="static", tokenizers=tokenizers)
    return None


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its compiled forward


@contextlib.contextmanager
def compiled_forwards(models, backend: str = "inductor"):
    """Route the forwards of ``models`` (transformers models; others are left alone) through ``torch.compile`` for
    the duration, compiling once per model: ``mode="reduce-overhead"`` (CUDA graphs) on CUDA, fixed shapes
    (``dynamic=False``: a static cache's shapes do not change between steps)."""
    import torch
    from transformers import PreTrainedModel

    models = [m for m in models if isinstance(m, PreTrainedModel)]
    saved = [(m, m.__dict__.get("forward")) for m in models]
    for model in models:
        if model not in _COMPILED:
            mode = "reduce-overhead" if model.device.type == "cuda" and backend == "inductor" else None
            _COMPILED[model] = torch.compile(model.forward, mode=mode, dynamic=False, backend=backend)
        model.forward = _COMPILED[model]
    # Target and draft share their class's forward, and each shape is a graph of its own (prompt, step, batch
    # sizes): dynamo's default of 8 per function would fall back to eager after them.
    try:
        with torch._dynamo.config.patch(recompile_limit=max(64, torch._dynamo.config.recompile_limit)):
            yield
    finally:
        for model, own in saved:
            if own is None:
                del model.forward
            else:
                model.forward = own
