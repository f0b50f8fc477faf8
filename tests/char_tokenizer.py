"""A tiny character-level tokenizer built locally with the ``tokenizers`` library (nothing is downloaded).

``char_tokenizer(size=VOCAB, swap=None) -> PreTrainedTokenizerFast`` (cached: do not modify it)
    Ids ``0, 1, 2`` are ``[PAD]``, ``[BOS]``, ``[EOS]`` (``models.PAD_ID/BOS_ID/EOS_ID``); ids from 3 up are
    single printable ASCII characters (digits, letters, punctuation), then, past 96 ids, two-character tokens
    ``"c0"``, ``"c1"``, ... (``size`` ids in all, up to 96 + 94 * 94). Text is the plain concatenation of the
    tokens (no spaces), so stop strings can span several tokens. ``swap=(i, j)`` exchanges the strings of ids
    ``i`` and ``j``: a tokenizer that disagrees with the default one on exactly those ids.
"""

from __future__ import annotations

import functools
import itertools
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from models import VOCAB

CHARS = string.printable[:94]  # digits, letters, punctuation: no whitespace


def _token_strings(size: int) -> list[str]:
    pieces = ["[PAD]", "[BOS]", "[EOS]", *CHARS[:93]]
    pairs = ("".join(p) for p in itertools.product(CHARS, repeat=2))
    pieces += list(itertools.islice(pairs, max(0, size - len(pieces))))
    if len(pieces) < size:
        raise ValueError(f"char_tokenizer supports at most {len(pieces)} ids, asked for {size}")
    return pieces[:size]


@functools.lru_cache(maxsize=None)
def char_tokenizer(size: int = VOCAB, swap: tuple[int, int] | None = None) -> PreTrainedTokenizerFast:
    pieces = _token_strings(size)
    if swap is not None:
        i, j = swap
        pieces[i], pieces[j] = pieces[j], pieces[i]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    # Multi-character tokens merge from single characters, so BPE needs their merges, in id order.
    merges = [(piece[0], piece[1]) for piece in pieces if len(piece) == 2 and piece[0] in vocab and piece[1] in vocab]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", padding_side="left"
    )
