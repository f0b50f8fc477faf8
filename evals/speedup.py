"""Greedy speedup benchmark on the synthetic damped pair: target alone vs ``assistant_model=`` vs this library.

Run ``python -m decoding.evals.speedup`` (``--help`` for options). For each batch size it times, on the same
prompts and interleaved over ``--rounds`` rounds (the order rotates every round, so background load hits every
method alike; the median round counts):

- ``target``: ``target.generate`` alone, greedy (the baseline);
- ``assisted``: transformers' ``assistant_model=draft`` drafting exactly ``g`` tokens per step (batch 1 only:
  transformers refuses larger batches);
- ``speculative``: ``decoding.SpeculativeDecoding(draft, num_draft_tokens=g)``.

It checks that both greedy outputs equal the target's own, and reports per cell: tokens/s, speedup over the
target, the strategy's acceptance rate (``acc`` = accepted / drafted, vLLM's definition), mean accepted length
(``tau``, tokens per row and step, counts the bonus token), per-position acceptance (accepted at position i /
steps), the measured cost ratios ``c`` and ``v`` (see :mod:`decoding.evals.measure`), the ceiling
``(1-a^(g+1)) / ((1-a)(g*c+v))`` and the efficiency (speedup / ceiling). In the ceiling ``a`` is the per-token
acceptance probability ``alpha`` (the table's ``alpha``), obtained from ``tau`` so that the formula's expected
tokens per step equal the measured ones: ``ceiling = tau / (g*c + v)``. (``acc`` is ``E[accepted] / g``, lower
than ``alpha``; see :func:`decoding.evals.measure.per_token_acceptance`.) The assisted cell's ceiling uses the
strategy's ``alpha`` at the same ``g``: both verify the same greedy drafts.

Prompts are random token ids (lengths drawn in ``[--min-prompt-length, --max-prompt-length]``), left-padded
into batches of different lengths; the pair has no EOS, so every row generates ``--max-new-tokens`` tokens.
``c`` and ``v`` are measured with a cache prefix of the mean context length during generation (mean prompt
length + max_new_tokens / 2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

import decoding

from ..model_pairs.synthetic import damped_pair
from .measure import ceiling, cost_ratios, efficiency, per_token_acceptance, synchronize

__all__ = ["main", "make_prompts", "left_pad", "run_benchmark"]


# ----------------------------------------------------------------------------------------------- inputs


def make_prompts(num_prompts: int, vocab_size: int, min_length: int, max_length: int, seed: int) -> list[torch.Tensor]:
    """``num_prompts`` random prompts ``# [length]`` of ids in ``[1, vocab_size)`` (0 is the pad id)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (num_prompts,), generator=generator).tolist()
    return [torch.randint(1, vocab_size, (n,), generator=generator) for n in lengths]


def left_pad(prompts: list[torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D prompts into ``input_ids, attention_mask  # [b, longest]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(prompts), width, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.numel() :] = prompt
        mask[row, width - prompt.numel() :] = 1
    return ids, mask


def batches(prompts: list[torch.Tensor], batch_size: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``ceil(len(prompts) / batch_size)`` full batches; the last one wraps around to the first prompts."""
    count = -(-len(prompts) // batch_size)
    out = []
    for k in range(count):
        chunk = [prompts[(k * batch_size + i) % len(prompts)] for i in range(batch_size)]
        ids, mask = left_pad(chunk)
        out.append((ids.to(device), mask.to(device)))
    return out


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One column of the benchmark: how to generate a batch, and what it measured."""

    name: str
    kind: str  # "target" | "assisted" | "speculative"
    g: int | None
    generate: object  # (ids, mask) -> LongTensor [b, prompt + new]
    strategy: object = None
    seconds: list = field(default_factory=list)  # per round
    tokens: int = 0  # new tokens per round
    outputs: list = field(default_factory=list)  # per batch, first round
    stats: dict = field(default_factory=dict)


def _methods(target, draft, batch_size: int, draft_lengths: list[int], max_new_tokens: int) -> list[Method]:
    common = {"max_new_tokens": max_new_tokens, "do_sample": False}
    methods = [Method("target", "target", None, lambda ids, mask: target.generate(ids, attention_mask=mask, **common))]
    for g in draft_lengths:
        if batch_size == 1:
            methods.append(Method(f"assisted g={g}", "assisted", g, _assisted(target, draft, g, common)))
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
        methods.append(Method(
            f"speculative g={g}", "speculative", g,
            lambda ids, mask, s=strategy: target.generate(ids, attention_mask=mask, strategy=s, **common),
            strategy,
        ))
    return methods


def _assisted(target, draft, g: int, common: dict):
    def generate(ids, mask):
        # transformers reads these from the draft's own generation config only. A confidence threshold of 0
        # disables early stopping of the draft, so that it proposes exactly g tokens, like the strategy.
        config = draft.generation_config
        config.num_assistant_tokens = g
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
        return target.generate(ids, attention_mask=mask, assistant_model=draft, **common)

    return generate


def _merge_stats(total: dict, stats) -> None:
    total["steps"] = total.get("steps", 0) + stats.steps
    total["drafted"] = total.get("drafted", 0) + stats.drafted
    total["accepted"] = total.get("accepted", 0) + stats.accepted
    for key, values in (("position_steps", stats.position_steps), ("position_accepted", stats.position_accepted)):
        old = total.setdefault(key, [])
        old.extend([0] * (len(values) - len(old)))
        for i, value in enumerate(values):
            old[i] += value


def _acceptance(total: dict, g: int) -> dict:
    steps, drafted, accepted = total.get("steps", 0), total.get("drafted", 0), total.get("accepted", 0)
    tau = 1.0 + accepted / steps if steps else 0.0
    return {
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "alpha": per_token_acceptance(tau, g),
        "mean_accepted_length": tau,
        "per_position_acceptance": [a / s if s else 0.0 for a, s in
                                    zip(total.get("position_accepted", []), total.get("position_steps", []))],
        "steps": steps,
        "drafted": drafted,
        "accepted": accepted,
    }


# ----------------------------------------------------------------------------------------------- the run


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def run_benchmark(target, draft, prompts, batch_sizes, draft_lengths, max_new_tokens, rounds=3,
                  cost_repeats=31, quiet=False) -> tuple[list[dict], dict]:
    """Time every method on every batch size; returns ``(cells, costs)`` (see :func:`main` for the keys)."""
    device = target.device
    decoding.enable(target)
    context_length = round(statistics.mean(p.numel() for p in prompts) + max_new_tokens / 2)
    cells, costs = [], {}
    for batch_size in batch_sizes:
        data = batches(prompts, batch_size, device)
        methods = _methods(target, draft, batch_size, draft_lengths, max_new_tokens)
        _log(f"batch {batch_size}: {len(data)} batch(es), methods: {', '.join(m.name for m in methods)}", quiet)
        with torch.no_grad():
            for method in methods:  # warm-up, untimed
                method.generate(*data[0])
            for round_ in range(rounds):
                shift = round_ % len(methods)
                for method in methods[shift:] + methods[:shift]:
                    seconds, tokens, stats = 0.0, 0, {}
                    for b, (ids, mask) in enumerate(data):
                        synchronize(device)
                        start = time.perf_counter()
                        out = method.generate(ids, mask)
                        synchronize(device)
                        seconds += time.perf_counter() - start
                        tokens += out.shape[0] * (out.shape[1] - ids.shape[1])
                        if round_ == 0:
                            method.outputs.append(out.cpu())
                        if method.strategy is not None:
                            _merge_stats(stats, method.strategy.stats)
                    method.seconds.append(seconds)
                    method.tokens = tokens
                    method.stats = stats
                _log(f"  round {round_ + 1}/{rounds}: " + ", ".join(
                    f"{m.name} {m.tokens / m.seconds[-1]:.1f} tok/s" for m in methods), quiet)
        _log(f"  measuring c and v (batch {batch_size}, cache {context_length} tokens, {cost_repeats} repeats)", quiet)
        cost = cost_ratios(target, draft, batch_size, context_length, draft_lengths, repeats=cost_repeats)
        costs[batch_size] = {"c": cost["c"], "v": {str(g): v for g, v in cost["v"].items()},
                             "seconds": cost["seconds"], "context_length": context_length}
        cells.extend(_cells(methods, batch_size, cost))
    return cells, costs


def _cells(methods: list[Method], batch_size: int, cost: dict) -> list[dict]:
    baseline = methods[0]
    base_rate = baseline.tokens / statistics.median(baseline.seconds)
    acceptance = {m.g: _acceptance(m.stats, m.g) for m in methods if m.kind == "speculative"}
    cells = []
    for method in methods:
        rate = method.tokens / statistics.median(method.seconds)
        same = [torch.equal(a, b) for a, b in zip(method.outputs, baseline.outputs)]
        rows = sum(a.shape[0] for a in method.outputs)
        rows_equal = sum(int((a == b).all(dim=1).sum()) if a.shape == b.shape else 0
                         for a, b in zip(method.outputs, baseline.outputs))
        cell = {
            "batch_size": batch_size,
            "method": method.kind,
            "name": method.name,
            "num_draft_tokens": method.g,
            "tokens_per_s": rate,
            "tokens_per_s_rounds": [method.tokens / s for s in method.seconds],
            "new_tokens_per_round": method.tokens,
            "speedup": rate / base_rate,
            "matches_target": all(same),
            "rows_matching_target": f"{rows_equal}/{rows}",
        }
        if method.g is not None:
            g = method.g
            a = acceptance[g]["alpha"]
            ceil = ceiling(a, g, cost["c"], cost["v"][g])
            cell.update(acceptance[g])
            cell.update({"c": cost["c"], "v": cost["v"][g], "ceiling": ceil,
                         "ceiling_v1": ceiling(a, g, cost["c"], 1.0),
                         "efficiency": efficiency(cell["speedup"], ceil)})
            if method.kind == "assisted":
                cell["acceptance_source"] = "speculative strategy at the same g (same greedy drafts)"
        cells.append(cell)
    return cells


# ----------------------------------------------------------------------------------------------- report


COLUMNS = [("batch", "batch_size", "{}"), ("method", "name", "{}"), ("tok/s", "tokens_per_s", "{:.1f}"),
           ("speedup", "speedup", "{:.2f}x"), ("acc", "acceptance_rate", "{:.3f}"),
           ("alpha", "alpha", "{:.3f}"),
           ("tau", "mean_accepted_length", "{:.2f}"), ("c", "c", "{:.3f}"), ("v", "v", "{:.2f}"),
           ("ceiling", "ceiling", "{:.2f}x"), ("eff", "efficiency", "{:.2f}"),
           ("= target", "matches_target", "{}"), ("per-position acceptance", "per_position_acceptance", "{}")]


def _format(cell: dict, key: str, fmt: str) -> str:
    value = cell.get(key)
    if value is None:
        return "-"
    if key == "per_position_acceptance":
        return " ".join(f"{x:.2f}" for x in value) if value else "-"
    if key == "matches_target":
        return ("yes" if value else "NO") + f" ({cell['rows_matching_target']})"
    return fmt.format(value)


def format_table(cells: list[dict]) -> str:
    """The results as a plain-text table."""
    rows = [[name for name, _, _ in COLUMNS]] + [[_format(c, k, f) for _, k, f in COLUMNS] for c in cells]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i in (1, len(COLUMNS) - 1) else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def print_table(cells: list[dict], title: str) -> None:
    """Print the table with rich when it is installed, plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(format_table(cells))
        return
    table = Table(title=title)
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="left" if name in ("method", "per-position acceptance") else "right")
    for cell in cells:
        table.add_row(*[_format(cell, k, f) for _, k, f in COLUMNS])
    Console(width=max(160, Console().width)).print(table)


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} torch threads)"


# ----------------------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.speedup", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 4], help="comma-separated, e.g. 1,4")
    parser.add_argument("--draft-lengths", type=_int_list, default=[4], help="comma-separated g values, e.g. 2,4,6")
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
    """Run the benchmark from command-line arguments; print the table, write JSON if asked, return the results.

    The result (and the JSON file) has keys ``meta`` (versions, device, commit, date, arguments, pair shape),
    ``costs`` (per batch size: ``c``, ``v`` per g, median seconds of each forward, ``context_length``),
    ``checks`` (greedy equality with the target per cell) and ``cells`` (one dict per batch size and method with
    ``tokens_per_s``, ``speedup``, ``matches_target`` and, for draft methods, ``acceptance_rate``,
    ``mean_accepted_length``, ``per_position_acceptance``, ``c``, ``v``, ``ceiling``, ``efficiency``).
    """
    args = parse_args(argv)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # no per-call generation warnings between progress lines
    try:
        return _main(args)
    finally:
        transformers.logging.set_verbosity(verbosity)


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
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "decoding": decoding.__version__,
        "device": str(target.device),
        "device_name": _device_name(target.device),
        "torch_threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "draft_parameters": sum(p.numel() for p in draft.parameters()),
        "pair": {"num_layers": args.num_layers, "hidden_size": args.hidden_size, "vocab_size": args.vocab_size,
                 "intermediate_size": target.config.intermediate_size, "damping": args.damping,
                 "head_scale": args.head_scale},
        "prompt_lengths": [p.numel() for p in prompts],
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "benchmark_seconds": time.perf_counter() - started,
    }
    checks = [{"batch_size": c["batch_size"], "name": c["name"], "matches_target": c["matches_target"],
               "rows_matching_target": c["rows_matching_target"]} for c in cells if c["method"] != "target"]
    result = {"meta": meta, "costs": {str(b): v for b, v in costs.items()}, "checks": checks, "cells": cells}

    title = (f"Greedy speedup, synthetic damped pair ({meta['target_parameters'] / 1e6:.1f}M target, "
             f"{meta['draft_parameters'] / 1e6:.1f}M draft), {args.max_new_tokens} new tokens, "
             f"{args.prompts} prompts, {meta['device_name']}")
    print_table(cells, title)
    for check in checks:
        verdict = "equal" if check["matches_target"] else "DIFFERENT"
        print(f"check: batch {check['batch_size']}, {check['name']}: greedy output {verdict} to the target's "
              f"({check['rows_matching_target']} rows)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
