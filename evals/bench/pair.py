"""``decoding-bench``'s model pair from its command line: ``--target``/``--draft`` loaded, or the synthetic
damped pair of a ``--synthetic`` spec such as ``layers=2,hidden=32,vocab=96``."""

from __future__ import annotations

import argparse

import torch

from decoding.evals.common import pairs
from decoding.evals.common.pairs import Pair

__all__ = ["SYNTHETIC_KEYS", "load", "parse_synthetic"]

# --synthetic keys -> damped_pair arguments.
SYNTHETIC_KEYS = {"layers": "num_layers", "hidden": "hidden_size", "vocab": "vocab_size",
                  "intermediate": "intermediate_size", "heads": "num_attention_heads",
                  "kv_heads": "num_key_value_heads", "damping": "damping", "head_scale": "head_scale"}
FLOAT_KEYS = ("damping", "head_scale")


def parse_synthetic(spec: str) -> dict:
    """``"layers=2,hidden=32"`` -> ``{"num_layers": 2, "hidden_size": 32}`` (``ValueError`` on bad input)."""
    settings = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SYNTHETIC_KEYS:
            raise ValueError(f"bad --synthetic item {item!r}: expected KEY=VALUE with KEY in {', '.join(SYNTHETIC_KEYS)}")
        name = SYNTHETIC_KEYS[key.strip()]
        try:
            number = float(value) if name in FLOAT_KEYS else int(value)
        except ValueError:
            raise ValueError(f"bad --synthetic value {item!r}: expected a number") from None
        if name not in FLOAT_KEYS and number < 1:
            raise ValueError(f"bad --synthetic value {item!r}: must be >= 1")
        settings[name] = number
    return settings


def load(args: argparse.Namespace, device: torch.device) -> Pair:
    """The pair of the command line, on ``device`` (or spread by ``--device-map``)."""
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.synthetic is not None:
        return pairs.synthetic(parse_synthetic(args.synthetic), seed=args.seed, dtype=dtype, device=device)
    # The draft goes to the target's input device (load_pair's default), where the strategy needs it.
    device_map = args.device_map if args.device_map is not None else str(device)
    return pairs.load(args.target, args.draft, dtype=dtype, device_map=device_map, load_in_8bit=args.load_in_8bit,
                      load_in_4bit=args.load_in_4bit, chat_template=args.chat_template)
