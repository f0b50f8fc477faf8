"""``decoding-eval``'s model pair: the expert and amateur it compares methods on, with the expert's tokenizer;
loaded by name or path (:func:`load_models`), or tiny random models for tests (:func:`synthetic_pair`)."""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass

import torch

from decoding.evals.quality.prompts import PromptItem

__all__ = ["Pair", "load_models", "synthetic_pair"]


@dataclass
class Pair:
    """What the evaluation needs: expert, amateur, the expert's tokenizer and a description."""

    target: object
    amateur: object
    tokenizer: object
    description: str


def _word_tokenizer(texts: list[str], vocab_size: int):
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


def synthetic_pair(items: list[PromptItem], seed: int = 0, vocab_size: int = 256, hidden_size: int = 64,
                   num_layers: int = 2, device: str | torch.device | None = None) -> Pair:
    """Tiny random Llama expert and amateur (:func:`decoding.model_pairs.synthetic.damped_pair`: the amateur is
    the expert's first layer) over a word-level tokenizer built from the prompt set. No EOS: every row
    generates ``max_new_tokens`` tokens. For tests of the pipeline; the numbers mean nothing."""
    from decoding.model_pairs.synthetic import damped_pair

    tokenizer = _word_tokenizer([t for item in items for t in (item.prompt, item.reference or "")], vocab_size)
    target, amateur = damped_pair(num_layers=num_layers, hidden_size=hidden_size, vocab_size=len(tokenizer),
                                  damping=0.5, head_scale=4.0, seed=seed, intermediate_size=2 * hidden_size,
                                  num_attention_heads=4, num_key_value_heads=2, device=device)
    return Pair(target, amateur, tokenizer, f"synthetic (damped_pair: {num_layers} layers, width {hidden_size}, "
                f"vocab {len(tokenizer)}, seed {seed})")


def load_models(args: argparse.Namespace, items: list[PromptItem]) -> Pair:
    """The pair the arguments name: ``--synthetic``, a registry name, or ``--target``/``--draft`` paths or ids."""
    if args.synthetic:
        return synthetic_pair(items, seed=args.seed, device=args.device)
    from decoding.model_pairs import load_pair

    device_map = None if args.device in (None, "cpu") else {"": args.device}
    loaded = load_pair(args.target, args.draft, dtype=args.dtype, device_map=device_map)
    description = args.target if args.draft is None else f"{args.target} + {args.draft}"
    return Pair(loaded.target, loaded.draft, loaded.tokenizer, description)
