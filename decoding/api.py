"""The drop-in entry point: ``decoding.enable(model)`` makes ``model.generate`` accept ``strategy=``."""

from __future__ import annotations

import copy
import functools
import types

import torch
from transformers.generation.stopping_criteria import StopStringCriteria, StoppingCriteriaList

from . import hf_compat
from .strategy import Strategy
from .validation import check_decoder_only, check_prompt


def enable(model):
    """Let ``model.generate(..., strategy=...)`` run a decoding strategy; returns ``model``.

    Without ``strategy`` (or with ``strategy=None``) ``generate`` is transformers' own, untouched. With one, the
    call goes through transformers' ``custom_generate`` hook, so generation-config merging, the attention
    mask, logits processors and stopping criteria are transformers' own; ``streamer=`` is handed to the
    strategy. Calling ``enable`` twice is harmless. The hook is a method bound to ``model``, so a
    ``copy.deepcopy`` of an enabled model generates with the copy's weights.
    """
    if not is_enabled(model):
        model.generate = types.MethodType(_generate, model)
    return model


def is_enabled(model) -> bool:
    """Whether :func:`enable` was called on ``model``."""
    return getattr(model.generate, "__func__", None) is _generate


def _generate(self, *args, strategy: Strategy | None = None, **kwargs):
    """transformers' ``generate``, plus ``strategy=`` (see :func:`enable`)."""
    original = functools.partial(type(self).generate, self)
    if strategy is None:
        return original(*args, **kwargs)
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a decoding strategy such as decoding.SpeculativeDecoding, got {type(strategy).__name__}")
    if kwargs.get("custom_generate") is not None:
        raise ValueError("pass either strategy= or custom_generate=, not both")
    if kwargs.get("assistant_model") is not None:
        raise ValueError("pass either strategy= or assistant_model=, not both")
    check_decoder_only(self)
    input_ids = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
    if input_ids is not None and not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor of shape [batch, length] (e.g. tokenizer(..., "
                        f"return_tensors='pt')), got {type(input_ids).__name__}")
    if input_ids is not None:
        mask = kwargs.get("attention_mask")
        check_prompt(input_ids, mask if isinstance(mask, torch.Tensor) else None)
    streamer = kwargs.pop("streamer", None)
    kwargs = _stop_strings_as_criteria(self, kwargs)
    return hf_compat.generate_with_strategy(original, strategy, streamer, *args, **kwargs)


def _stop_strings_as_criteria(model, kwargs: dict) -> dict:
    """Turn ``stop_strings`` (a keyword, or set in the generation config passed or the model's) with
    ``tokenizer=`` into a ``StopStringCriteria`` among ``stopping_criteria``.

    transformers drops ``tokenizer=`` before it calls a ``custom_generate`` callable, so its own handling of
    ``stop_strings`` would raise for want of a tokenizer; the criterion built here is the one it would build, and
    ``generate`` is handed no stop strings (the user's generation config is copied, never modified).
    """
    tokenizer, provided = kwargs.get("tokenizer"), kwargs.get("generation_config")
    stop_strings = next((s for s in (kwargs.get("stop_strings"), getattr(provided, "stop_strings", None),
                                     model.generation_config.stop_strings) if s is not None), None)
    if stop_strings is None or tokenizer is None:
        return kwargs
    kwargs = dict(kwargs)
    if provided is not None:
        kwargs["generation_config"] = copy.deepcopy(provided)
        kwargs["generation_config"].stop_strings = None
    # generate fills a provided config's unset fields from the model's: a keyword None clears it last.
    if provided is None or model.generation_config.stop_strings is not None:
        kwargs["stop_strings"] = None
    else:
        kwargs.pop("stop_strings", None)
    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
    kwargs["stopping_criteria"] = criteria
    return kwargs
