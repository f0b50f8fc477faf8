"""Greedy speedup benchmark on the synthetic damped pair: target alone vs ``assistant_model=`` vs this library.

``python -m decoding.evals.speedup``: ``decoding-bench``'s measuring loop on random prompts (manual:
``docs/BENCHMARKS.md``, "Other benchmarks").
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import transformers

import decoding
from decoding.evals.bench import report
from decoding.evals.bench.cells import combine
from decoding.evals.bench.grid import measure_share
from decoding.evals.bench.progress import Progress, work_units
from decoding.evals.bench.prompts import Prompt
from decoding.evals.common import files
from decoding.evals.common.cli_args import int_list
from decoding.evals.common.console import quiet_transformers
from decoding.evals.common.pairs import Pair
from decoding.evals.common.provenance import device_name, git_commit, utc_now
from decoding.model_pairs.synthetic import damped_pair

__all__ = ["main", "make_prompts", "run_benchmark"]

DESCRIPTION = ("Greedy speedup benchmark on the synthetic damped pair: target alone vs ``assistant_model=`` vs this "
               "library.")


# ----------------------------------------------------------------------------------------------- inputs


def make_prompts(num_prompts: int, vocab_size: int, min_length: int, max_length: int, seed: int) -> list[torch.Tensor]:
    """``num_prompts`` random prompts ``# [length]`` of ids in ``[1, vocab_size)`` (0 is the pad id)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (num_prompts,), generator=generator).tolist()
    return [torch.randint(1, vocab_size, (n,), generator=generator) for n in lengths]


# ----------------------------------------------------------------------------------------------- the run


def run_benchmark(target, draft, prompts, batch_sizes, draft_lengths, max_new_tokens, rounds=3,
                  cost_repeats=31, quiet=False) -> tuple[list[dict], dict]:
    """Time every method on every batch size, greedy; returns ``(cells, costs)`` (see :func:`main` for the keys).

    The measuring loop is ``decoding-bench``'s (:func:`decoding.evals.bench.grid.measure_share`), on random prompts.
    """
    pair = Pair(target, draft, "synthetic damped pair", "one-layer draft", encode=None, pad_token_id=0,
                eos_token_ids=[])
    share = [Prompt(f"random-{i}", "random", "", ids=ids) for i, ids in enumerate(prompts)]
    progress = Progress(work_units(len(share), batch_sizes, draft_lengths, ("greedy",), rounds), enabled=not quiet)
    try:
        raw = measure_share(pair, share, batch_sizes=batch_sizes, draft_lengths=draft_lengths,
                            modes=("greedy",), max_new_tokens=max_new_tokens, rounds=rounds,
                            cost_repeats=cost_repeats, warmup_tokens=None, progress=progress)
    finally:
        progress.close()
    records, costs, _ = combine([raw])
    cells = [cell.to_dict() for cell in records]
    for cell in cells:
        cell.pop("per_category", None)
    return cells, {b: cost.to_dict() for b, cost in costs.items()}


# ----------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.speedup", description=DESCRIPTION,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-sizes", type=int_list("batch size"), default=[1, 4], help="comma-separated, e.g. 1,4")
    parser.add_argument("--draft-lengths", type=int_list("draft length"), default=[4], help="comma-separated g values, e.g. 2,4,6")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens generated per row (no EOS)")
    parser.add_argument("--prompts", type=int, default=4, help="number of prompts (each batch size uses them all)")
    parser.add_argument("--min-prompt-length", type=int, default=32, help="random prompt lengths are drawn in")
    parser.add_argument("--max-prompt-length", type=int, default=64, help="[min, max] (batches are left-padded)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the median counts")
    parser.add_argument("--cost-repeats", type=int, default=31, help="repetitions of each forward for c and v")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair's weights and of the prompts")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results as JSON here")
    pair = parser.add_argument_group("synthetic pair (decoding.model_pairs.synthetic.damped_pair)")
    pair.add_argument("--num-layers", type=int, default=8, help="target layers (the draft has one)")
    pair.add_argument("--hidden-size", type=int, default=512, help="width of both models")
    pair.add_argument("--intermediate-size", type=int, default=2048,
                      help="MLP width (2048: a ~42M-parameter target at the default shape)")
    pair.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of both models")
    pair.add_argument("--damping", type=float, default=0.03, help="scale of o_proj/down_proj in target layers 2..")
    pair.add_argument("--head-scale", type=float, default=20.0, help="scale of the shared output head")
    pair.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    pair.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"],
                      help="parameter dtype of both models")
    parser.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "prompts", "min_prompt_length", "rounds", "cost_repeats", "num_layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_prompt_length < args.min_prompt_length:
        parser.error("--max-prompt-length must be >= --min-prompt-length")
    return args


def main(argv=None) -> dict:
    """Run the benchmark from command-line arguments; print the table, write JSON if asked, return the results
    (keys ``meta``, ``costs``, ``checks``, ``cells``: those of ``decoding-bench``, greedy only)."""
    args = parse_args(argv)
    with quiet_transformers():  # no per-call generation warnings between progress lines
        return _main(args)


def _main(args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    target, draft = damped_pair(num_layers=args.num_layers, hidden_size=args.hidden_size,
                                vocab_size=args.vocab_size, damping=args.damping, head_scale=args.head_scale,
                                intermediate_size=args.intermediate_size, seed=args.seed, dtype=dtype,
                                device=args.device)
    prompts = make_prompts(args.prompts, args.vocab_size, args.min_prompt_length, args.max_prompt_length, args.seed)
    started = time.perf_counter()
    cells, costs = run_benchmark(target, draft, prompts, args.batch_sizes, args.draft_lengths, args.max_new_tokens,
                                 rounds=args.rounds, cost_repeats=args.cost_repeats, quiet=args.quiet)
    meta = _meta(args, target, draft, prompts, time.perf_counter() - started)
    checks = [{"batch_size": c["batch_size"], "name": c["name"], "matches_target": c["matches_target"],
               "rows_matching_target": c["rows_matching_target"]} for c in cells if c["method"] != "target"]
    result = {"meta": meta, "costs": {str(b): v for b, v in costs.items()}, "checks": checks, "cells": cells}

    title = (f"Greedy speedup, synthetic damped pair ({meta['target_parameters'] / 1e6:.1f}M target, "
             f"{meta['draft_parameters'] / 1e6:.1f}M draft), {args.max_new_tokens} new tokens, "
             f"{args.prompts} prompts, {meta['device_name']}")
    report.print_table(cells, title)
    report.print_checks(checks)
    if args.json is not None:
        print(f"wrote {files.write_json(result, args.json)}")
    return result


def _meta(args: argparse.Namespace, target, draft, prompts: list[torch.Tensor], seconds: float) -> dict:
    return {
        "date": utc_now(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "decoding": decoding.__version__,
        "device": str(target.device),
        "device_name": device_name(target.device),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "draft_parameters": sum(p.numel() for p in draft.parameters()),
        "pair": {"num_layers": args.num_layers, "hidden_size": args.hidden_size, "vocab_size": args.vocab_size,
                 "intermediate_size": target.config.intermediate_size, "damping": args.damping,
                 "head_scale": args.head_scale},
        "prompt_lengths": [p.numel() for p in prompts],
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "benchmark_seconds": seconds,
    }


if __name__ == "__main__":
    main()
