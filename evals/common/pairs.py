"""The model pair every benchmark runs: a target and its draft (the amateur of the contrastive methods), loaded
from the registry, the hub or local folders (:func:`load`), or the synthetic damped pair (:func:`synthetic`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SYNTHETIC_DEFAULTS", "Pair", "eos_token_ids", "load", "pad_token_id", "synthetic"]

# The synthetic pair's shape where a caller gives none (decoding.model_pairs.synthetic.damped_pair arguments).
SYNTHETIC_DEFAULTS = {"num_layers": 8, "hidden_size": 512, "vocab_size": 8192, "intermediate_size": 2048}


@dataclass
class Pair:
    """A loaded target and draft, what reports call them, and how prompt text becomes ids for them."""

    target: object
    draft: object
    name: str
    draft_name: str
    encode: Callable[[str], list[int]] | None
    pad_token_id: int
    eos_token_ids: list[int]
    tokenizer: object = None
    # (target, draft) tokenizers when the draft has its own, for the strategies to check (or to draft across when
    # they disagree: ``cross_tokenizer``); None when the draft reads the target's ids.
    tokenizers: tuple | None = None
    cross_tokenizer: bool = False
    # The draft head's folder or hub id when the draft is an EAGLE-3 head reading the target's hidden states
    # (load(..., head=...)); None for a draft model.
    head: str | None = None

    @property
    def draft_is_head(self) -> bool:
        """Whether the draft is a draft head (:class:`~decoding.proposers.eagle_head.Eagle3Head`): it drafts from
        the target's features, so only the library's own strategies can run it."""
        from decoding.proposers.eagle_head import Eagle3Head

        return isinstance(self.draft, Eagle3Head)


def eos_token_ids(model, tokenizer=None) -> list[int]:
    """The model's EOS ids (its generation config's; else the tokenizer's, when one is given)."""
    eos = model.generation_config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def pad_token_id(model, tokenizer, eos: list[int]) -> int:
    """The tokenizer's pad id, else the model's generation config's, else the first EOS id, else 0."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    return int(pad[0] if isinstance(pad, (list, tuple)) else pad)


def synthetic(settings: dict | None = None, *, seed: int = 0, dtype: torch.dtype | None = None, device=None,
              tokenizer=None, name: str | None = None) -> Pair:
    """The damped synthetic pair (:func:`decoding.model_pairs.synthetic.damped_pair`, no EOS, pad id 0):
    ``settings`` over :data:`SYNTHETIC_DEFAULTS` (a width without an MLP width gets Llama's ratio). Prompt text is
    encoded by ``tokenizer`` when given, else byte by byte."""
    from decoding.model_pairs.synthetic import damped_pair

    given = dict(settings or {})
    settings = {**SYNTHETIC_DEFAULTS, **given}
    if "hidden_size" in given and "intermediate_size" not in given:
        settings.pop("intermediate_size")
    target, draft = damped_pair(**settings, seed=seed, dtype=dtype or torch.float32, device=device)
    vocab = settings["vocab_size"]

    def encode(text: str) -> list[int]:
        if tokenizer is not None:
            return list(tokenizer(text)["input_ids"])
        return [1 + b % (vocab - 1) for b in text.encode("utf-8")]

    shape = ", ".join(f"{k}={v}" for k, v in settings.items())
    pad = tokenizer.pad_token_id if tokenizer is not None else 0
    return Pair(target, draft, name or f"synthetic damped pair ({shape})", "synthetic one-layer draft", encode,
                pad, [], tokenizer)


def load(target: str, draft: str | None = None, *, dtype=None, device_map=None, load_in_8bit: bool = False,
         load_in_4bit: bool = False, chat_template: bool = False, name: str | None = None,
         head: bool | str | None = None) -> Pair:
    """``target`` and ``draft`` through :func:`decoding.model_pairs.loading.load_pair` (registry names, hub ids or local
    folders); prompts encoded by the target's tokenizer, in its chat template with ``chat_template``. ``head``: draft
    with an EAGLE-3 draft head instead of a draft model (``True``: the registry pair's shipped head; else its folder
    or hub id; exclusive with ``draft``), loaded in the target's dtype on its device, with the target's tokenizer."""
    from decoding.model_pairs.loading import load_pair

    from decoding.token_maps import tokenizers_agree

    # A draft of another tokenizer family is a cross-tokenizer pair, not an error: the strategies check the
    # vocabularies of a draft that shares the target's tokenizer.
    loaded = load_pair(target, draft, dtype=dtype, device_map=device_map, load_in_8bit=load_in_8bit,
                       load_in_4bit=load_in_4bit, check_tokenizers=False, head=head or False)
    tokenizer = loaded.tokenizer
    tokenizers = None if loaded.draft_tokenizer is tokenizer else (tokenizer, loaded.draft_tokenizer)
    eos = eos_token_ids(loaded.target, tokenizer)
    spec = loaded.pair  # the registry entry, when the pair came from the registry unchanged (or with its own head)
    head_spec = None
    if head:
        head_spec = spec.head if head is True else str(head)
        draft_name = f"{spec.name} draft head" if spec is not None else f"draft head {head_spec}"
    else:
        draft_name = f"{spec.name} draft" if spec is not None else str(draft or f"{target} draft")
    cross_tokenizer = tokenizers is not None and not tokenizers_agree(*tokenizers)
    if cross_tokenizer:
        draft_name += " (another tokenizer: cross-tokenizer drafts; assisted = universal assisted generation)"

    def encode(text: str) -> list[int]:
        if chat_template:
            return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=False))
        return list(tokenizer(text)["input_ids"])

    return Pair(loaded.target, loaded.draft, name or (spec.name if spec is not None else str(target)), draft_name,
                encode, pad_token_id(loaded.target, tokenizer, eos), eos, tokenizer, tokenizers, cross_tokenizer,
                head_spec)
