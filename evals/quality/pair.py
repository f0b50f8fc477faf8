"""``decoding-eval``'s model pair: the expert (target) and amateur (draft) it compares methods on, loaded by name
or path (:func:`load_models`), or tiny random models over a word-level tokenizer, for tests
(:func:`synthetic_word_pair`)."""

from __future__ import annotations

import argparse
import collections

import torch

from decoding.evals.common import pairs
from decoding.evals.common.pairs import Pair
from decoding.evals.quality.prompts import PromptItem

__all__ = ["load_models", "synthetic_word_pair", "word_tokenizer"]


def word_tokenizer(texts: list[str], vocab_size: int):
    """A word-level tokenizer over the most frequent whitespace words of ``texts`` (ids 0-2: pad, unk, eos);
    decoding joins words with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = collections.Counter(word for text in texts for word in text.split())
    specials = ["[PAD]", "[UNK]", "[EOS]"]
    common = [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab = {word: i for i, word in enumerate(specials + common[: vocab_size - len(specials)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   eos_token="[EOS]", padding_side="left")


def synthetic_word_pair(items: list[PromptItem], seed: int = 0, vocab_size: int = 256, hidden_size: int = 64,
                        num_layers: int = 2, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> Pair:
    """The synthetic damped pair (:func:`decoding.evals.common.pairs.synthetic`: the amateur is the expert's
    first layer, no EOS; float32 unless ``dtype``) over a word-level tokenizer built from the prompt set. For tests
    of the pipeline; the numbers mean nothing."""
    tokenizer = word_tokenizer([t for item in items for t in (item.prompt, item.reference or "")], vocab_size)
    settings = {"num_layers": num_layers, "hidden_size": hidden_size, "vocab_size": len(tokenizer), "damping": 0.5,
                "head_scale": 4.0, "intermediate_size": 2 * hidden_size, "num_attention_heads": 4,
                "num_key_value_heads": 2}
    name = f"synthetic (damped_pair: {num_layers} layers, width {hidden_size}, vocab {len(tokenizer)}, seed {seed})"
    return pairs.synthetic(settings, seed=seed, dtype=dtype, device=device, tokenizer=tokenizer, name=name)


def load_models(args: argparse.Namespace, items: list[PromptItem]) -> Pair:
    """The pair the arguments name: ``--synthetic``, a registry name, or ``--target``/``--draft`` paths or ids."""
    # --dtype: None, "auto" (the checkpoint's; float32 when synthetic) or a name in cli_args.DTYPES.
    dtype = args.dtype if args.dtype in (None, "auto") else getattr(torch, args.dtype)
    if args.synthetic:
        return synthetic_word_pair(items, seed=args.seed, device=args.device, dtype=None if dtype == "auto" else dtype)
    device_map = None if args.device in (None, "cpu") else {"": args.device}
    name = args.target if args.draft is None else f"{args.target} + {args.draft}"
    return pairs.load(args.target, args.draft, dtype=dtype, device_map=device_map, name=name)
