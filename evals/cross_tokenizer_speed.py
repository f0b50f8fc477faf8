"""Cost of drafting across tokenizers: the synthetic damped pair (``decoding.model_pairs.synthetic``), its draft
given its own word-level tokenizer whose ids are the target's reversed (every text splits into the same words, so
acceptance can be compared with the same-tokenizer draft's), greedy on the CPU.

    python -m decoding.evals.cross_tokenizer_speed --batch 1

Prints, per drafting route, whether the output equals the target's own greedy output, the acceptance rate, tokens
per row and step, the best of two timed calls and the ratio to the target alone.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import decoding
from decoding.model_pairs.synthetic import damped_pair


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   padding_side="left")


def reversed_ids(model, order: torch.Tensor):
    """``model`` with embedding and head rows reordered: new id ``j`` is old id ``order[j]``."""
    model = copy.deepcopy(model)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        module.weight = torch.nn.Parameter(module.weight.detach()[order].clone(), requires_grad=False)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args(argv)
    vocab, n, g = args.vocab, args.new_tokens, args.draft_tokens
    target, draft = damped_pair(vocab_size=vocab, damping=0.03, seed=0)
    words = ["[PAD]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(3, vocab)]
    draft_words = list(reversed(words[3:])) + words[:3]
    target_tokenizer, draft_tokenizer = word_tokenizer(words), word_tokenizer(draft_words)
    index = {w: i for i, w in enumerate(words)}
    cross = reversed_ids(draft, torch.tensor([index[w] for w in draft_words]))
    decoding.enable(target)
    gen = torch.Generator().manual_seed(1)
    texts = [" ".join(words[3 + int(i)] for i in torch.randint(0, vocab - 3, (24,), generator=gen))
             for _ in range(args.batch)]
    batch = target_tokenizer(texts, return_tensors="pt", padding=True)

    def run(strategy=None):
        extra = {"strategy": strategy} if strategy is not None else {}
        with torch.no_grad():
            start = time.perf_counter()
            out = target.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=0, **extra)
        return out, time.perf_counter() - start

    run()
    reference, alone = min((run() for _ in range(2)), key=lambda r: r[1])
    routes = {
        "same tokenizer": lambda: decoding.SpeculativeDecoding(draft, g),
        "cross string": lambda: decoding.SpeculativeDecoding(
            cross, g, tokenizers=(target_tokenizer, draft_tokenizer), cross_tokenizer="string"),
        "cross tli": lambda: decoding.SpeculativeDecoding(
            cross, g, tokenizers=(target_tokenizer, draft_tokenizer), cross_tokenizer="tli"),
    }
    print(f"target alone: {alone:.2f}s for {n} tokens x {args.batch} rows")
    for name, make in routes.items():
        run(make())
        timed = []
        for _ in range(2):
            strategy = make()
            out, seconds = run(strategy)
            timed.append(seconds)
        stats = strategy.stats
        print(f"{name:15s} equal={torch.equal(out, reference)} acceptance={stats.accepted / max(stats.drafted, 1):.2f} "
              f"tokens/row-step={n * args.batch / max(stats.steps, 1):.2f} time={min(timed):.2f}s "
              f"vs target alone {alone / min(timed):.2f}x")


if __name__ == "__main__":
    main()
