"""Shape-first hypothesis strategies for generation tests.

Stable API (other test modules rely on it; extend, do not change). Shapes are drawn first (batch size, then
each row's prompt length), then contents, so that hypothesis shrinks towards small batches and short prompts.

``batch_sizes(min_size=1, max_size=8)``      -> ``st.integers``: batch sizes.
``draft_lengths(min_size=1, max_size=8)``    -> ``st.integers``: ``num_draft_tokens``.
``new_token_counts(min_size=1, max_size=12)`` -> ``st.integers``: ``max_new_tokens``.
``prompt_lengths(min_size=1, max_size=8)``   -> ``st.integers``: real (unpadded) prompt lengths.

``prompts(vocab_size=VOCAB, batch_size=None, min_length=1, max_length=8, pad_token_id=PAD_ID,
low=FIRST_REAL_ID, ragged=True)``
    -> ``(input_ids, attention_mask)``: a left-padded prompt batch, both ``torch.int64 [B, P]`` on the CPU.
    ``batch_size=None`` draws it from ``batch_sizes()`` (an int, or a strategy, is also accepted). Every row
    has 1..``max_length`` real tokens drawn from ``[low, vocab_size)`` (so never the pad, BOS or EOS id by
    default), aligned on the right: the last column is real in every row, padded slots hold
    ``pad_token_id`` with mask 0, and ``P`` is the longest row. ``ragged=False`` gives every row the same
    length (no padding).

``eos_choices(tokens, absent=None)``
    -> ``None``, an ``int`` or a ``list[int]`` (1-3 ids): ``eos_token_id`` values for ``generate``, drawn from
    ``tokens`` (a non-empty sequence of ids, e.g. tokens the target's greedy continuation produces, so
    that early stopping really happens), optionally mixed with ``absent`` (an id that never occurs). The
    first id always comes from ``tokens``; it never draws ``None``: use ``st.none() | eos_choices(...)``
    for an optional EOS.

``seeds()``                                   -> ``st.integers(0, 2**31 - 1)``.

Kernel tests (shapes first, then settings, then contents):

``vocab_sizes(min_size=2, max_size=64)``     -> ``st.integers``: vocabulary sizes (any value, no alignment).
``kernel_shapes(max_batch=8, max_g=8, min_vocab=2, max_vocab=64, min_g=1)``
    -> ``(B, g, V)`` for verification-shaped tensors ``[B, g+1, V]``.
``processing_settings(vocab=None)``           -> ``(temperature, top_k, top_p)``: temperature in {1.0} or
    [0.3, 2.5]; top_k 0 (off) or 1..``vocab`` (up to 100 when ``vocab`` is None); top_p 1.0 (off) or
    [0.05, 0.99]; each part independently off or on.
``logit_tensors(shape, ties=None)``           -> a float32 ``torch.Tensor`` of ``shape``: continuous scores
    (normal, scale 0.5..6) or, with ``ties`` (drawn when None), small integers with many exact ties.
``kernel_dtypes()``                           -> ``st.sampled_from([float32, float16, bfloat16])``.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from tests.models import FIRST_REAL_ID, PAD_ID, VOCAB


def batch_sizes(min_size: int = 1, max_size: int = 8):
    return st.integers(min_size, max_size)


def draft_lengths(min_size: int = 1, max_size: int = 8):
    return st.integers(min_size, max_size)


def new_token_counts(min_size: int = 1, max_size: int = 12):
    return st.integers(min_size, max_size)


def prompt_lengths(min_size: int = 1, max_size: int = 8):
    return st.integers(min_size, max_size)


def seeds():
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
    return st.integers(min_size, max_size)


@st.composite
def kernel_shapes(draw, max_batch: int = 8, max_g: int = 8, min_vocab: int = 2, max_vocab: int = 64, min_g: int = 1):
    return draw(batch_sizes(1, max_batch)), draw(draft_lengths(min_g, max_g)), draw(vocab_sizes(min_vocab, max_vocab))


@st.composite
def processing_settings(draw, vocab: int | None = None):
    temperature = draw(st.one_of(st.just(1.0), st.floats(0.3, 2.5)))
    top_k = draw(st.one_of(st.just(0), st.integers(1, vocab if vocab is not None else 100)))
    top_p = draw(st.one_of(st.just(1.0), st.floats(0.05, 0.99)))
    return temperature, top_k, top_p


@st.composite
def logit_tensors(draw, shape, ties=None):
    seed = draw(seeds())
    gen = torch.Generator().manual_seed(seed)
    if ties is None:
        ties = draw(st.booleans())
    if ties:
        return torch.randint(-3, 3, tuple(shape), generator=gen).to(torch.float32)
    scale = draw(st.floats(0.5, 6.0))
    return torch.randn(tuple(shape), generator=gen) * scale


def kernel_dtypes():
    return st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
