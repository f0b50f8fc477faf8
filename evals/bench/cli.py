"""decoding-bench: speculative decoding speedup on a real draft/target pair, explained by its measured ceiling.

``decoding-bench`` (or ``python -m decoding.evals.bench``) with no arguments runs on the embedded pair shipped in
``model_pairs/embedded`` (a Python code model) on the CPU or the first GPU. On the same prompts, for every mode
(greedy, sampling at ``--temperature``), batch size and draft length ``g`` it times the methods below,
interleaved: every batch of prompts is run by every method in turn, in an order that rotates from batch to batch
and round to round, so background load hits every method alike (one untimed warm-up call per method first; the
device is synchronized around every timed call; with ``--rounds`` > 1 the median round counts):

- ``target``: the target's own ``generate`` (the baseline of every speedup);
- ``assisted g``: transformers' ``assistant_model=draft``, drafting exactly ``g`` tokens per step
  (``num_assistant_tokens_schedule="constant"``, no confidence threshold); batch 1 only, as transformers
  refuses larger batches;
- ``speculative g``: ``decoding.SpeculativeDecoding(draft, num_draft_tokens=g)``.

A last method, ``prefill`` (the target's ``generate`` of one token), times the prompt encoding that every method
pays before its first token.

Per cell it reports tokens/s, speedup over the target (whole calls), the decoding speedup (``decode``: the same
with each round's prefill time and first token per row taken off both sides, which is what the ceiling below
bounds), acceptance rate (``acc`` = accepted / drafted), the
per-token acceptance ``alpha`` (solved from ``tau`` so that the ceiling's expected tokens per step equal the
measured ones), mean accepted length ``tau`` (counts the bonus token), per-position acceptance, the measured
cost ratios ``c`` (draft forward / target forward) and ``v`` (target forward over g+1 tokens / over one),
timed in isolation (:func:`decoding.evals.measure.cost_ratios`; the JSON adds ``c_generation``,
``v_generation`` and ``ceiling_generation``, the same ratios timed on the forwards of real, untimed ``generate``
calls, :mod:`decoding.evals.generation_costs`: a diagnostic, noisier on a CPU), the
ceiling ``(1-a^(g+1)) / ((1-a)(g*c+v))`` with ``a = alpha`` (Leviathan et al.'s when v = 1) and the efficiency
(decoding speedup / ceiling). Assisted cells borrow the strategy's acceptance at the same mode, batch and ``g``.
Greedy outputs are checked against the target's own, row by row. Whole ``generate`` calls include the prompt
encoding, which speculation does not speed up: the JSON's ``ceiling_with_prefill`` is the ceiling of such a
call (measured prefill costs of both models added) and ``efficiency_with_prefill`` the whole-call speedup over
it; short generations with long prompts (or large batches, whose prompt encoding grows with the batch while a
decoding step barely does on a GPU) sit well below the plain ceiling in whole-call speedup. The ceiling counts forward
passes only; the target's own ``generate`` also spends time per step outside them (logits processing, stopping
criteria, cache bookkeeping), once per token where speculation spends it once per step, so an efficiency
slightly above 1 is possible; the target cells' ``forwards_per_token`` (1.0: no such overhead) measures it.

Data parallel: ``accelerate launch --num_processes N -m decoding.evals.bench ...`` (on CPUs:
``accelerate launch --multi_gpu --num_processes N -m decoding.evals.bench --device cpu``, or ``torchrun``)
splits the prompts between processes; each measures its share on its own device, in step with the others, and
the main process prints one report: a method's rate is the new tokens of all processes over the time of the
slowest process (processes start every round together).

The parts: prompts and batches (:mod:`decoding.evals.bench_prompts`), the pair
(:mod:`decoding.evals.bench_pairs`), the timed grid and data-parallel gathering (:mod:`decoding.evals.bench_grid`),
report cells (:mod:`decoding.evals.bench_cells`) and the command line (:mod:`decoding.evals.bench_args`); this
module runs them and prints the report.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

import decoding

from decoding.evals.bench import report
from decoding.evals.bench.args import PROG, SetupError, UsageError, parse_args
from decoding.evals.bench.cells import combine, summarize
from decoding.evals.bench.grid import Progress, gather_shares, measure_share, work_units
from decoding.evals.bench.pair import Pair, hub_pair, synthetic_pair, tokenize_prompts
# CATEGORIES, DEFAULT_MIX, Prompt, left_pad and make_batches are only re-exported: they were defined here before
# the split, and callers import them from here.
from decoding.evals.bench.prompts import CATEGORIES, DEFAULT_MIX, Prompt, left_pad, load_prompt_set, make_batches, select_prompts
from decoding.evals.common import measure

__all__ = ["CATEGORIES", "DEFAULT_MIX", "Prompt", "load_prompt_set", "left_pad", "main", "make_batches",
           "measure_share", "combine", "parse_args", "run", "select_prompts"]


def run(argv=None) -> dict:
    """Run the benchmark from command-line arguments and return the results (on every process).

    Raises :class:`UsageError` for a bad command line and :class:`SetupError` for models or prompts that
    cannot be loaded; :func:`main` turns both into one-line messages.

    The result (and ``--json``) has keys ``meta`` (date, git commit, library versions, device name, number of
    processes, pair, parameter counts, arguments), ``prompts`` (id, category, tokens), ``costs`` (per batch
    size: ``c``, ``v`` per g, median seconds of each forward, ``context_length``, ``prompt_length`` and the
    prefill costs ``prefill_target``/``prefill_draft`` in target forwards), ``checks`` (greedy equality per
    cell), ``cells`` (one per mode, batch size and method: ``tokens_per_s``, ``speedup``,
    ``decode_tokens_per_s``, ``decode_speedup``, ``matches_target``; for the target ``forwards_per_token``; for
    draft methods ``acceptance_rate``, ``alpha``, ``mean_accepted_length``, ``per_position_acceptance``, ``c``,
    ``v``, ``ceiling``, ``efficiency`` (decode_speedup / ceiling), ``ceiling_with_prefill``,
    ``efficiency_with_prefill`` (speedup / ceiling_with_prefill), and ``per_category`` acceptance for
    speculative cells at batch 1) and ``summary`` (the best
    draft length per mode and batch size).
    """
    args = parse_args(argv)
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # no per-call generation warnings between progress lines
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    try:
        return _run(args)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _device(args, state) -> torch.device:
    if state.num_processes > 1:
        return state.device
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _state(args):
    from accelerate import PartialState

    cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    try:
        device = torch.device(args.device) if args.device is not None else None
    except RuntimeError as error:
        raise UsageError(f"bad --device {args.device!r}: {error}") from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.kernels == "cupy":
        available, reason = decoding.kernels.cupy_status()
        if not available:
            raise UsageError(f"--kernels cupy: {reason}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    state = _state(args)
    if state.num_processes > 1 and args.device_map is not None:
        raise UsageError("--device-map splits one model over devices; it cannot be combined with data parallel")
    device = _device(args, state)
    if not state.is_main_process:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    try:
        prompts = select_prompts(load_prompt_set(args.prompt_set), args.categories, args.prompts_per_category)
    except (OSError, ValueError) as error:
        raise SetupError(str(error)) from None
    if len(prompts) < state.num_processes:
        raise UsageError(f"{len(prompts)} prompts cannot be split over {state.num_processes} processes: "
                         "raise --prompts-per-category")
    try:
        if args.synthetic is not None:
            dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
            pair = synthetic_pair(args.synthetic, dtype, device, args.seed)
        else:
            pair = hub_pair(args, device)
        tokenize_prompts(pair, prompts, args.max_prompt_tokens)
    except (OSError, ValueError, ImportError) as error:
        raise SetupError(_one_line(error)) from None

    with state.split_between_processes(prompts) as share:
        share = list(share)
    progress = Progress(work_units(len(share), args.batch_sizes, args.draft_lengths, args.modes, args.rounds,
                                   args.assisted), enabled=not args.quiet and state.is_main_process)
    try:
        with decoding.kernels.use_backend(args.kernels):
            raw = measure_share(pair, share, batch_sizes=args.batch_sizes, draft_lengths=args.draft_lengths,
                                modes=args.modes, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                rounds=args.rounds, cost_repeats=args.cost_repeats, seed=args.seed,
                                assisted=args.assisted, state=state, progress=progress)
    finally:
        progress.close()
    shares = gather_shares(raw, state)
    if state.num_processes > 1:
        state.destroy_process_group()
    cells, costs, checks = combine(shares, args.max_new_tokens)
    result = {
        "meta": _meta(args, pair, state, shares, time.perf_counter() - started),
        "prompts": [{"id": p.id, "category": p.category, "tokens": p.ids.numel()} for p in prompts],
        "costs": {str(b): {**v, "v": {str(g): x for g, x in v["v"].items()}} for b, v in costs.items()},
        "checks": checks,
        "cells": cells,
        "summary": summarize(cells),
    }
    if state.is_main_process:
        _print_report(result, args)
        _write_outputs(result, args)
    return result


def _write_outputs(result: dict, args) -> None:
    """``--json`` then ``--plot``; a late write failure still leaves the JSON somewhere, and says where."""
    json_error = plot_error = None
    if args.json is not None:
        written, json_error = report.write_json_or_fallback(result, args.json)
        print(f"wrote {written}")
    if args.plot is not None:
        try:
            print(f"wrote {report.plot_speedup(result['cells'], args.plot, _title(result, 'speedup'))}")
        except OSError as error:
            plot_error = error
    if json_error is not None:
        raise SetupError(f"--json {args.json} could not be written ({json_error}); the results are in {written}")
    if plot_error is not None:
        raise SetupError(f"--plot {args.plot} could not be written ({plot_error})")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def _meta(args, pair: Pair, state, shares: list[dict], seconds: float) -> dict:
    target, draft = pair.target, pair.draft
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": measure.git_commit(),
        **measure.library_versions(),
        "decoding": decoding.__version__,
        "device": str(target.device),
        "device_name": shares[0]["device_name"],
        "device_names": [s["device_name"] for s in shares],
        "num_processes": state.num_processes,
        "torch_threads": torch.get_num_threads(),
        "kernels": args.kernels,
        "cupy": dict(zip(("available", "reason"), decoding.kernels.cupy_status())),
        "target": pair.name,
        "draft": pair.draft_name,
        "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
        "quantization": "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None,
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "draft_parameters": sum(p.numel() for p in draft.parameters()),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "benchmark_seconds": seconds,
    }


def _title(result: dict, what: str) -> str:
    meta = result["meta"]
    processes = f", {meta['num_processes']} processes" if meta["num_processes"] > 1 else ""
    args = meta["arguments"]
    return (f"{what}: {meta['target']} ({meta['target_parameters'] / 1e6:.1f}M target, "
            f"{meta['draft_parameters'] / 1e6:.1f}M draft, {meta['dtype']}), {args['max_new_tokens']} new tokens, "
            f"{len(result['prompts'])} prompts, {meta['device_name']}{processes}")


def _print_report(result: dict, args) -> None:
    cells = result["cells"]
    for mode in dict.fromkeys(c["mode"] for c in cells):
        what = "greedy" if mode == "greedy" else f"sampling, temperature {args.temperature}"
        report.print_table([c for c in cells if c["mode"] == mode], _title(result, what))
        if mode == "greedy":
            report.print_checks([c for c in result["checks"] if c["mode"] == mode])
        print()
    categories = _category_lines(cells)
    if categories:
        print("\n".join(categories))
        print()
    for s in result["summary"]:
        assisted = "" if s["assisted_speedup"] is None else \
            f"; assistant_model= at g={s['best_draft_length']}: {s['assisted_speedup']:.2f}x"
        prefill = "" if s["ceiling_with_prefill"] is None else f" ({s['ceiling_with_prefill']:.2f}x counting prefill)"
        overhead = "" if s["target_forwards_per_token"] is None else \
            f"; target alone: {s['target_forwards_per_token']:.2f} forwards/token"
        print(f"best {s['mode']}, batch {s['batch_size']}: speculative g={s['best_draft_length']} {s['speedup']:.2f}x "
              f"(decoding {s['decode_speedup']:.2f}x); ceiling {s['ceiling']:.2f}x{prefill}, efficiency "
              f"{s['efficiency']:.2f}, alpha {s['alpha']:.2f}"
              f"{assisted}{overhead}")


def _category_lines(cells: list[dict]) -> list[str]:
    """Mean accepted length per prompt category (batch 1, speculative), one line per category."""
    spec = [c for c in cells if c.get("per_category")]
    if not spec:
        return []
    columns = [(c["mode"], c["num_draft_tokens"]) for c in spec]
    categories = list(dict.fromkeys(k for c in spec for k in c["per_category"]))
    head = [f"{m} g={g}" for m, g in columns]
    width = max(len(c) for c in categories + ["category"])
    lines = ["mean accepted length (tau) by category, batch 1: " + ", ".join(head)]
    for category in categories:
        values = [c["per_category"].get(category, {}).get("mean_accepted_length") for c in spec]
        lines.append(f"  {category.ljust(width)}  " + "  ".join(
            (f"{v:.2f}" if v is not None else "-").rjust(len(h)) for v, h in zip(values, head)))
    return lines


def main(argv=None) -> int:
    """Console entry point: run, print the report; returns the exit status (0, 1 on bad input, 2 on bad usage)."""
    try:
        run(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SetupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which has exited
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
