"""``decoding-bench`` (``python -m decoding.evals.bench``): load the pair and prompts, time the grid on every
process, combine, print the report and write ``--json``/``--plot``. The manual: ``docs/BENCHMARKS.md``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import decoding
from decoding.kernels import ops as kernels
from decoding.evals.bench import pair as bench_pair
from decoding.evals.bench import report
from decoding.evals.bench.args import PROG, SetupError, UsageError, parse_args
from decoding.evals.bench.cells import combine, summarize
from decoding.evals.bench.grid import RawShare, gather_shares, measure_share
from decoding.evals.bench.plot import plot_speedup
from decoding.evals.bench.progress import Progress, work_units
from decoding.evals.bench.prompts import Prompt, load_prompt_set, select_prompts, tokenize_prompts
from decoding.evals.bench.records import Meta, PromptRecord, Result
from decoding.evals.bench.variants import Variant
from decoding.evals.common import files
from decoding.evals.common.cli_args import run_command
from decoding.evals.common.console import quiet_transformers
from decoding.evals.common.pairs import Pair
from decoding.evals.common.provenance import git_commit, library_versions, utc_now

__all__ = ["main", "run"]


def run(argv=None) -> dict:
    """Run the benchmark from command-line arguments and return the results (on every process), as the JSON
    of ``--json`` (:meth:`decoding.evals.bench.records.Result.to_dict`).

    Raises :class:`UsageError` for a bad command line and :class:`SetupError` for models or prompts that
    cannot be loaded; :func:`main` turns both into one-line messages.
    """
    args = parse_args(argv)
    with quiet_transformers(progress_bars=not args.quiet):  # no per-call generation warnings between progress lines
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    _check_environment(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    state = _state(args)
    if state.num_processes > 1 and args.device_map is not None:
        raise UsageError("--device-map splits one model over devices; it cannot be combined with data parallel")
    if not state.is_main_process:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    prompts, pair = _load(args, state, _device(args, state))
    shares = _measure(args, state, pair, prompts)
    if state.num_processes > 1:
        state.destroy_process_group()
    cells, costs, checks = combine(shares, args.max_new_tokens)
    result = Result(_meta(args, pair, state, shares, time.perf_counter() - started),
                    [PromptRecord(p.id, p.category, p.ids.numel()) for p in prompts], costs, checks, cells,
                    summarize(cells), list(getattr(args, "skipped", []))).to_dict()
    if state.is_main_process:
        report.print_report(result)
        _write_outputs(result, args)
    return result


def _check_environment(args: argparse.Namespace) -> None:
    """The device and kernels asked for exist here."""
    try:
        device = torch.device(args.device) if args.device is not None else None
    except RuntimeError as error:
        raise UsageError(f"bad --device {args.device!r}: {error}") from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.kernels == "cupy":
        available, reason = kernels.cupy_status()
        if not available:
            raise UsageError(f"--kernels cupy: {reason}")


def _state(args):
    from accelerate import PartialState

    cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _device(args, state) -> torch.device:
    if state.num_processes > 1:
        return state.device
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(args: argparse.Namespace, state, device: torch.device) -> tuple[list[Prompt], Pair]:
    """The prompts, tokenized for the pair, and the pair."""
    try:
        prompts = select_prompts(load_prompt_set(args.prompt_set), args.categories, args.prompts_per_category)
    except (OSError, ValueError) as error:
        raise SetupError(str(error)) from None
    if len(prompts) < state.num_processes:
        raise UsageError(f"{len(prompts)} prompts cannot be split over {state.num_processes} processes: "
                         "raise --prompts-per-category")
    try:
        pair = bench_pair.load(args, device)
        tokenize_prompts(pair, prompts, args.max_prompt_tokens)
    except (OSError, ValueError, ImportError) as error:
        raise SetupError(_one_line(error)) from None
    if pair.cross_tokenizer and any(v.kind == "cascade" for v in args.variants):
        raise UsageError("the draft has another tokenizer than the target: speculative cascades mix both models' "
                         "laws over one vocabulary; drop cascade from --variants")
    return prompts, pair


def _measure(args: argparse.Namespace, state, pair: Pair, prompts: list[Prompt]) -> list[RawShare]:
    """This process's share of the prompts measured; every process's results, gathered."""
    with state.split_between_processes(prompts) as share:
        share = list(share)
    progress = Progress(work_units(len(share), args.batch_sizes, args.draft_lengths, args.modes, args.rounds,
                                   args.assisted, args.variants, args.step_split),
                        enabled=not args.quiet and state.is_main_process)
    try:
        with kernels.use_backend(args.kernels):
            raw = measure_share(pair, share, batch_sizes=args.batch_sizes, draft_lengths=args.draft_lengths,
                                modes=args.modes, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                rounds=args.rounds, cost_repeats=args.cost_repeats, seed=args.seed,
                                assisted=args.assisted, variants=args.variants, state=state, progress=progress,
                                step_split=args.step_split)
    finally:
        progress.close()
    return gather_shares(raw, state)


def _meta(args, pair: Pair, state, shares: list[RawShare], seconds: float) -> Meta:
    target, draft = pair.target, pair.draft
    return Meta(
        date=utc_now(), git_commit=git_commit(), versions=library_versions(), decoding=decoding.__version__,
        device=str(target.device), device_name=shares[0]["device_name"],
        device_names=[s["device_name"] for s in shares], num_processes=state.num_processes,
        torch_threads=torch.get_num_threads(), kernels=args.kernels,
        cupy=dict(zip(("available", "reason"), kernels.cupy_status())),
        target=pair.name, draft=pair.draft_name, dtype=str(next(target.parameters()).dtype).removeprefix("torch."),
        quantization="8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None,
        target_parameters=sum(p.numel() for p in target.parameters()),
        draft_parameters=sum(p.numel() for p in draft.parameters()),
        arguments={k: _argument(v) for k, v in vars(args).items() if k != "skipped"},  # skipped: the notes
        benchmark_seconds=seconds,
        draft_head=pair.head,
    )


def _argument(value):
    """An argument as JSON: paths as text, ``--variants`` as their labels (``--head`` alone: ``true``)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list) and value and isinstance(value[0], Variant):
        return [v.label for v in value]
    return value


def _write_outputs(result: dict, args) -> None:
    """``--json`` then ``--plot``; a late write failure still leaves the JSON somewhere, and says where."""
    json_error = plot_error = None
    if args.json is not None:
        written, json_error = files.write_json_or_fallback(result, args.json)
        print(f"wrote {written}")
    if args.plot is not None:
        try:
            print(f"wrote {plot_speedup(result['cells'], args.plot, report.title(result, 'speedup'))}")
        except OSError as error:
            plot_error = error
    if json_error is not None:
        raise SetupError(files.not_written("--json", args.json, json_error, written))
    if plot_error is not None:
        raise SetupError(f"--plot {args.plot} could not be written ({plot_error})")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None) -> int:
    """Console entry point: run, print the report; returns the exit status (0, 1 on bad input, 2 on bad usage,
    130 when interrupted)."""
    return run_command(PROG, run, argv)
