"""``python -m decoding.model_pairs.heads``: train an EAGLE-3 draft head for a target, on a CPU or a GPU.

    python -m decoding.model_pairs.distill.teacher --target smollm2-135m-instruct --kind on-policy --k 1 \\
        --out data/greedy.pt                                   # the target's own answers (see that module)
    python -m decoding.model_pairs.heads --target smollm2-135m-instruct --data data/greedy.pt \\
        --out runs/head --draft-vocab 8192 --time-limit 1200   # --resume goes on from runs/head

The data are teacher files of ``decoding.model_pairs.distill.teacher`` (the target's greedy or sampled answers to
training prompts, or text windows): only their token ids are read; the target's features and laws are computed as
training goes. A held-out share of the sequences measures the head's acceptance every ``--eval-every`` steps; the
run keeps ``<out>/head`` (the head, in the published layout), ``<out>/state.pt`` (optimizer and position, for
``--resume``) and ``<out>/record.json`` (settings and the acceptance curve against tokens and minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..eagle import load_head, save_head
from .train import batch_of, draft_vocabulary, evaluate, new_head, revocabulary, training_step

DRAFT_VOCAB = 8192  # a new head's draft vocabulary unless --draft-vocab says otherwise


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.heads", description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="registry name, GGUF file or transformers folder")
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="teacher files (distill.teacher)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: the head, its state and record")
    parser.add_argument("--resume", action="store_true", help="go on from the head and state in --out")
    parser.add_argument("--reselect-vocab", action="store_true",
                        help="with --resume: choose the draft vocabulary again from all the training answers given "
                             "(kept ids keep their trained rows; --draft-vocab grows or shrinks it), measured before "
                             "and after")
    parser.add_argument("--draft-vocab", type=int, default=None,
                        help=f"draft vocabulary size (default {DRAFT_VOCAB}; with --resume the head's own)")
    parser.add_argument("--ttt", type=int, default=3, help="training-time-test steps (default 3)")
    parser.add_argument("--decay", type=float, default=0.8, help="weight of step k: decay ** k (default 0.8)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--lr-end", type=float, default=None,
                        help="anneal the learning rate from --lr to this over this run's --time-limit or --steps "
                             "(cosine; default: constant)")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="tokens per optimizer step (default 2048)")
    parser.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps in all")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (this run)")
    parser.add_argument("--heldout", type=float, default=0.05, help="share of sequences held out (default 0.05)")
    parser.add_argument("--eval-every", type=int, default=100, help="optimizer steps between evaluations")
    parser.add_argument("--device", default="cpu", help="where target and head run, for example cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on the CPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("draft_vocab", "ttt", "batch_tokens", "eval_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.heldout < 1:
        parser.error(f"--heldout must be in (0, 1), got {args.heldout}")
    if args.reselect_vocab and not args.resume:
        parser.error("--reselect-vocab changes a trained head: it needs --resume (a new head chooses its vocabulary)")
    if args.lr_end is not None and (args.time_limit is None and args.steps is None or not 0 <= args.lr_end <= args.lr):
        parser.error(f"--lr-end must be in [0, --lr] and needs --time-limit or --steps, got {args.lr_end}")
    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        parser.error(f"no data file {', '.join(missing)}: make it with python -m decoding.model_pairs.distill.teacher")
    return args


def annealed(lr: float, lr_end: float, share: float) -> float:
    """The learning rate at ``share`` (0 to 1) of a run: cosine from ``lr`` down to ``lr_end``."""
    return lr_end + (lr - lr_end) * 0.5 * (1 + math.cos(math.pi * min(max(share, 0.0), 1.0)))


def read_records(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        records += [{"ids": r["ids"].long(), "start": int(r["start"])} for r in torch.load(path)["records"]
                    if len(r["ids"]) >= 4]
    return records


def held_out(record: dict, share: float) -> bool:
    """Whether ``record`` is held out: by a hash of its prompt (the ids before its answer), so that every answer to
    a prompt (greedy and sampled, of every data file) falls on the same side, and the split stays as data grow."""
    digest = hashlib.sha256(record["ids"][: record["start"]].numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def batches(records: list[dict], budget: int, pad_id: int, rng: random.Random | None) -> list:
    """Records grouped by length into batches of about ``budget`` tokens (shuffled when ``rng``)."""
    order = sorted(range(len(records)), key=lambda i: len(records[i]["ids"]))
    groups, current, width = [], [], 0
    for i in order:
        width = max(width, len(records[i]["ids"]))
        if current and width * (len(current) + 1) > budget:
            groups.append(current)
            current, width = [], len(records[i]["ids"])
        current.append(i)
    groups += [current] if current else []
    if rng is not None:
        rng.shuffle(groups)
    return [batch_of([records[i] for i in group], pad_id) for group in groups]


def in_vocab_only(point: dict) -> dict:
    """A curve point of a run before 2026-12-06, whose acceptance counted only the positions the head could draft,
    under the names that say so (later points have both)."""
    if "acceptance_in_vocab" in point:
        return point
    moved = {"acceptance": "acceptance_in_vocab", "reach": "reach_in_vocab", "agreement": "agreement_in_vocab"}
    return {moved.get(key, key): value for key, value in point.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..gguf import load_model_and_tokenizer

    target, tokenizer = load_model_and_tokenizer(args.target)
    target = target.to(args.device).eval().requires_grad_(False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    records = read_records(args.data)
    rng = random.Random(args.seed)
    rng.shuffle(records)
    heldout = [r for r in records if held_out(r, args.heldout)]
    training = [r for r in records if not held_out(r, args.heldout)]
    if not heldout or not training:
        raise SystemExit(f"--heldout {args.heldout} leaves {len(heldout)} held-out and {len(training)} training "
                         "sequences: both need some (more data, or another share)")
    vocab = target.config.get_text_config().vocab_size
    head, state, optimizer = start(args, target, training, vocab)
    embed = target.get_input_embeddings()
    to_device = lambda batch: type(batch)(*(t.to(args.device) for t in (batch.ids, batch.mask, batch.trained)))  # noqa: E731
    eval_batches = [to_device(b) for b in batches(heldout, args.batch_tokens, pad_id, None)]
    started, last, first_step = time.time(), None, state["step"]

    def measure(note: str | None = None) -> None:
        result = evaluate(head, embed, target, eval_batches, args.ttt)
        state["curve"].append({"step": state["step"], "tokens": state["tokens"],
                               "minutes": round((state["seconds"] + time.time() - started) / 60, 2), **result,
                               **({"note": note} if note else {})})
        progress.write(f"step {state['step']}{f' ({note})' if note else ''}: held-out acceptance by position "
                       f"{[round(a, 3) for a in result['acceptance']]} (coverage {result['coverage']:.3f})")

    progress = tqdm(desc="training the head", unit="step", initial=state["step"], total=args.steps)
    if args.reselect_vocab:
        measure("before the vocabulary was chosen again")
        size = args.draft_vocab or head.d2t.numel()
        new = revocabulary(head, target, draft_vocabulary(training, size, vocab).to(args.device), optimizer)
        measure(f"the vocabulary chosen again: {new} new ids")
    done = False
    while not done:
        for batch in batches(training, args.batch_tokens, pad_id, rng):
            last = training_step(head, embed, target, to_device(batch), optimizer, args.ttt, args.decay, clip=0.5)
            state["step"] += 1
            state["tokens"] += int(batch.trained.sum())
            progress.update(1)
            progress.set_postfix(loss=f"{last['loss']:.3f}")
            elapsed = time.time() - started
            done = (args.steps is not None and state["step"] >= args.steps) or \
                   (args.time_limit is not None and elapsed >= args.time_limit)
            if args.lr_end is not None:
                share = elapsed / args.time_limit if args.time_limit is not None else \
                    (state["step"] - first_step) / max(args.steps - first_step, 1)
                for group in optimizer.param_groups:
                    group["lr"] = annealed(args.lr, args.lr_end, share)
            if state["step"] % args.eval_every == 0 or done:
                measure()
            if done:
                break
    progress.close()
    state["seconds"] += time.time() - started
    save_run(args, head, state, optimizer, len(training), len(heldout))
    print(f"wrote {args.out / 'head'}; held-out acceptance {state['curve'][-1]['acceptance']}")
    return 0


def start(args: argparse.Namespace, target, training: list[dict], vocab: int):
    """``(head, state, optimizer)``: a new head over the training answers' most frequent ids, or (``--resume``) the
    run's head, state and optimizer, older curve points renamed (:func:`in_vocab_only`)."""
    if args.resume:
        head = load_head(args.out / "head").to(args.device)
        state = torch.load(args.out / "state.pt", weights_only=False)
        if args.draft_vocab not in (None, head.d2t.numel()) and not args.reselect_vocab:
            raise SystemExit(f"--draft-vocab {args.draft_vocab}: the head in {args.out} has {head.d2t.numel()} draft "
                             "ids; add --reselect-vocab to resize it, or leave --draft-vocab out")
    else:
        head = new_head(target, draft_vocabulary(training, args.draft_vocab or DRAFT_VOCAB, vocab), args.seed)
        head = head.to(args.device)
        state = {"step": 0, "tokens": 0, "seconds": 0.0, "curve": []}
    optimizer = torch.optim.AdamW(head.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    if args.resume:
        optimizer.load_state_dict(state["optimizer"])
        state["curve"] = [in_vocab_only(point) for point in state["curve"]]
    return head, state, optimizer


def save_run(args: argparse.Namespace, head, state: dict, optimizer, training: int, heldout: int) -> None:
    """The run folder: the head (published layout), the state for ``--resume`` and ``record.json``."""
    save_head(head, args.out / "head")
    torch.save({**state, "optimizer": optimizer.state_dict()}, args.out / "state.pt")
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "record.json").write_text(json.dumps(
        {"settings": settings, "split": "prompt-hash", "training_sequences": training, "heldout_sequences": heldout,
         "steps": state["step"], "tokens": state["tokens"], "minutes": round(state["seconds"] / 60, 2),
         "curve": state["curve"]}, indent=1) + "\n")
