"""The embedded pair's tokenizer and token streams: byte-level BPE trained on the corpus's training files
(:func:`train_tokenizer`), and documents concatenated into one token stream, each followed by EOS
(:func:`encode_stream`)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["EOS", "PAD", "encode_stream", "load_tokenizer", "train_tokenizer"]

EOS = "<|endoftext|>"
PAD = "<|pad|>"


def train_tokenizer(corpus, vocab_size: int, out: Path):
    """Byte-level BPE on the training files; saved under ``out/tokenizer``; returns the fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator((text for _, text in corpus.train), trainer=trainer, length=len(corpus.train))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    fast.model_max_length = 2048
    fast.save_pretrained(out / "tokenizer")
    return fast


def load_tokenizer(out: Path):
    """The tokenizer an earlier run saved: ``out/tokenizer``, or the target's copy once the card stage removed it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(out / "tokenizer" if (out / "tokenizer").exists() else out / "target")


def encode_stream(tokenizer, docs) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, into one int64 stream."""
    ids = tokenizer.backend_tokenizer.encode_batch([text for _, text in docs])
    eos = tokenizer.eos_token_id
    flat = []
    for enc in ids:
        flat.extend(enc.ids)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)
