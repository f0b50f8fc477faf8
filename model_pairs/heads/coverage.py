"""``python -m decoding.model_pairs.heads.coverage``: how much of the target's held-out answers a draft vocabulary of
each size covers, the ceiling it puts on a head's acceptance (a token outside it can never be drafted).

    python -m decoding.model_pairs.heads.coverage --data data/greedy.pt data/sampled.pt --sizes 4096,8192,16384

The vocabulary is chosen as the trainer chooses it (the most frequent tokens of the training answers), the split
is the trainer's (by prompt hash, ``--heldout``); coverage is the share of held-out answer tokens inside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .cli import held_out, read_records
from .train import draft_vocabulary


def coverage(training: list[dict], heldout: list[dict], size: int, vocab: int) -> float:
    """The share of ``heldout``'s answer tokens among the ``size`` most frequent answer tokens of ``training``."""
    inside = torch.zeros(vocab, dtype=torch.bool)
    inside[draft_vocabulary(training, size, vocab)] = True
    answers = torch.cat([r["ids"][r["start"]:] for r in heldout])
    return float(inside[answers].float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.heads.coverage",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="teacher files (distill.teacher)")
    parser.add_argument("--sizes", default="4096,8192,16384", help="comma-separated draft vocabulary sizes")
    parser.add_argument("--heldout", type=float, default=0.05, help="share of prompts held out (default 0.05)")
    parser.add_argument("--vocab", type=int, default=None, help="the target's vocabulary (default: largest id + 1)")
    args = parser.parse_args(argv)
    records = read_records(args.data)
    training = [r for r in records if not held_out(r, args.heldout)]
    heldout = [r for r in records if held_out(r, args.heldout)]
    if not training or not heldout:
        parser.error(f"--heldout {args.heldout} leaves {len(training)} training and {len(heldout)} held-out "
                     "sequences: both need some")
    vocab = args.vocab or int(max(int(r["ids"].max()) for r in records)) + 1
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {"training_tokens": sum(len(r["ids"]) - r["start"] for r in training),
              "heldout_tokens": sum(len(r["ids"]) - r["start"] for r in heldout),
              "coverage": {size: round(coverage(training, heldout, size, vocab), 4) for size in sizes}}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
