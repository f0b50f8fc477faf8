"""Distil a draft from a large target on cached teacher outputs: one divergence, one data mix, a fixed budget.

    # once: the target's greedy continuations of the held-out chat prompts (acceptance is measured on them)
    python -m decoding.model_pairs.distill heldout --target smollm2-135m-instruct --out heldout.pt
    # one variant: reverse KL on on-policy data, 600 steps of ~1024 trained positions
    python -m decoding.model_pairs.distill train --target smollm2-135m-instruct --data teacher-greedy.pt \
        --divergence rkl --steps 600 --heldout heldout.pt --out runs/rkl-onpolicy

The teacher data comes from :mod:`decoding.model_pairs.distill.teacher` (top-k log-probs cached once, so every
variant trains on the same positions at the same cost); the divergences are those of
:mod:`decoding.model_pairs.distill.losses`; the draft's shape and initialisation from the target, and the
offline acceptance measurement, are in :mod:`decoding.model_pairs.distill.draft`. ``--data a.pt:2,b.pt:1`` mixes
files (records drawn with probability proportional to weight x records). Every run writes ``draft/`` (the
weights, float16 on disk) and ``record.json`` (arguments, losses, wall time, held-out acceptance) under ``--out``.
Only the positions the teacher scored are trained (the prompt is context only); the draft's output head runs on
those positions alone.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .draft import DraftShape, greedy_acceptance, make_draft, save_draft
from .losses import DIVERGENCES, divergence

__all__ = ["heldout_continuations", "main", "train"]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _load_mix(spec: str) -> tuple[list[dict], list[float], list[str]]:
    records, weights, names = [], [], []
    for item in spec.split(","):
        path, _, weight = item.partition(":")
        data = torch.load(path, weights_only=False)["records"]
        records += data
        weights += [float(weight or 1)] * len(data)
        names.append(f"{Path(path).name} x{weight or 1} ({len(data)} records)")
    return records, weights, names


def _batch(records: list[dict], pad_id: int):
    """Right-padded ids (any ``pad_id``: padding is masked and never trained) and mask, and for every trained
    position its (row, column) and the teacher's top-k."""
    width = max(len(r["ids"]) for r in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    rows, cols = [], []
    for i, r in enumerate(records):
        n = len(r["ids"])
        ids[i, :n], mask[i, :n] = r["ids"], 1
        span = torch.arange(r["start"] - 1, r["start"] - 1 + len(r["topk_ids"]))
        rows.append(torch.full_like(span, i))
        cols.append(span)
    top_ids = torch.cat([r["topk_ids"] for r in records])
    top_logp = torch.cat([r["topk_logp"] for r in records])
    return ids, mask, torch.cat(rows), torch.cat(cols), top_ids, top_logp


def train(draft, records, weights, *, divergence_name: str, steps: int, batch_tokens: int, lr: float,
          warmup: int, seed: int, pad_id: int, log_every: int = 25, max_len: int = 512,
          time_limit: float | None = None) -> dict:
    """AdamW, linear warmup then cosine decay to 10%, gradient clipping 1.0; returns the training record.

    Runs on the draft's device; on a GPU the forward runs under bfloat16 autocast (the losses in float32).
    ``time_limit`` (seconds) stops early, keeping the schedule of ``steps``: the record says where it stopped.
    """
    device = draft.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(draft.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    history, started, smoothed = [], time.time(), None
    draft.train()
    positions = 0
    for step in range(1, steps + 1):
        scale = step / warmup if step <= warmup else \
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        chosen, count = [], 0
        while count < batch_tokens:
            r = rng.choices(records, weights)[0]
            if len(r["ids"]) > max_len:  # keep the last max_len tokens
                cut = len(r["ids"]) - max_len
                keep = max(0, r["start"] - 1 - cut)
                r = {"ids": r["ids"][cut:], "start": r["start"] - cut + keep,
                     "topk_ids": r["topk_ids"][keep:], "topk_logp": r["topk_logp"][keep:]}
            chosen.append(r)
            count += len(r["topk_ids"])
        ids, mask, rows, cols, top_ids, top_logp = (t.to(device) for t in _batch(chosen, pad_id))
        with autocast:
            hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state[rows, cols]
            logits = draft.lm_head(hidden)
        logp = torch.log_softmax(logits.float(), dim=-1)
        loss = divergence(divergence_name, logp, top_ids, top_logp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(draft.parameters(), 1.0)
        optimizer.step()
        positions += len(rows)
        with torch.no_grad():
            agree = (logp.argmax(-1) == top_ids[:, 0].long()).float().mean().item()
        smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
        out_of_time = time_limit is not None and time.time() - started > time_limit
        if step % log_every == 0 or step == steps or out_of_time:
            history.append({"step": step, "loss": round(smoothed, 4), "agree": round(agree, 3),
                            "seconds": round(time.time() - started, 1)})
            _log(f"step {step}/{steps} loss {smoothed:.4f} agree {agree:.3f} {time.time() - started:.0f} s")
        if out_of_time:
            _log(f"time limit of {time_limit} s reached at step {step} of {steps}")
            break
    draft.eval()
    return {"steps": step, "steps_planned": steps, "positions": positions, "wall_s": round(time.time() - started, 1),
            "final_loss_smoothed": round(smoothed, 4), "history": history}


@torch.no_grad()
def heldout_continuations(target, tokenizer, prompts: list[dict], max_new_tokens: int) -> list[dict]:
    """The target's greedy continuation of every chat prompt, batch 1 (``{"id", "category", "ids", "start"}``)."""
    out = []
    for p in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        ids = torch.tensor([ids])
        seq = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=tokenizer.eos_token_id)[0]
        out.append({"id": p["id"], "category": p["category"], "ids": seq, "start": ids.shape[1]})
        _log(f"held-out {p['id']}: {len(seq) - ids.shape[1]} tokens")
    return out


def evaluate(draft, heldout: list[dict], g: int = 4) -> dict:
    result = greedy_acceptance(draft, [(h["ids"], h["start"]) for h in heldout], g)
    by_category = {}
    for category in dict.fromkeys(h["category"] for h in heldout):
        part = [(h["ids"], h["start"]) for h in heldout if h["category"] == category]
        by_category[category] = greedy_acceptance(draft, part, g)["alpha"]
    result["alpha_by_category"] = by_category
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.distill", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    held = sub.add_parser("heldout", help="the target's greedy continuations of the held-out chat prompts")
    held.add_argument("--target", required=True)
    held.add_argument("--out", type=Path, required=True)
    held.add_argument("--prompt-set", type=Path, default=None, help="default: evals/prompts_chat")
    held.add_argument("--max-new-tokens", type=int, default=96)
    qual = sub.add_parser("quality-prompts", help="the held-out chat prompts, chat template applied, as a "
                          "decoding-eval prompt set (JSON lines with 'prompt' and 'source')")
    qual.add_argument("--target", required=True)
    qual.add_argument("--out", type=Path, required=True)
    qual.add_argument("--prompt-set", type=Path, default=None, help="default: evals/prompts_chat")
    run = sub.add_parser("train", help="distil one draft")
    run.add_argument("--target", default=None, help="registry name, GGUF file or folder (for init and config; "
                     "not needed with --init)")
    run.add_argument("--data", required=True, help="teacher files, comma-separated, each PATH[:WEIGHT]")
    run.add_argument("--divergence", choices=DIVERGENCES, required=True)
    run.add_argument("--steps", type=int, default=600)
    run.add_argument("--batch-tokens", type=int, default=1024, help="trained positions per step (default 1024)")
    run.add_argument("--lr", type=float, default=2e-3)
    run.add_argument("--warmup", type=int, default=30)
    run.add_argument("--init", type=Path, default=None, help="continue from this draft folder")
    run.add_argument("--heldout", type=Path, default=None, help="held-out continuations (heldout command)")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--device", default="cpu", help="where to train, for example cuda (default cpu)")
    run.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    for field, default in asdict(DraftShape()).items():
        run.add_argument("--" + field.replace("_", "-"), type=int, default=default)
    for p in (held, qual, run):
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..gguf import load_model_and_tokenizer

    if args.command == "train" and args.init is None and args.target is None:
        parser.error("train needs --target (to initialise the draft) or --init (a draft to continue)")
    target, tokenizer = load_model_and_tokenizer(args.target) if args.target else (None, None)
    if args.command in ("heldout", "quality-prompts"):
        from decoding.evals.bench.prompts import CHAT_PROMPTS_DIR, load_prompt_set

        folder = args.prompt_set or CHAT_PROMPTS_DIR
        prompts = [{"id": p.id, "category": p.category, "prompt": p.text} for p in load_prompt_set(folder)]
    if args.command == "quality-prompts":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as handle:
            for p in prompts:
                text = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False,
                                                     add_generation_prompt=True)
                handle.write(json.dumps({"prompt": text, "source": p["id"]}) + "\n")
        return 0
    if args.command == "heldout":
        records = heldout_continuations(target, tokenizer, prompts, args.max_new_tokens)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(records, args.out)
        return 0

    records, weights, data_names = _load_mix(args.data)
    if args.init is not None:
        from transformers import AutoModelForCausalLM

        draft = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        shape = DraftShape(**{f: getattr(draft.config, f) for f in asdict(DraftShape())})
    else:
        shape = DraftShape(**{f: getattr(args, f) for f in asdict(DraftShape())})
        draft = make_draft(target, shape, seed=args.seed)
    del target
    draft.to(args.device)
    heldout = torch.load(args.heldout, weights_only=False) if args.heldout else None
    record = {"command": "python -m decoding.model_pairs.distill " + " ".join(sys.argv[1:] if argv is None else argv),
              "divergence": args.divergence, "data": data_names, "shape": asdict(shape),
              "parameters": sum(p.numel() for p in draft.parameters()), "torch": torch.__version__,
              "python": platform.python_version(), "threads": torch.get_num_threads(), "device": args.device}
    if draft.device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(draft.device)
    if heldout is not None:
        draft.eval()
        record["heldout_before"] = evaluate(draft, heldout)
        _log(f"held-out before: alpha {record['heldout_before']['alpha']}")
    record["train"] = train(draft, records, weights, divergence_name=args.divergence, steps=args.steps,
                            batch_tokens=args.batch_tokens, lr=args.lr, warmup=args.warmup, seed=args.seed,
                            pad_id=0, time_limit=args.time_limit)
    if heldout is not None:
        record["heldout"] = evaluate(draft, heldout)
        _log(f"held-out: {record['heldout']}")
    record["bytes_on_disk"] = save_draft(draft, args.out / "draft")
    (args.out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
