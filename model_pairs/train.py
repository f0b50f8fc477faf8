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

The parts: presets and model shapes (:mod:`decoding.model_pairs.train_presets`), the tokenizer and token streams
(:mod:`decoding.model_pairs.train_data`), the training loop with distillation
(:mod:`decoding.model_pairs.train_loop`) and the ``eval`` stage (:mod:`decoding.model_pairs.train_eval`); this
module runs the stages and writes the training log and the model card.
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

from .corpus import HELD_OUT_FRACTION, load_corpus
from .train_data import EOS, PAD, encode_stream, load_tokenizer, train_tokenizer
from .train_eval import evaluate_pair
from .train_loop import log_message, train_model
from .train_presets import PRESETS

__all__ = ["LOG_NAME", "PRESETS", "STAGES", "TARGET_TIME_SHARE", "main", "speed_prompts_files", "write_card"]

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


def write_card(out: Path, log: dict) -> None:
    t, d, e = log.get("target", {}), log.get("draft", {}), log.get("eval", {})
    p = log.get("preset", {})

    def shape_line(rec):
        s = rec.get("shape", {})
        return (f"LlamaForCausalLM, {s.get('num_hidden_layers')} layers, hidden {s.get('hidden_size')}, "
                f"MLP {s.get('intermediate_size')}, {s.get('num_attention_heads')} heads "
                f"({s.get('num_key_value_heads')} KV heads), vocab {log.get('vocab_size')}, tied embeddings; "
                f"{rec.get('parameters', 0) / 1e6:.2f}M parameters")

    def train_line(rec, lr):
        stopped = "" if rec.get("steps") == rec.get("planned_steps") else \
            f" (the cosine schedule ran to completion over a {rec.get('budget_s', 0) / 60:.1f}-minute time budget, " \
            f"before the preset's {rec.get('planned_steps')} steps)"
        return (f"{rec.get('steps')} steps{stopped}, {rec.get('tokens_seen', 0):,} tokens seen, peak lr {lr}, "
                f"{rec.get('wall_s')} s wall time, {rec.get('threads', 1)} CPU thread(s), autocast {rec.get('autocast')}")

    speed = e.get("speed", {})
    held = log.get("held_out_files", [])
    lines = [
        "# Embedded model pair: a small Python-code target and its distilled draft",
        "",
        "Trained from scratch by `model_pairs/train.py` on the Python standard library's own source, so",
        "that speculative decoding runs without downloads. These are tiny code models: useful to measure decoding",
        "speed and acceptance, not to write code.",
        "",
        "## Files",
        "",
        "- `target/`, `draft/`: `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`"
        " load each (config.json, generation_config.json, model.safetensors, tokenizer files). Weights are stored"
        " in float16; `config.json` says float32, so loading upcasts them.",
        f"- Sizes on disk: target {t.get('bytes_on_disk', 0) / 1e6:.1f} MB, draft {d.get('bytes_on_disk', 0) / 1e6:.1f} MB.",
        "",
        "## Corpus",
        "",
        f"Every `.py` file under `sysconfig.get_paths()['stdlib']` of Python {log.get('python')} "
        "(site-packages skipped; the stdlib's own tests included; non-UTF-8 files skipped), sorted by relative "
        f"path. {log.get('train_files')} training files ({log.get('train_chars', 0):,} characters, "
        f"{log.get('train_tokens', 0):,} tokens), {len(held)} held-out files ({log.get('held_out_tokens', 0):,} "
        f"tokens). A file is held out when the first 8 bytes of sha256(relative path) fall below "
        f"{HELD_OUT_FRACTION} * 2^64; held-out files were used neither for the tokenizer nor for either model. "
        f"Skipped (not UTF-8): {', '.join(log.get('skipped_files', [])) or 'none'}.",
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE (`tokenizers`), vocabulary {log.get('vocab_size')}, trained on the training files only. "
        f"`{EOS}` (id 0) is bos and eos and separates files in the training stream; `{PAD}` (id 1) pads.",
        "",
        "## Models",
        "",
        f"- Target: {shape_line(t)}.",
        f"- Draft: {shape_line(d)}.",
        "",
        "## Training",
        "",
        f"Sequence length {p.get('seq_len')}, random windows of the concatenated training stream, AdamW "
        f"(betas 0.9/0.95, weight decay {p.get('weight_decay')}), linear warmup {p.get('warmup')} steps then "
        f"cosine decay to 10%, gradient clipping {p.get('grad_clip')}.",
        "",
        f"- Target: next-token cross-entropy, batch {p.get('target_batch')}; {train_line(t, p.get('target_lr'))}.",
        f"- Draft: distilled from the trained target: loss = {p.get('distill_weight')} * KL(target || draft) + "
        f"{round(1 - p.get('distill_weight', 0.9), 2)} * data cross-entropy, batch {p.get('draft_batch')}; "
        f"{train_line(d, p.get('draft_lr'))}.",
        "",
        "| model | train loss | held-out loss |",
        "|---|---|---|",
        f"| target | {t.get('train_loss')} | {t.get('held_out_loss')} |",
        f"| draft | {d.get('train_loss')} | {d.get('held_out_loss')} |",
        "",
        f"Losses are next-token cross-entropy (nats/token) over {p.get('eval_batches')} random batches of training "
        "and of held-out windows after training (bfloat16 autocast where training used it). Draft distillation "
        f"ended with smoothed training loss {d.get('final_train_loss_smoothed')} and greedy agreement with the "
        f"target of {(d.get('history') or [{}])[-1].get('agree')} on its last logged batch.",
        "",
        "## Measured acceptance and speed (held-out files)",
        "",
        f"Greedy, batch 1, CPU float32, {torch.get_num_threads()} threads, prompts = the first "
        f"{e.get('prompt_tokens')} tokens of the first {e.get('prompts')} held-out files with at least "
        f"{(e.get('prompt_tokens') or 0) + (e.get('new_tokens') or 0)} tokens, {e.get('new_tokens')} new tokens "
        f"each, `SpeculativeDecoding(draft, num_draft_tokens=4)`:",
        "",
        f"- alpha (accepted / acceptance tests) = {e.get('alpha')}",
        f"- acceptance rate (accepted / drafted) = {e.get('acceptance_rate')}",
        f"- mean accepted length (tokens per verification step) = {e.get('mean_accepted_length')}",
        f"- greedy outputs identical to the target's own greedy generate: {e.get('greedy_outputs_identical')}",
        "",
    ]
    if speed:
        lines += [
            f"Speed, {len(speed_prompts_files(e))} prompts, runs interleaved, one warm-up each, on a shared machine "
            f"(a quick check: `decoding-bench` is the real benchmark): target alone "
            f"{speed.get('target_tokens_per_s')} tokens/s; speedup of speculative decoding by draft length g: "
            + ", ".join(f"g={g}: {s}x" for g, s in speed.get("speedup_by_g", {}).items()) + ".",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```",
        *_canonical_command(log),
        "```",
        "",
        *(["The shipped files were made by these invocations, one per group of stages (the same as the single "
           "command above, which runs every stage in order; `--stages tokenizer` also resets the record):", "",
           "```", *log.get("commands", []), "```", ""] if len(log.get("commands", [])) > 1 else []),
        f"Seed {log.get('seed')}, preset `{log.get('preset_name')}`, device {log.get('device')}, torch "
        f"{log.get('torch')}, transformers {log.get('transformers')}, tokenizers {log.get('tokenizers')}, "
        f"Python {log.get('python')}, {log.get('threads')} CPU threads. Total wall time {log.get('wall_s_total')} s."
        + (f" {log['note']}" if log.get("note") else ""),
        "",
        "## Held-out files",
        "",
        ", ".join(f"`{h}`" for h in held),
        "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


def _canonical_command(log: dict) -> list:
    """The single command equivalent to the recorded invocations: the last one without ``--stages``."""
    words = log.get("command", "").split()
    if "--stages" in words:
        i = words.index("--stages")
        del words[i : i + 2]
    return [" ".join(words)]


def speed_prompts_files(e: dict) -> list:
    return (e.get("prompt_files") or [])[: e.get("speed_prompts", 0)]


# -------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
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
    args = parser.parse_args(argv)

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.target_steps is not None:
        preset = replace(preset, target_steps=args.target_steps)
    if args.draft_steps is not None:
        preset = replace(preset, draft_steps=args.draft_steps)
    device = _device(args.device)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    import tokenizers
    import transformers

    log = _read_log(out)
    if "tokenizer" in stages:
        log = {}
    command = "python -m decoding.model_pairs.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log.setdefault("commands", []).append(command)
    log.update({
        "command": command,
        "seed": args.seed, "preset_name": args.preset, "preset": asdict(preset), "device": str(device),
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
    })

    corpus = load_corpus(max_files=preset.max_files)
    log.update({
        "train_files": len(corpus.train), "held_out_files": corpus.held_out_paths, "skipped_files": corpus.skipped,
        "train_chars": sum(len(t) for _, t in corpus.train),
    })
    if "tokenizer" in stages:
        log_message(f"tokenizer: training on {len(corpus.train)} files")
        tokenizer = train_tokenizer(corpus, preset.vocab_size, out)
    else:
        tokenizer = load_tokenizer(out)
    log["vocab_size"] = len(tokenizer)
    needs_data = any(s in stages for s in ("target", "draft"))
    if needs_data or "tokenizer" in stages:
        train_stream = encode_stream(tokenizer, corpus.train)
        held_stream = encode_stream(tokenizer, corpus.held_out)
        log["train_tokens"], log["held_out_tokens"] = train_stream.numel(), held_stream.numel()
        log_message(f"data: {train_stream.numel():,} training tokens, {held_stream.numel():,} held-out tokens")
    _write_log(out, log)

    for kind in ("target", "draft"):
        if kind in stages:
            budget_s = None
            if args.max_minutes:
                share = TARGET_TIME_SHARE if kind == "target" else 1 - TARGET_TIME_SHARE
                budget_s = 60 * args.max_minutes * share
            log[kind] = train_model(kind, preset, out, device, args.seed, budget_s, train_stream, held_stream,
                                    tokenizer)
            _write_log(out, log)
    if "eval" in stages:
        log["eval"] = evaluate_pair(out, preset, corpus, args.seed)
        log["eval"]["speed_prompts"] = min(preset.speed_prompts, log["eval"]["prompts"])
    log["wall_s_total"] = round(log.get("wall_s_total", 0) + time.time() - started, 1) if "tokenizer" not in stages \
        else round(time.time() - started, 1)
    _write_log(out, log)
    if "card" in stages:
        write_card(out, log)
    if (out / "tokenizer").exists() and "card" in stages:
        shutil.rmtree(out / "tokenizer")  # each model directory holds its own copy
    log_message(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
