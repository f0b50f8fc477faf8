"""The drop-in entry point: ``decoding.enable(model)`` makes ``model.generate`` accept ``strategy=``."""

from __future__ import annotations

import functools

from .strategy import Strategy


def enable(model):
    """Let ``model.generate(..., strategy=...)`` run a decoding strategy; returns ``model``.

    Without ``strategy`` (or with ``strategy=None``) ``generate`` is transformers' own, untouched. With one, the
    call goes through transformers' ``custom_generate`` hook, so generation-config merging, the attention
    mask, logits processors and stopping criteria are transformers' own; ``streamer=`` is handed to the
    strategy. Calling ``enable`` twice is harmless.
    """
    if getattr(model.generate, "_decoding_enabled", False):
        return model
    original = model.generate

    @functools.wraps(original)
    def generate(*args, strategy: Strategy | None = None, **kwargs):
        if strategy is None:
            return original(*args, **kwargs)
        if not isinstance(strategy, Strategy):
            raise TypeError(f"strategy must be a decoding strategy such as decoding.SpeculativeDecoding, got {type(strategy).__name__}")
        if kwargs.get("custom_generate") is not None:
            raise ValueError("pass either strategy= or custom_generate=, not both")
        if kwargs.get("assistant_model") is not None:
            raise ValueError("pass either strategy= or assistant_model=, not both")
        streamer = kwargs.pop("streamer", None)
        return original(*args, custom_generate=strategy, decoding_streamer=streamer, **kwargs)

    generate._decoding_enabled = True
    model.generate = generate
    return model
