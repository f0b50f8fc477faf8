"""``MODEL_CARD.md`` of the embedded pair, written by the ``card`` stage from the training log
(``train_log.json``) the earlier stages recorded; one function per section of the card."""

from __future__ import annotations

from pathlib import Path

import torch

from ..corpus import HELD_OUT_FRACTION
from .data import EOS, PAD

__all__ = ["speed_prompts_files", "write_card"]


def write_card(out: Path, log: dict) -> None:
    """Write ``out/MODEL_CARD.md`` from ``log``."""
    sections = (_files, _corpus, _tokenizer, _models, _training, _acceptance, _reproduce, _held_out)
    lines = [line for section in sections for line in section(log)]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


def speed_prompts_files(e: dict) -> list:
    """The held-out files whose prompts the ``eval`` stage's speed check used."""
    return (e.get("prompt_files") or [])[: e.get("speed_prompts", 0)]


def _shape_line(log: dict, rec: dict) -> str:
    s = rec.get("shape", {})
    return (f"LlamaForCausalLM, {s.get('num_hidden_layers')} layers, hidden {s.get('hidden_size')}, "
            f"MLP {s.get('intermediate_size')}, {s.get('num_attention_heads')} heads "
            f"({s.get('num_key_value_heads')} KV heads), vocab {log.get('vocab_size')}, tied embeddings; "
            f"{rec.get('parameters', 0) / 1e6:.2f}M parameters")


def _train_line(rec: dict, lr) -> str:
    stopped = "" if rec.get("steps") == rec.get("planned_steps") else \
        f" (the cosine schedule ran to completion over a {rec.get('budget_s', 0) / 60:.1f}-minute time budget, " \
        f"before the preset's {rec.get('planned_steps')} steps)"
    return (f"{rec.get('steps')} steps{stopped}, {rec.get('tokens_seen', 0):,} tokens seen, peak lr {lr}, "
            f"{rec.get('wall_s')} s wall time, {rec.get('threads', 1)} CPU thread(s), autocast {rec.get('autocast')}")


def _files(log: dict) -> list[str]:
    t, d = log.get("target", {}), log.get("draft", {})
    return [
        "# Embedded model pair: a small Python-code target and its distilled draft",
        "",
        "Trained from scratch by `model_pairs/train/` on the Python standard library's own source, so",
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
    ]


def _corpus(log: dict) -> list[str]:
    held = log.get("held_out_files", [])
    return [
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
    ]


def _tokenizer(log: dict) -> list[str]:
    return [
        "## Tokenizer",
        "",
        f"Byte-level BPE (`tokenizers`), vocabulary {log.get('vocab_size')}, trained on the training files only. "
        f"`{EOS}` (id 0) is bos and eos and separates files in the training stream; `{PAD}` (id 1) pads.",
        "",
    ]


def _models(log: dict) -> list[str]:
    return ["## Models", "", f"- Target: {_shape_line(log, log.get('target', {}))}.",
            f"- Draft: {_shape_line(log, log.get('draft', {}))}.", ""]


def _training(log: dict) -> list[str]:
    t, d, p = log.get("target", {}), log.get("draft", {}), log.get("preset", {})
    return [
        "## Training",
        "",
        f"Sequence length {p.get('seq_len')}, random windows of the concatenated training stream, AdamW "
        f"(betas 0.9/0.95, weight decay {p.get('weight_decay')}), linear warmup {p.get('warmup')} steps then "
        f"cosine decay to 10%, gradient clipping {p.get('grad_clip')}.",
        "",
        f"- Target: next-token cross-entropy, batch {p.get('target_batch')}; {_train_line(t, p.get('target_lr'))}.",
        f"- Draft: distilled from the trained target: loss = {p.get('distill_weight')} * KL(target || draft) + "
        f"{round(1 - p.get('distill_weight', 0.9), 2)} * data cross-entropy, batch {p.get('draft_batch')}; "
        f"{_train_line(d, p.get('draft_lr'))}.",
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
    ]


def _acceptance(log: dict) -> list[str]:
    e = log.get("eval", {})
    lines = [
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
    speed = e.get("speed", {})
    if speed:
        lines += [
            f"Speed, {len(speed_prompts_files(e))} prompts, runs interleaved, one warm-up each, on a shared machine "
            f"(a quick check: `decoding-bench` is the real benchmark): target alone "
            f"{speed.get('target_tokens_per_s')} tokens/s; speedup of speculative decoding by draft length g: "
            + ", ".join(f"g={g}: {s}x" for g, s in speed.get("speedup_by_g", {}).items()) + ".",
            "",
        ]
    return lines


def _reproduce(log: dict) -> list[str]:
    commands = log.get("commands", [])
    several = ["The shipped files were made by these invocations, one per group of stages (the same as the single "
               "command above, which runs every stage in order; `--stages tokenizer` also resets the record):", "",
               "```", *commands, "```", ""] if len(commands) > 1 else []
    return [
        "## Reproduce",
        "",
        "```",
        _canonical_command(log),
        "```",
        "",
        *several,
        f"Seed {log.get('seed')}, preset `{log.get('preset_name')}`, device {log.get('device')}, torch "
        f"{log.get('torch')}, transformers {log.get('transformers')}, tokenizers {log.get('tokenizers')}, "
        f"Python {log.get('python')}, {log.get('threads')} CPU threads. Total wall time {log.get('wall_s_total')} s."
        + (f" {log['note']}" if log.get("note") else ""),
        "",
    ]


def _canonical_command(log: dict) -> str:
    """The single command equivalent to the recorded invocations: the last one without ``--stages``."""
    words = log.get("command", "").split()
    if "--stages" in words:
        i = words.index("--stages")
        del words[i : i + 2]
    return " ".join(words)


def _held_out(log: dict) -> list[str]:
    return ["## Held-out files", "", ", ".join(f"`{h}`" for h in log.get("held_out_files", [])), ""]
