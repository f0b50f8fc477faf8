"""Checks of a strategy call, each raising a ``ValueError`` that says what is wrong and what to do.

They run before any forward pass. ``enable``'s wrapper runs the first two before transformers' own setup too,
which would otherwise run an encoder or fail on an empty prompt with an IndexError.
"""

from __future__ import annotations

import torch

from . import hf_compat

# Model inputs the strategies know how to feed; anything else is refused rather than silently dropped.
ACCEPTED_MODEL_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep", *hf_compat.CACHE_ARGUMENTS}


def check_decoder_only(model, role: str = "target") -> None:
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"the {role} model is an encoder-decoder model; strategies need decoder-only models.")


def check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    empty = input_ids.shape[-1] == 0
    if not empty and attention_mask is not None:
        empty = bool((attention_mask.sum(dim=1) == 0).any())
    if empty:
        raise ValueError("empty prompt: every row needs at least one token (a BOS token will do).")
    if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the prompt is right-padded; pad on the left (tokenizer.padding_side = 'left').")


def check_call(strategy, model, input_ids, attention_mask, config, model_kwargs) -> None:
    """Every check of one ``generate`` call with ``strategy`` on target ``model``."""
    check_decoder_only(model)  # first: an encoder-decoder call also brings encoder_outputs
    if config.num_beams > 1:
        raise ValueError(
            f"num_beams={config.num_beams}: beam search cannot be combined with a decoding strategy; "
            "use num_beams=1 (greedy or sampling)."
        )
    unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in ACCEPTED_MODEL_KWARGS)
    if unknown:
        raise ValueError(
            f"{type(strategy).__name__} cannot feed model inputs {unknown}; pass input_ids and attention_mask only."
        )
    cache = hf_compat.generate_cache(model_kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError("a prefilled cache (past_key_values) cannot be reused by a strategy; pass the full prompt "
                         "instead.")
    for name in ("output_attentions", "output_hidden_states"):
        if getattr(config, name, False):
            raise ValueError(f"{name}=True is not supported with a decoding strategy.")
    check_prompt(input_ids, attention_mask)
    if input_ids.shape[0] > 1 and hf_compat.pad_token_tensor(config) is None:
        raise ValueError(
            "batch size > 1 needs a pad token to fill finished rows: set generation_config.pad_token_id "
            "(or tokenizer.pad_token = tokenizer.eos_token)."
        )
    for role, other in strategy.models().items():
        check_decoder_only(other, role)
        if other.device != model.device:
            raise ValueError(
                f"the {role} model is on {other.device} but the target is on {model.device}; "
                f"move it with .to({str(model.device)!r}) first."
            )
