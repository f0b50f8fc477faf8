"""Two different tokenizers built in memory with the ``tokenizers`` library, and drafts for a target of the first.

``bpe_tokenizer(pieces)`` builds a BPE tokenizer whose id ``i`` is ``pieces[i]`` (``[PAD]``, ``[BOS]``, ``[EOS]``
special wherever they are; every longer piece merges from its prefix and last character), text is the plain
concatenation of the pieces. ``TARGET_PIECES`` is ``char_tokenizer(128)``'s vocabulary (specials at 0, 1, 2 as
the tiny models expect); ``PERMUTED_PIECES`` are the same pieces under other ids (merged in the
target's order: the same splits); ``DRAFT_PIECES`` orders the characters differently, lacks some of the target's pairs, has
pairs and triples the target lacks, and puts the specials last. ``SMALL_TARGET_PIECES`` / ``SMALL_DRAFT_PIECES``
are the same idea on 12 / 15 ids, for exact laws. ``mapped_draft`` gives a draft whose rows of shared tokens are
the target's own rows (so it agrees with the target often), ``noise`` added to every weight.
"""

from __future__ import annotations

import copy
import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from char_tokenizer import CHARS, _token_strings
from models import fresh_model

SPECIALS = ["[PAD]", "[BOS]", "[EOS]"]
TARGET_PIECES = _token_strings(128)
DRAFT_PIECES = (list(reversed(CHARS[:93])) + [p for p in TARGET_PIECES[96:] if p[1] not in "02468"]
                + ["11", "12", "13", "1a", "ab", "ba", "000", "001", "0a0", "111"] + SPECIALS)
PERMUTED_PIECES = list(reversed(TARGET_PIECES[3:])) + SPECIALS  # the target's tokens, other ids
SMALL_TARGET_PIECES = SPECIALS + list("abcdefghi")
SMALL_DRAFT_PIECES = list("ihgfedcba") + ["ab", "ba", "cd"] + SPECIALS


@functools.lru_cache(maxsize=None)
def bpe_tokenizer(pieces: tuple[str, ...], merge_order: tuple[str, ...] | None = None) -> PreTrainedTokenizerFast:
    """Merges rank by length, then by position in ``merge_order`` (default ``pieces``): the same ``merge_order``
    with pieces under other ids splits every text into the same pieces."""
    vocab = {piece: i for i, piece in enumerate(pieces)}
    rank = {piece: i for i, piece in enumerate(merge_order or pieces)}
    longer = sorted((p for p in pieces if len(p) > 1 and p not in SPECIALS), key=lambda p: (len(p), rank[p]))
    merges = [(p[:-1], p[-1]) for p in longer if p[:-1] in vocab and p[-1] in vocab]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   padding_side="left")


DRAFTS = {"different": DRAFT_PIECES, "permuted": PERMUTED_PIECES, "small": SMALL_DRAFT_PIECES}


def target_tokenizer(small: bool = False) -> PreTrainedTokenizerFast:
    return bpe_tokenizer(tuple(SMALL_TARGET_PIECES if small else TARGET_PIECES))


def draft_tokenizer(kind: str = "different") -> PreTrainedTokenizerFast:
    """``kind``: ``"different"``, ``"permuted"`` (the target's pieces under other ids) or ``"small"``."""
    return bpe_tokenizer(tuple(DRAFTS[kind]), tuple(TARGET_PIECES) if kind == "permuted" else None)


@functools.lru_cache(maxsize=None)
def mapped_draft(kind: str = "different", noise: float = 0.0, seed: int = 0, target_seed: int = 0):
    """A draft for ``tiny_model("llama", len(target pieces), target_seed)`` (the small target for ``"small"``):
    the target's weights, with the embedding and head rows of each shared piece moved to its draft id (random rows
    for the others), then ``noise`` (relative) added to every weight."""
    target_pieces = SMALL_TARGET_PIECES if kind == "small" else TARGET_PIECES
    draft_pieces = DRAFTS[kind]
    model = copy.deepcopy(fresh_model("llama", vocab_size=len(target_pieces), seed=target_seed))
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    where = {piece: i for i, piece in enumerate(target_pieces)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new_embed = torch.randn(len(draft_pieces), embed.shape[1], dtype=embed.dtype) * embed.std()
        new_head = torch.randn(len(draft_pieces), head.shape[1], dtype=head.dtype) * head.std()
        for j, piece in enumerate(draft_pieces):
            if piece in where:
                new_embed[j], new_head[j] = embed[where[piece]], head[where[piece]]
        model.resize_token_embeddings(len(draft_pieces), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(new_embed)
            model.get_output_embeddings().weight.copy_(new_head)
            for param in model.parameters():
                if noise and param.numel() > 1:
                    param.add_(torch.randn_like(param) * noise * param.std())
    model.config.vocab_size = len(draft_pieces)
    model.requires_grad_(False)
    return model.eval()
