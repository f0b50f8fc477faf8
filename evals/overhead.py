"""``python -m decoding.evals.overhead``: the host reads and operations a decoding step costs, where the models'
forwards cost little (tiny Llama pair, the draft a noisy copy of the target: acceptance near 1).

For batch sizes 1, 8, 32 and 64 it runs the target alone (transformers' greedy ``generate``) and
``SpeculativeDecoding(draft, g)`` under :class:`~decoding.evals.common.host_reads.OpCounter`, and prints host reads
and operations per step (a speculative step: one verification; the target alone: one token), with the reads split
by kind. On a GPU a host read drains the launch queue; these counts are what a step without host reads must drive
to (about) zero. The same counts beside timings, efficiency and each step's time split (draft, target, verify,
other): ``decoding-bench --synthetic overhead --step-split`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import decoding
from decoding.evals.common.host_reads import OpCounter


def tiny_pair(seed: int = 0):
    """A 2-layer Llama target (width 64, vocabulary 256) and a noisy copy of it as the draft."""
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=None)
    torch.manual_seed(seed)
    target = LlamaForCausalLM(config).eval()
    draft = LlamaForCausalLM(config).eval()
    draft.load_state_dict(target.state_dict())
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn_like(param) * 1e-3 * param.abs().mean())
    return target, draft


def count(target, ids, new_tokens: int, strategy=None) -> tuple[OpCounter, int]:
    """The counter of one greedy call, and its steps."""
    with torch.no_grad(), OpCounter() as counter:
        target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                        strategy=strategy)
    return counter, strategy.stats.steps // ids.shape[0] if strategy is not None else new_tokens


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=40)
    args = parser.parse_args(argv)
    target, draft = tiny_pair()
    decoding.enable(target)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        ids = torch.randint(3, 256, (batch, 8), generator=torch.Generator().manual_seed(batch))
        for name, strategy in (("target alone", None),
                               (f"speculative g={args.draft_tokens}",
                                decoding.SpeculativeDecoding(draft, num_draft_tokens=args.draft_tokens))):
            counter, steps = count(target, ids, args.new_tokens, strategy)
            kinds = ", ".join(f"{k} {v / steps:.1f}" for k, v in sorted(counter.reads.items()))
            print(f"batch {batch:>3}  {name:<16} {steps:>3} steps  host reads/step {counter.host_reads / steps:5.1f}"
                  f" ({kinds})  ops/step {counter.ops / steps:7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
