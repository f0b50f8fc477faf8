"""Speed of the contrastive strategies: CD's overhead over its two models, and SCD's speedup over CD.

``python -m decoding.evals.contrastive_speed``: greedy expert, amateur, CD and SCD per draft length, timed
interleaved per batch size (manual: ``docs/BENCHMARKS.md``, "Other benchmarks").
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

import decoding
from decoding.evals.bench.prompts import load_prompt_set, select_prompts
from decoding.evals.common.acceptance import acceptance_summary, merge_stats
from decoding.evals.common.batches import make_batches
from decoding.evals.common.measure import rotated, synchronize
from decoding.evals.common.provenance import device_name, git_commit

DESCRIPTION = "Speed of the contrastive strategies: CD's overhead over its two models, and SCD's speedup over CD."


def _methods(expert, amateur, alpha: float, beta: float, draft_lengths) -> dict:
    """Name -> strategy, or None for a model's own greedy ``generate`` (the model is named in ``_model``)."""
    methods = {"expert": None, "amateur": None, "cd": decoding.ContrastiveDecoding(amateur, alpha=alpha, beta=beta)}
    for g in draft_lengths:
        methods[f"scd g={g}"] = decoding.SpeculativeContrastiveDecoding(amateur, alpha=alpha, beta=beta,
                                                                         num_draft_tokens=g)
    return methods


def _generate(name, strategy, expert, amateur, batch, new_tokens: int, pad: int) -> torch.Tensor:
    model = amateur if name == "amateur" else expert
    kwargs = {"strategy": strategy} if strategy is not None else {}
    return model.generate(batch.ids, attention_mask=batch.mask, max_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=pad, **kwargs)


def measure_batches(expert, amateur, batches, *, new_tokens: int, alpha: float, beta: float, draft_lengths,
                    rounds: int = 3, pad: int = 0) -> dict:
    """Seconds per token step of every method over ``batches`` (one batch size), and the derived ratios."""
    decoding.enable(expert)
    methods = _methods(expert, amateur, alpha, beta, draft_lengths)
    names = list(methods)
    seconds = {name: [0.0] * rounds for name in names}
    steps = {name: [0] * rounds for name in names}
    outputs = {name: [] for name in names}
    stats = {name: {} for name in names if name.startswith("scd")}
    with torch.no_grad():
        for name in names:  # untimed warm-up
            _generate(name, methods[name], expert, amateur, batches[0], min(new_tokens, 8), pad)
        for round_ in range(rounds):
            for b, batch in enumerate(batches):
                for name in rotated(names, round_ + b):
                    synchronize(batch.ids.device)
                    start = time.perf_counter()
                    out = _generate(name, methods[name], expert, amateur, batch, new_tokens, pad)
                    synchronize(batch.ids.device)
                    seconds[name][round_] += time.perf_counter() - start
                    steps[name][round_] += out.shape[1] - batch.ids.shape[1]
                    if round_ == 0:
                        outputs[name].append(out)
                        if name in stats:
                            merge_stats(stats[name], methods[name].stats)
    per_token = {name: statistics.median(s / n for s, n in zip(seconds[name], steps[name])) for name in names}
    return _ratios(per_token, outputs, stats, draft_lengths)


def _ratios(per_token: dict, outputs: dict, stats: dict, draft_lengths) -> dict:
    scd = {}
    for g in draft_lengths:
        name = f"scd g={g}"
        summary = acceptance_summary(stats[name], g)
        scd[g] = {
            "speedup_over_cd": per_token["cd"] / per_token[name],
            "equals_cd": all(torch.equal(a, b) for a, b in zip(outputs[name], outputs["cd"])),
            **{key: summary[key] for key in ("alpha", "acceptance_rate", "mean_accepted_length")},
        }
    best = max(scd, key=lambda g: scd[g]["speedup_over_cd"])
    return {
        "seconds_per_token": per_token,
        "cd_overhead": per_token["cd"] / (per_token["expert"] + per_token["amateur"]),
        "scd": scd,
        "best_g": best,
    }


def _pair(args):
    if args.target == "synthetic":
        from decoding.model_pairs.synthetic import damped_pair

        expert, amateur = damped_pair(seed=args.seed, intermediate_size=2048)
        return expert, amateur, None
    from decoding.model_pairs.loading import load_pair

    loaded = load_pair(args.target, args.amateur, dtype="float32")
    return loaded.target, loaded.draft, loaded.tokenizer


def _prompts(tokenizer, vocab: int, args) -> list[torch.Tensor]:
    """The shipped prompt set (default mix) tokenized, or random ids for the synthetic pair."""
    if tokenizer is None:
        generator = torch.Generator().manual_seed(args.seed)
        return [torch.randint(1, vocab, (48,), generator=generator) for _ in range(7)]
    prompts = select_prompts(load_prompt_set())
    return [torch.tensor(tokenizer(p.text)["input_ids"][-args.max_prompt_tokens:]) for p in prompts]


def _line(size: int, r: dict) -> str:
    t = r["seconds_per_token"]
    parts = [f"batch {size}: ms/token " + " ".join(f"{name} {1e3 * s:.2f}" for name, s in t.items()),
             f"  cd overhead {r['cd_overhead']:.3f} (goal <= 1.15)"]
    for g, s in r["scd"].items():
        parts.append(f"  scd g={g}: {s['speedup_over_cd']:.2f}x over cd (alpha {s['alpha']:.3f}, tau "
                     f"{s['mean_accepted_length']:.2f}), output == cd: {s['equals_cd']}")
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.contrastive_speed",
                                     description=DESCRIPTION)
    parser.add_argument("--target", default="embedded",
                        help="registry name, hub id or path, or 'synthetic' (default: embedded)")
    parser.add_argument("--amateur", default=None, help="amateur path or id (default: the pair's draft)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated (default: 1,8)")
    parser.add_argument("--draft-lengths", default="2,3,4", help="SCD draft lengths, comma-separated (default: 2,3,4)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    expert, amateur, tokenizer = _pair(args)
    pad = int(expert.generation_config.pad_token_id or 0)
    prompts = _prompts(tokenizer, expert.config.get_text_config().vocab_size, args)
    draft_lengths = [int(g) for g in args.draft_lengths.split(",")]
    results = []
    for size in (int(b) for b in args.batch_sizes.split(",")):
        batches = make_batches(prompts, size, expert.device, pad)
        result = measure_batches(expert, amateur, batches, new_tokens=args.max_new_tokens, alpha=args.alpha,
                                 beta=args.beta, draft_lengths=draft_lengths, rounds=args.rounds, pad=pad)
        results.append({"batch_size": size, **result})
        print(_line(size, result), flush=True)
    if args.json:
        meta = {"date": datetime.date.today().isoformat(), "device": device_name(expert.device),
                "threads": torch.get_num_threads(), "prompts": len(prompts), "commit": git_commit()}
        args.json.write_text(json.dumps({"arguments": vars(args) | {"json": str(args.json)}, "meta": meta,
                                         "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
