"""Shape-first hypothesis strategies for generation and kernel tests.

Shapes are drawn before contents (batch size, then each row's prompt length; for kernels ``(B, g, V)``, then
settings, then values), so hypothesis shrinks towards small batches and short prompts. ``min_*``/``max_*``
bounds are inclusive; tensors are built on the CPU. At the end: probability laws for the verification kernels,
and contrastive decoding's settings.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from models import EOS_ID, FIRST_REAL_ID, PAD_ID, VOCAB


def batch_sizes(min_size: int = 1, max_size: int = 8):
    """Batch sizes."""
    return st.integers(min_size, max_size)


def draft_lengths(min_size: int = 1, max_size: int = 8):
    """``num_draft_tokens`` values."""
    return st.integers(min_size, max_size)


def new_token_counts(min_size: int = 1, max_size: int = 12):
    """``max_new_tokens`` values."""
    return st.integers(min_size, max_size)


def prompt_lengths(min_size: int = 1, max_size: int = 8):
    """Real (unpadded) prompt lengths."""
    return st.integers(min_size, max_size)


def seeds():
    """Seeds in ``[0, 2**31 - 1]``."""
    return st.integers(0, 2**31 - 1)


@st.composite
def prompts(
    draw,
    vocab_size: int = VOCAB,
    batch_size=None,
    min_length: int = 1,
    max_length: int = 8,
    pad_token_id: int = PAD_ID,
    low: int = FIRST_REAL_ID,
    ragged: bool = True,
):
    """A left-padded prompt batch ``(input_ids, attention_mask)``, both ``torch.int64 [B, P]``.

    ``batch_size=None`` draws it from ``batch_sizes()``; an int or a strategy is also accepted. Every row has
    ``min_length``..``max_length`` real tokens drawn from ``[low, vocab_size)`` (so never the pad, BOS or EOS id
    by default), aligned on the right: the last column is real in every row, padded slots hold ``pad_token_id``
    with mask 0, and ``P`` is the longest row. ``ragged=False`` gives every row the same length (no padding).
    """
    if batch_size is None:
        batch_size = batch_sizes()
    if not isinstance(batch_size, int):
        batch_size = draw(batch_size)
    if ragged:
        lengths = [draw(prompt_lengths(min_length, max_length)) for _ in range(batch_size)]
    else:
        lengths = [draw(prompt_lengths(min_length, max_length))] * batch_size
    width = max(lengths)
    input_ids = torch.full((batch_size, width), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros(batch_size, width, dtype=torch.int64)
    for row, length in enumerate(lengths):
        tokens = draw(st.lists(st.integers(low, vocab_size - 1), min_size=length, max_size=length))
        input_ids[row, width - length :] = torch.tensor(tokens, dtype=torch.int64)
        attention_mask[row, width - length :] = 1
    return input_ids, attention_mask


@st.composite
def eos_choices(draw, tokens, absent: int | None = None):
    """An ``eos_token_id`` for ``generate``: an ``int`` or a ``list[int]`` of 1-3 distinct ids, never ``None``
    (use ``st.none() | eos_choices(...)`` for an optional EOS).

    Ids come from ``tokens`` (a non-empty sequence, e.g. tokens the target's greedy continuation produces, so
    that early stopping really happens), optionally mixed with ``absent`` (an id that never occurs); the first id
    always comes from ``tokens``.
    """
    tokens = sorted(set(int(t) for t in tokens))
    if not tokens:
        raise ValueError("eos_choices needs at least one candidate token")
    first = draw(st.sampled_from(tokens))
    form = draw(st.sampled_from(["int", "list"]))
    if form == "int":
        return first
    others = draw(st.lists(st.sampled_from(tokens + ([absent] if absent is not None else [])), max_size=2))
    return list(dict.fromkeys([first, *others]))


def vocab_sizes(min_size: int = 2, max_size: int = 64):
    """Vocabulary sizes (any value, no alignment)."""
    return st.integers(min_size, max_size)


@st.composite
def kernel_shapes(draw, max_batch: int = 8, max_g: int = 8, min_vocab: int = 2, max_vocab: int = 64, min_g: int = 1):
    """``(B, g, V)`` for verification-shaped tensors ``[B, g+1, V]``."""
    return draw(batch_sizes(1, max_batch)), draw(draft_lengths(min_g, max_g)), draw(vocab_sizes(min_vocab, max_vocab))


@st.composite
def processing_settings(draw, vocab: int | None = None):
    """``(temperature, top_k, top_p)``, each independently off or on: temperature 1.0 or in [0.3, 2.5]; top_k
    0 (off) or 1..``vocab`` (up to 100 when ``vocab`` is None); top_p 1.0 (off) or in [0.05, 0.99]."""
    temperature = draw(st.one_of(st.just(1.0), st.floats(0.3, 2.5)))
    top_k = draw(st.one_of(st.just(0), st.integers(1, vocab if vocab is not None else 100)))
    top_p = draw(st.one_of(st.just(1.0), st.floats(0.05, 0.99)))
    return temperature, top_k, top_p


@st.composite
def logit_tensors(draw, shape, ties=None):
    """A float32 tensor of ``shape``: continuous scores (normal, scale 0.5..6) or, with ``ties`` (drawn when
    None), small integers in [-3, 2] with many exact ties."""
    seed = draw(seeds())
    gen = torch.Generator().manual_seed(seed)
    if ties is None:
        ties = draw(st.booleans())
    if ties:
        return torch.randint(-3, 3, tuple(shape), generator=gen).to(torch.float32)
    scale = draw(st.floats(0.5, 6.0))
    return torch.randn(tuple(shape), generator=gen) * scale


def kernel_dtypes():
    """Kernel input dtypes: float32, float16 or bfloat16."""
    return st.sampled_from([torch.float32, torch.float16, torch.bfloat16])


def cross_tokenizer_modes():
    """How a draft with another tokenizer proposes target tokens: ``"string"`` or ``"tli"``."""
    return st.sampled_from(["string", "tli"])


# ----------------------------------------------------------------------------------------------------------
# Probability laws for the verification kernels


@st.composite
def probability_vectors(draw, vocab, zeros=True):
    """A probability vector of length ``vocab`` (float64), zeros allowed, at least one positive entry."""
    weight = st.one_of(st.just(0.0), st.floats(0.01, 1.0)) if zeros else st.floats(0.01, 1.0)
    weights = draw(st.lists(weight, min_size=vocab, max_size=vocab))
    if not any(weights):
        weights[draw(st.integers(0, vocab - 1))] = 1.0
    p = torch.tensor(weights, dtype=torch.float64)
    return p / p.sum()


@st.composite
def two_step_laws(draw, max_vocab=6):
    """Target and draft laws for g = 2 where position 2's laws depend on the first token (as in a model)."""
    vocab = draw(st.integers(2, max_vocab))
    p1 = draw(probability_vectors(vocab))
    q1 = p1.clone() if draw(st.integers(0, 4)) == 0 else draw(probability_vectors(vocab))
    p2 = torch.stack([draw(probability_vectors(vocab)) for _ in range(vocab)])  # [V (first token), V]
    q2 = torch.stack([p2[a].clone() if draw(st.integers(0, 4)) == 0 else draw(probability_vectors(vocab))
                      for a in range(vocab)])
    p3 = draw(probability_vectors(vocab))  # bonus position: one law for every prefix keeps the case small
    return p1, q1, p2, q2, p3


# ----------------------------------------------------------------------------------------------------------
# Contrastive decoding settings

ALPHAS = st.sampled_from([0.01, 0.1, 0.5, 1.0]) | st.floats(0.01, 1.0)  # the plausibility threshold alpha
BETAS = st.sampled_from([0.1, 0.5, 1.0]) | st.floats(0.05, 3.0)  # the contrast strength beta (> 0)


def draw_eos(data, continuation):
    """``None`` or EOS ids drawn from tokens the continuation really produces (so rows stop early)."""
    if not data.draw(st.booleans(), label="with_eos"):
        return None
    return data.draw(eos_choices(continuation.flatten().tolist(), absent=EOS_ID), label="eos_token_id")
