"""Train the embedded draft/target pair from the Python standard library's source, reproducibly.

    python -m decoding.model_pairs.train --out model_pairs/embedded --preset cpu --seed 0

Stages, in order (``--stages`` runs a subset; each later stage reads what the earlier ones wrote under ``--out``):

1. ``tokenizer``: byte-level BPE (``tokenizers``) trained on the training files only, saved as a
   ``PreTrainedTokenizerFast`` (``<|endoftext|>`` is bos and eos, ``<|pad|>`` pads).
2. ``target``: a Llama-style model trained on next-token prediction (AdamW, warmup + cosine, gradient clipping,
   bfloat16 autocast where the device supports it).
3. ``draft``: a much smaller Llama distilled from the target (DistillSpec-style): the loss is the KL divergence
   from the target's next-token law to the draft's, mixed with a little of the data loss.
4. ``eval``: held-out losses of both models, and on held-out files (greedy, batch 1) the acceptance of
   speculative decoding and a short speedup measurement against the target alone.
5. ``card``: ``MODEL_CARD.md`` beside the weights, from the records the stages wrote (``train_log.json``).

The corpus and its deterministic held-out split are described in :mod:`decoding.model_pairs.corpus`. Weights are
stored in float16 (the shipped size limit is 64 MB); ``config.json`` says ``float32``, so ``from_pretrained(dir)``
upcasts them and runs in float32 on a CPU. Everything random is seeded from ``--seed`` (data order, init);
bit-exact reproduction additionally needs the same torch build, device and thread count.

The parts: presets and model shapes (:mod:`decoding.model_pairs.train.presets`), the tokenizer and token streams
(:mod:`decoding.model_pairs.train.data`), the training loop with distillation
(:mod:`decoding.model_pairs.train.loop`) and the ``eval`` stage (:mod:`decoding.model_pairs.train.evaluate`); this
module runs the stages and writes the training log; the model card is :mod:`decoding.model_pairs.train.card`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..corpus import load_corpus
from .card import write_card
from .data import encode_stream, load_tokenizer, train_tokenizer
from .evaluate import evaluate_pair
from .loop import log_message, train_model
from .presets import PRESETS, Preset

__all__ = ["LOG_NAME", "STAGES", "TARGET_TIME_SHARE", "main"]

STAGES = ("tokenizer", "target", "draft", "eval", "card")
LOG_NAME = "train_log.json"
TARGET_TIME_SHARE = 0.62


def _read_log(out: Path) -> dict:
    path = out / LOG_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _write_log(out: Path, log: dict) -> None:
    (out / LOG_NAME).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (target/, draft/, MODEL_CARD.md)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget of the two training runs together (target 62%%, draft 38%%); each "
                        "cosine schedule completes within its share (progress = max(step/steps, time/budget))")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--target-steps", type=int, default=None)
    parser.add_argument("--draft-steps", type=int, default=None)
    return parser


def _preset(args: argparse.Namespace) -> Preset:
    preset = PRESETS[args.preset]
    if args.target_steps is not None:
        preset = replace(preset, target_steps=args.target_steps)
    if args.draft_steps is not None:
        preset = replace(preset, draft_steps=args.draft_steps)
    return preset


def _start_log(out: Path, stages: list[str], args, argv, preset: Preset, device: torch.device) -> dict:
    """The training log, reset by the ``tokenizer`` stage, with this invocation and its versions added."""
    import tokenizers
    import transformers

    log = {} if "tokenizer" in stages else _read_log(out)
    command = "python -m decoding.model_pairs.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log.setdefault("commands", []).append(command)
    log.update({
        "command": command,
        "seed": args.seed, "preset_name": args.preset, "preset": asdict(preset), "device": str(device),
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
    })
    return log


def _data(out: Path, stages: list[str], preset: Preset, corpus, log: dict):
    """The tokenizer (trained or loaded) and, where a stage needs them, the training and held-out streams."""
    if "tokenizer" in stages:
        log_message(f"tokenizer: training on {len(corpus.train)} files")
        tokenizer = train_tokenizer(corpus, preset.vocab_size, out)
    else:
        tokenizer = load_tokenizer(out)
    log["vocab_size"] = len(tokenizer)
    if not any(s in stages for s in ("tokenizer", "target", "draft")):
        return tokenizer, None, None
    train_stream = encode_stream(tokenizer, corpus.train)
    held_stream = encode_stream(tokenizer, corpus.held_out)
    log["train_tokens"], log["held_out_tokens"] = train_stream.numel(), held_stream.numel()
    log_message(f"data: {train_stream.numel():,} training tokens, {held_stream.numel():,} held-out tokens")
    return tokenizer, train_stream, held_stream


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    torch.set_num_threads(args.threads)
    preset, device, out = _preset(args), _device(args.device), args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    log = _start_log(out, stages, args, argv, preset, device)
    corpus = load_corpus(max_files=preset.max_files)
    log.update({
        "train_files": len(corpus.train), "held_out_files": corpus.held_out_paths, "skipped_files": corpus.skipped,
        "train_chars": sum(len(t) for _, t in corpus.train),
    })
    tokenizer, train_stream, held_stream = _data(out, stages, preset, corpus, log)
    _write_log(out, log)

    for kind in ("target", "draft"):
        if kind in stages:
            share = TARGET_TIME_SHARE if kind == "target" else 1 - TARGET_TIME_SHARE
            budget_s = 60 * args.max_minutes * share if args.max_minutes else None
            log[kind] = train_model(kind, preset, out, device, args.seed, budget_s, train_stream, held_stream,
                                    tokenizer)
            _write_log(out, log)
    if "eval" in stages:
        log["eval"] = evaluate_pair(out, preset, corpus, args.seed)
        log["eval"]["speed_prompts"] = min(preset.speed_prompts, log["eval"]["prompts"])
    earlier = 0 if "tokenizer" in stages else log.get("wall_s_total", 0)
    log["wall_s_total"] = round(earlier + time.time() - started, 1)
    _write_log(out, log)
    if "card" in stages:
        write_card(out, log)
        if (out / "tokenizer").exists():
            shutil.rmtree(out / "tokenizer")  # each model directory holds its own copy
    log_message(f"done in {time.time() - started:.0f} s")
    return 0
