"""Vocabulary compatibility of two models that must agree on token ids, and mapping logits between them.

Models of one tokenizer family often differ only in embedding padding (Qwen2.5-0.5B has 151936 rows, 7B has
152064): ids below the smaller size mean the same tokens, the extra rows are never produced by the tokenizer.
Such pairs work; the draft never proposes an id outside the shared range.
"""

from __future__ import annotations

import torch

from .validation import article

# Embedding tables are padded to multiples of 64 or 128; larger gaps mean different tokenizers.
MAX_PADDING_ROWS = 128


def vocab_size(model) -> int:
    return model.config.get_text_config().vocab_size


def check_vocab_compatibility(target, other, tokenizers=None, role: str = "draft") -> None:
    """Raise ``ValueError`` unless ``other`` can propose or score tokens for ``target``.

    Args:
        target, other: transformers models (or anything with ``.config``).
        tokenizers: optional ``(target_tokenizer, other_tokenizer)``; when given they must map every shared
            id to the same token, whatever the embedding sizes.
    """
    size_target, size_other = vocab_size(target), vocab_size(other)
    if tokenizers is not None:
        check_tokenizers(*tokenizers, min(size_target, size_other), role)
        return
    if abs(size_target - size_other) > MAX_PADDING_ROWS:
        raise ValueError(
            f"vocab sizes differ too much to be embedding padding: target has {size_target} rows, {role} has "
            f"{size_other} (more than {MAX_PADDING_ROWS} apart). Use {article(role)} from the target's tokenizer family, "
            f"or pass tokenizers=(target_tokenizer, {role}_tokenizer) so that compatibility can be checked."
        )


def check_tokenizers(target_tokenizer, other_tokenizer, shared: int, role: str = "draft") -> None:
    """Both tokenizers must give every id below ``shared`` the same token string."""
    target_vocab = {i: t for t, i in target_tokenizer.get_vocab().items() if i < shared}
    other_vocab = {i: t for t, i in other_tokenizer.get_vocab().items() if i < shared}
    differing = sorted(i for i in target_vocab.keys() | other_vocab.keys() if target_vocab.get(i) != other_vocab.get(i))
    if differing:
        examples = ", ".join(f"{i}: {target_vocab.get(i)!r} vs {other_vocab.get(i)!r}" for i in differing[:3])
        raise ValueError(
            f"vocab mismatch: the target and {role} tokenizers disagree on {len(differing)} of the first {shared} "
            f"ids ({examples}). The {role} must share the target's tokenizer; choose one from the same family."
        )


def check_prompt_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, model, role: str) -> None:
    """Every real (unmasked) prompt id needs a row in ``model``'s embedding: a model whose logits enter the score
    cannot read an id it has no embedding for (a target's embedding padding, say)."""
    real = input_ids[attention_mask.bool()]
    size = vocab_size(model)
    if real.numel() and int(real.max()) >= size:
        raise ValueError(
            f"the prompt holds id {int(real.max())}, beyond the {role} model's vocabulary of {size} rows; its logits "
            f"enter every score, so it must read every prompt id. Remove such ids from the prompt, or use {article(role)} "
            "with the target's full vocabulary."
        )


def on_shared_ids(combine, helper_vocab: int, target_logits: torch.Tensor, *helper_logits: torch.Tensor):
    """``combine(target, *helpers)`` over the ids every model has, ``-inf`` for the rest: ids past the smallest
    vocabulary are embedding padding that some model cannot score. All logits ``# [..., V]`` over the target's
    ``V`` ids; ``helper_vocab`` is the smallest helper's size."""
    vocab = target_logits.shape[-1]
    shared = min(vocab, helper_vocab)
    mixed = combine(target_logits[..., :shared], *(h[..., :shared] for h in helper_logits))
    return to_vocab(mixed, vocab)


def to_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Logits ``# [..., V_other]`` as logits over ``size`` ids: extra ids cut, missing ids at -inf."""
    have = logits.shape[-1]
    if have == size:
        return logits
    if have > size:
        return logits[..., :size]
    pad = logits.new_full(logits.shape[:-1] + (size - have,), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
