"""``decoding-bench``'s model pair: the draft and target it times, loaded from the registry, the hub or local
folders (:func:`hub_pair`), or the synthetic damped pair of a ``--synthetic`` spec (:func:`synthetic_pair`);
and how prompt text becomes ids for them (:func:`tokenize_prompts`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from decoding.evals.bench.prompts import Prompt

__all__ = ["SYNTHETIC_DEFAULTS", "SYNTHETIC_KEYS", "Pair", "hub_pair", "parse_synthetic", "synthetic_pair",
           "tokenize_prompts"]

# --synthetic keys -> damped_pair arguments.
SYNTHETIC_KEYS = {"layers": "num_layers", "hidden": "hidden_size", "vocab": "vocab_size",
                  "intermediate": "intermediate_size", "heads": "num_attention_heads",
                  "kv_heads": "num_key_value_heads", "damping": "damping", "head_scale": "head_scale"}
SYNTHETIC_DEFAULTS = {"num_layers": 8, "hidden_size": 512, "vocab_size": 8192, "intermediate_size": 2048}


@dataclass
class Pair:
    """A loaded target and draft, and how to turn prompt text into ids for them."""

    target: object
    draft: object
    name: str
    draft_name: str
    encode: Callable[[str], list[int]]
    pad_token_id: int
    eos_token_ids: list[int]
    tokenizer: object = None


def _eos_ids(model, tokenizer=None) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def synthetic_pair(spec: str, dtype: torch.dtype | None, device, seed: int) -> Pair:
    """The damped synthetic pair (:func:`decoding.model_pairs.synthetic.damped_pair`) of a ``--synthetic`` spec
    such as ``"layers=2,hidden=32,vocab=96"``; prompt text is mapped to ids byte by byte."""
    from decoding.model_pairs.synthetic import damped_pair

    settings = dict(SYNTHETIC_DEFAULTS)
    settings.update(parse_synthetic(spec))
    if "hidden_size" in parse_synthetic(spec) and "intermediate_size" not in parse_synthetic(spec):
        settings.pop("intermediate_size")  # Llama's ratio for a non-default width
    target, draft = damped_pair(**settings, seed=seed, dtype=dtype or torch.float32, device=device)
    vocab = settings["vocab_size"]

    def encode(text: str) -> list[int]:
        return [1 + b % (vocab - 1) for b in text.encode("utf-8")]

    shape = ", ".join(f"{k}={v}" for k, v in settings.items())
    return Pair(target, draft, f"synthetic damped pair ({shape})", "synthetic one-layer draft", encode, 0, [])


def parse_synthetic(spec: str) -> dict:
    """``"layers=2,hidden=32"`` -> ``{"num_layers": 2, "hidden_size": 32}`` (``ValueError`` on bad input)."""
    settings = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SYNTHETIC_KEYS:
            raise ValueError(f"bad --synthetic item {item!r}: expected KEY=VALUE with KEY in {', '.join(SYNTHETIC_KEYS)}")
        name = SYNTHETIC_KEYS[key.strip()]
        try:
            number = float(value) if name in ("damping", "head_scale") else int(value)
        except ValueError:
            raise ValueError(f"bad --synthetic value {item!r}: expected a number") from None
        if name not in ("damping", "head_scale") and number < 1:
            raise ValueError(f"bad --synthetic value {item!r}: must be >= 1")
        settings[name] = number
    return settings


def hub_pair(args, device) -> Pair:
    """Load ``--target``/``--draft`` through :func:`decoding.model_pairs.load_pair` (registry names, hub ids or
    local folders)."""
    from decoding.model_pairs import load_pair

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    device_map = args.device_map if args.device_map is not None else str(device)
    # The draft goes to the target's input device (load_pair's default), where the strategy needs it.
    loaded = load_pair(args.target, args.draft, dtype=dtype, device_map=device_map,
                       load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    target, draft, tokenizer = loaded.target, loaded.draft, loaded.tokenizer
    eos = _eos_ids(target, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = target.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    pad = int(pad[0] if isinstance(pad, (list, tuple)) else pad)
    spec = loaded.pair  # the registry entry, when the pair came from the registry unchanged
    name = spec.name if spec is not None else str(args.target)
    draft_name = f"{spec.name} draft" if spec is not None else str(args.draft or f"{args.target} draft")

    def encode(text: str) -> list[int]:
        if args.chat_template:
            return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=False))
        return list(tokenizer(text)["input_ids"])

    return Pair(target, draft, name, str(draft_name), encode, pad, eos, tokenizer)


def tokenize_prompts(pair: Pair, prompts: list[Prompt], max_prompt_tokens: int) -> list[Prompt]:
    """Fill ``ids`` of every prompt, keeping its last ``max_prompt_tokens`` tokens."""
    for prompt in prompts:
        ids = pair.encode(prompt.text)[-max_prompt_tokens:]
        if not ids:
            raise ValueError(f"prompt {prompt.id} has no tokens")
        prompt.ids = torch.tensor(ids, dtype=torch.int64)
    return prompts
