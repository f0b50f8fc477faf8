"""Checks of a strategy call, each raising a ``ValueError`` that says what is wrong and what to do.

They run before any forward pass. ``enable``'s wrapper runs the first two before transformers' own setup too,
which would otherwise run an encoder or fail on an empty prompt with an IndexError.
"""

from __future__ import annotations

import math

import torch
from transformers.generation import GenerationMode

from . import hf_compat

# Model inputs the strategies know how to feed; anything else is refused rather than silently dropped.
ACCEPTED_MODEL_KWARGS = {"attention_mask", "position_ids", "use_cache", "logits_to_keep", *hf_compat.CACHE_ARGUMENTS}


def check_model(model, role: str) -> None:
    """A strategy's helper model must be a transformers model (``torch.nn.Module`` with a ``config``)."""
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"the {role} model must be a transformers model (a PreTrainedModel, e.g. from "
                        f"AutoModelForCausalLM.from_pretrained), got {type(model).__name__}")


def article(role: str) -> str:
    """``role`` with its indefinite article, for messages: "a draft", "an amateur"."""
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"


def check_int(value, name: str, minimum: int) -> None:
    """An ``int`` (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_real(value, name: str) -> None:
    """A finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_decoder_only(model, role: str = "target") -> None:
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"the {role} model is an encoder-decoder model; strategies need decoder-only models.")


def check_prompt(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {tuple(input_ids.shape)}; wrap a single "
                         "prompt as input_ids[None].")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
    if input_ids.shape[0] == 0:
        raise ValueError("empty batch: input_ids has 0 rows; pass at least one prompt.")
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids "
                             f"{tuple(input_ids.shape)}: they must match.")
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token).")
    empty = input_ids.shape[-1] == 0
    if not empty and attention_mask is not None:
        empty = bool((attention_mask.sum(dim=1) == 0).any())
    if empty:
        raise ValueError("empty prompt: every row needs at least one token (a BOS token will do).")
    if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("the prompt is right-padded; pad on the left (tokenizer.padding_side = 'left').")


def check_ids_in_vocab(input_ids: torch.Tensor, attention_mask: torch.Tensor, model) -> None:
    """Real prompt ids must be in ``[0, vocab)`` of the target (where an embedding lookup would fail later)."""
    real = input_ids[attention_mask.bool()]
    size = model.config.get_text_config().vocab_size
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= size):
        bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
        raise ValueError(f"the prompt holds token id {bad}, outside the target's vocabulary [0, {size}).")


def learned_position_limit(model) -> int | None:
    """How many positions ``model`` can encode when it learns absolute position embeddings (GPT-2's ``wpe``, OPT's
    and BioGPT's ``embed_positions`` after their offset): past that its embedding lookup fails with an IndexError.
    None for rotary, ALiBi or sinusoidal positions, which have no hard limit."""
    limits = [module.num_embeddings - getattr(module, "offset", 0) for name, module in model.named_modules()
              if isinstance(module, torch.nn.Embedding) and _is_position_table(name.rsplit(".", 1)[-1])]
    return min(limits, default=None)


def _is_position_table(name: str) -> bool:
    return name == "wpe" or "position" in name


def check_positions(strategy, config) -> None:
    """Every helper model must encode the positions a call can reach: ``max_length`` plus the draft positions a
    step writes beyond it."""
    needed = config.max_length + strategy.draft_length()
    for role, other in strategy.models().items():
        limit = learned_position_limit(other)
        if limit is not None and needed > limit:
            raise ValueError(
                f"the {role} model learns absolute position embeddings for {limit} positions, but this call can "
                f"reach position {needed} (max_length {config.max_length}, prompt included, + "
                f"{strategy.draft_length()} draft positions): shorten the prompt or max_new_tokens to at most "
                f"{limit - strategy.draft_length()} tokens in all, or use {article(role)} model with more positions."
            )


def check_call(strategy, model, input_ids, attention_mask, config, model_kwargs) -> None:
    """Every check of one ``generate`` call with ``strategy`` on target ``model``."""
    check_decoder_only(model)  # first: an encoder-decoder call also brings encoder_outputs
    if config.num_beams > 1:
        raise ValueError(
            f"num_beams={config.num_beams}: beam search cannot be combined with a decoding strategy; "
            "use num_beams=1 (greedy or sampling)."
        )
    mode = config.get_generation_mode()
    if mode not in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE):
        raise ValueError(
            f"the generation settings select transformers' {mode.value!r} mode (penalty_alpha with top_k > 1, "
            "dola_layers, prompt_lookup_num_tokens, assistant_model, beams or constraints), which cannot run inside "
            "a decoding strategy: remove those settings, or call generate without strategy=."
        )
    for name in ("output_attentions", "output_hidden_states"):  # before the model inputs, which may carry them
        if getattr(config, name, False) or model_kwargs.get(name):
            raise ValueError(f"{name}=True is not supported with a decoding strategy.")
    unknown = sorted(k for k, v in model_kwargs.items() if v is not None and k not in ACCEPTED_MODEL_KWARGS)
    if unknown:
        raise ValueError(
            f"{type(strategy).__name__} cannot feed model inputs {unknown}; pass input_ids and attention_mask only."
        )
    cache = hf_compat.generate_cache(model_kwargs)
    if cache is not None and cache.get_seq_length() > 0:
        raise ValueError("a prefilled cache (past_key_values) cannot be reused by a strategy; pass the full prompt "
                         "instead.")
    check_prompt(input_ids, attention_mask)
    check_ids_in_vocab(input_ids, attention_mask, model)
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
    check_positions(strategy, config)
