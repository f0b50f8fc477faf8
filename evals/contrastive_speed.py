"""Speed of the contrastive strategies: CD's overhead over its two models, and SCD's speedup over CD.

Run ``python -m decoding.evals.contrastive_speed`` (``--help`` for options). For each batch size it times, on the
same left-padded prompts and interleaved over ``--rounds`` rounds (median round counts), greedy generation of:

- ``expert``: the expert alone; ``amateur``: the amateur alone (``model.generate``);
- ``cd``: ``ContrastiveDecoding(amateur, alpha, beta)`` on the expert;
- ``scd``: ``SpeculativeContrastiveDecoding(amateur, alpha, beta, num_draft_tokens=g)``.

It reports seconds per token step (wall time / new tokens per row), the CD overhead
``t_cd / (t_expert + t_amateur)`` (the goal is <= 1.15: the amateur costs its forward pass and nothing else),
SCD's speedup over CD with its acceptance, and checks that SCD's greedy output equals CD's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import decoding

from .measure import time_calls
from .speedup import left_pad, make_prompts


def _methods(expert, amateur, alpha: float, beta: float, g: int) -> dict:
    return {
        "expert": lambda ids, mask, n: expert.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False),
        "amateur": lambda ids, mask, n: amateur.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False),
        "cd": decoding.ContrastiveDecoding(amateur, alpha=alpha, beta=beta),
        "scd": decoding.SpeculativeContrastiveDecoding(amateur, alpha=alpha, beta=beta, num_draft_tokens=g),
    }


def _run(method, expert, ids, mask, new_tokens):
    if callable(method) and not isinstance(method, decoding.Strategy):
        return method(ids, mask, new_tokens)
    return expert.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, strategy=method)


def measure(expert, amateur, prompts, batch_size: int, new_tokens: int, alpha: float, beta: float, g: int,
            rounds: int = 3) -> dict:
    """Seconds per token step of each method at one batch size, and the derived ratios."""
    decoding.enable(expert)
    ids, mask = left_pad(prompts[:batch_size], expert.generation_config.pad_token_id or 0)
    methods = _methods(expert, amateur, alpha, beta, g)
    samples = {name: [] for name in methods}
    outputs = {}
    for round_ in range(rounds):
        names = list(methods)[round_ % len(methods):] + list(methods)[: round_ % len(methods)]
        for name in names:
            seconds = time_calls(lambda: outputs.__setitem__(name, _run(methods[name], expert, ids, mask, new_tokens)),
                                 repeats=1, warmup=1 if round_ == 0 else 0)
            samples[name].append(seconds[0] / (outputs[name].shape[1] - ids.shape[1]))
    per_token = {name: statistics.median(values) for name, values in samples.items()}
    stats = methods["scd"].stats
    return {
        "batch_size": batch_size,
        "seconds_per_token": per_token,
        "cd_overhead": per_token["cd"] / (per_token["expert"] + per_token["amateur"]),
        "scd_speedup_over_cd": per_token["cd"] / per_token["scd"],
        "scd_alpha": stats.alpha,
        "scd_mean_accepted_length": stats.mean_accepted_length,
        "scd_equals_cd": bool(torch.equal(outputs["scd"], outputs["cd"])),
    }


def _pair(args):
    if args.target is None:
        from ..model_pairs.synthetic import damped_pair

        return damped_pair(seed=args.seed, intermediate_size=2048)
    from ..model_pairs import load_pair

    loaded = load_pair(args.target, args.amateur, dtype="float32")
    return loaded.target, loaded.draft


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.contrastive_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default=None, help="registry name, hub id or path (default: the synthetic pair)")
    parser.add_argument("--amateur", default=None, help="amateur path or id (default: the pair's draft)")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--num-draft-tokens", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    expert, amateur = _pair(args)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    vocab = expert.config.get_text_config().vocab_size
    prompts = make_prompts(max(sizes), vocab, 32, 64, args.seed)
    results = [measure(expert, amateur, prompts, b, args.max_new_tokens, args.alpha, args.beta,
                       args.num_draft_tokens, args.rounds) for b in sizes]
    for r in results:
        t = r["seconds_per_token"]
        print(f"batch {r['batch_size']}: ms/token expert {1e3 * t['expert']:.2f} amateur {1e3 * t['amateur']:.2f} "
              f"cd {1e3 * t['cd']:.2f} scd {1e3 * t['scd']:.2f} | cd overhead {r['cd_overhead']:.3f} | "
              f"scd/cd speedup {r['scd_speedup_over_cd']:.2f}x (alpha {r['scd_alpha']:.3f}, tau "
              f"{r['scd_mean_accepted_length']:.2f}) | scd == cd: {r['scd_equals_cd']}")
    if args.json:
        args.json.write_text(json.dumps({"arguments": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
