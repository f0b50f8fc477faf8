"""``decoding-eval`` (``python -m decoding.evals.quality``): generate continuations of a prompt set with every
method, score them, print the table and write ``--json``. The manual: ``docs/QUALITY.md``."""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import decoding
from decoding.evals.common import files
from decoding.evals.common.cli_args import SetupError, run_command
from decoding.evals.common.provenance import device_name, git_commit, library_versions, utc_now
from decoding.evals.quality.args import PROG, parse_args
from decoding.evals.quality.pair import load_models
from decoding.evals.quality.prompts import (
    PromptItem,
    build_code_prompt_set,
    default_prompt_set,
    load_prompt_set,
    prompt_set_text,
    text_prompt_set,
)
from decoding.evals.quality.scores import evaluate
from decoding.evals.quality.table import print_table

__all__ = ["main", "run"]

CONFIG_LEFT_OUT = ("json", "save_generations", "write_prompt_set", "quiet")  # arguments not in the JSON's config


def main(argv=None) -> int:
    """Console entry point: run the evaluation and print its table; returns 0. A failure prints one line on stderr
    and exits (``SystemExit``) with status 2 for a bad command line, 1 for bad input or an output written
    elsewhere, 130 when interrupted (:func:`decoding.evals.common.cli_args.run_command`, as ``decoding-bench``)."""
    status = run_command(PROG, run, argv)
    if status:
        raise SystemExit(status)
    return 0


def run(argv=None) -> dict | None:
    """Run the CLI; returns the result dict (also written with ``--json``), None for ``--write-prompt-set``.
    Raises ``UsageError`` for a bad command line and ``SetupError`` for bad input or an unwritten output."""
    args = parse_args(argv)
    if args.write_prompt_set is not None:
        return _write_prompt_set(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[{PROG} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    prompt_set = args.prompt_set or default_prompt_set()
    try:
        items = load_prompt_set(prompt_set, limit=args.num_prompts or None)
    except (OSError, ValueError) as error:  # missing, binary, malformed, empty: the file (and line) named
        raise SetupError(str(error)) from None
    log(f"{len(items)} prompts from {prompt_set}; loading models")
    try:
        pair = load_models(args, items)
    except (OSError, ValueError) as error:  # ModelNotFoundError, UnknownPairError, mismatched tokenizers
        raise SetupError(str(error)) from None
    result = evaluate(pair, items, args.methods, args, log)
    generations = result.pop("_generations")
    config = {key: value for key, value in vars(args).items() if key not in CONFIG_LEFT_OUT}
    config.update(prompt_set=str(prompt_set), num_prompts=len(items), pair=pair.name)
    result = {"config": config, "environment": _environment(args.device), "date": utc_now(), **result}
    print_table(result, f"{PROG}: {pair.name}, {len(items)} prompts, {args.max_new_tokens} new tokens")
    outputs = [("--json", args.json, json.dumps(_json_ready(result), indent=1) + "\n", ".json"),
               ("--save-generations", args.save_generations, _generations_text(generations, items), ".jsonl")]
    _write_outputs([output for output in outputs if output[1] is not None], log)
    return result


def _write_outputs(outputs: list[tuple[str, Path, str, str]], log=lambda message: None) -> None:
    """Write each ``(option, path, text, suffix)``; one that fails late goes to a temporary file instead, and a
    ``SetupError`` then says where, once every output is written."""
    failures = []
    for option, path, text, suffix in outputs:
        written, error = files.write_text_or_fallback(text, path, suffix)
        if error is not None:
            failures.append(files.not_written(option, path, error, written))
        else:
            log(f"wrote {written}")
    if failures:
        raise SetupError("; ".join(failures))


def _write_prompt_set(args) -> None:
    """``--write-prompt-set``: the Python-code set, or with ``--from-text`` a prose set."""
    if args.from_text is None:
        records = build_code_prompt_set()
    else:
        try:
            records = text_prompt_set(args.from_text)
        except (OSError, ValueError) as error:  # unreadable or malformed: the file (and line) named
            raise SetupError(f"--from-text {error}") from None
    _write_outputs([("--write-prompt-set", args.write_prompt_set, prompt_set_text(records), ".jsonl")])
    print(f"wrote {len(records)} prompts to {args.write_prompt_set}")


def _environment(device) -> dict:
    versions = library_versions(("torch", "transformers", "tokenizers", "sentence-transformers", "mauve-text"))
    return {**versions, "pairdecode": decoding.__version__, "git_commit": git_commit(), "platform": platform.platform(),
            "device": device_name(device), "threads": torch.get_num_threads()}


def _json_ready(value):
    """NaN and infinities as null, keys as strings, paths as text."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _generations_text(generations: dict[str, list[str]], items: list[PromptItem]) -> str:
    """Every continuation as a JSON line ``{method, index, prompt, continuation}``."""
    return "".join(json.dumps({"method": method, "index": i, "prompt": items[i].prompt, "continuation": continuation},
                              ensure_ascii=False) + "\n"
                   for method, texts in generations.items() for i, continuation in enumerate(texts))
