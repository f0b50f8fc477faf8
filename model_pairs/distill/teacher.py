"""Teacher outputs cached once, for distilling a draft from a large target at equal budget across divergences.

Two kinds of data, each saved as a list of records in a ``torch.save`` file:

- ``on-policy``: the target answers chat prompts (:mod:`decoding.model_pairs.distill.prompts`) with its own
  ``generate`` (greedy, or sampling at a temperature), and the logits it computed while doing so are kept, so the
  sequences cost no second teacher pass (:func:`generate_records`). ``--draft`` makes the *draft* write the
  sequences instead (student on-policy data) and the target scores them in one forward pass each.
- ``corpus``: windows of a text corpus (the Python standard library's source, code and docstrings,
  :mod:`decoding.model_pairs.corpus`) scored by one target forward each (:func:`score_windows`).

A record is ``{"ids": int64 [L], "start": s, "topk_ids": int32 [L - s, k], "topk_logp": float16 [L - s, k]}``:
row ``j`` is the teacher's top-k log-probabilities for the token at position ``s + j`` given ``ids[: s + j]``
(temperature 1, before any processing). The tail mass is ``1 - sum(exp(topk_logp))``.

    python -m decoding.model_pairs.distill.teacher --target smollm2-135m-instruct --kind on-policy \
        --out teacher-greedy.pt --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

__all__ = ["generate_records", "main", "score_windows"]


def _topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return ids.to(torch.int32), values.to(torch.float16)


@torch.no_grad()
def generate_records(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int, k: int,
                     temperature: float | None = None, scorer=None, seed: int = 0, log=print) -> list[dict]:
    """Answer every chat prompt with ``model.generate`` and keep the top-k teacher log-probs of each new token.

    ``scorer`` (the target) scores the sequences in one forward pass when ``model`` is the draft; by default
    the generating model is the teacher and its generation logits are used.
    """
    eos = tokenizer.eos_token_id
    encoded = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    records: list[dict | None] = [None] * len(encoded)
    generator = torch.Generator().manual_seed(seed)
    started = time.time()
    for b in range(0, len(order), batch_size):
        rows = order[b: b + batch_size]
        width = max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), eos, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else \
            dict(do_sample=False)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=max_new_tokens, pad_token_id=eos, eos_token_id=eos,
                             return_dict_in_generate=True, output_logits=scorer is None, **sampling)
        new = out.sequences[:, width:].cpu()
        if scorer is None:
            per_step = [_topk(step_logits, k) for step_logits in out.logits]  # a step at a time: less memory
            top_ids = torch.stack([step_ids for step_ids, _ in per_step], dim=1).cpu()  # [b, n, k]
            top_logp = torch.stack([step_logp for _, step_logp in per_step], dim=1).cpu()
        for r, i in enumerate(rows):
            n = new.shape[1]
            ends = (new[r] == eos).nonzero()
            n = int(ends[0]) + 1 if len(ends) else n
            seq = torch.cat([torch.tensor(encoded[i]), new[r, :n]])
            start = len(encoded[i])
            if scorer is None:
                rec_ids, rec_logp = top_ids[r, :n], top_logp[r, :n]
            else:
                logits = scorer(seq[None].to(scorer.device)).logits[0, start - 1: start - 1 + n]
                rec_ids, rec_logp = (t.cpu() for t in _topk(logits, k))
            records[i] = {"ids": seq, "start": start, "topk_ids": rec_ids.clone(), "topk_logp": rec_logp.clone()}
        done = min(b + batch_size, len(order))
        log(f"generated {done}/{len(order)} prompts, {sum(len(r['topk_ids']) for r in records if r):,} tokens, "
            f"{time.time() - started:.0f} s")
    return records


@torch.no_grad()
def score_windows(model, windows: torch.Tensor, *, batch_size: int, k: int, log=print) -> list[dict]:
    """Teacher top-k for every position after the first of each window (``windows``: int64 [n, L])."""
    records = []
    started = time.time()
    for b in range(0, len(windows), batch_size):
        chunk = windows[b: b + batch_size]
        top_ids, top_logp = (t.cpu() for t in _topk(model(chunk.to(model.device)).logits[:, :-1], k))
        for r in range(len(chunk)):
            records.append({"ids": chunk[r].clone(), "start": 1, "topk_ids": top_ids[r].clone(),
                            "topk_logp": top_logp[r].clone()})
        log(f"scored {len(records)}/{len(windows)} windows, {time.time() - started:.0f} s")
    return records


def corpus_windows(tokenizer, num_windows: int, length: int, seed: int = 0) -> torch.Tensor:
    """``num_windows`` random windows of ``length`` tokens from the standard library's training files."""
    from ..corpus import load_corpus

    corpus = load_corpus()
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(corpus.train), generator=rng).tolist()
    stream: list[int] = []
    for i in order:
        stream.extend(tokenizer(corpus.train[i][1])["input_ids"])
        stream.append(tokenizer.eos_token_id)
        if len(stream) > num_windows * length * 4:
            break
    stream_t = torch.tensor(stream)
    starts = torch.randint(0, len(stream_t) - length, (num_windows,), generator=rng)
    return torch.stack([stream_t[s: s + length] for s in starts.tolist()])


def answer_passages(paths: list[Path], tokenizer) -> list[str]:
    """The prose among the answers of teacher files (:func:`~.prompt_bank.prose_passages`), as text."""
    from .prompt_bank import prose_passages

    answers = [r["ids"][int(r["start"]):] for path in paths for r in torch.load(path)["records"]]
    passages = prose_passages(tokenizer.batch_decode(answers, skip_special_tokens=True))
    if not passages:
        raise SystemExit(f"no prose answer of 200 to 1,200 characters in {', '.join(map(str, paths))}: pass files of "
                         "answers to conversation or question prompts")
    return passages


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.distill.teacher",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="registry name, GGUF file or transformers folder")
    parser.add_argument("--draft", default=None, help="a draft folder: it writes the sequences, the target scores")
    parser.add_argument("--kind", choices=("on-policy", "corpus"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--k", type=int, default=32, help="teacher log-probs kept per position (default 32)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=None, help="sample at this temperature (default greedy)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--windows", type=int, default=400, help="corpus windows (default 400)")
    parser.add_argument("--window-length", type=int, default=256)
    parser.add_argument("--prompts", choices=("templated", "varied"), default="templated",
                        help="templated: about 600 fixed-template messages; varied: --count composed ones")
    parser.add_argument("--count", type=int, default=1000, help="how many varied prompts (default 1000)")
    parser.add_argument("--passages", nargs="+", type=Path, default=None,
                        help="with --prompts varied: teacher files whose answers (their prose) half of the "
                             "summarization and retrieval prompts read")
    parser.add_argument("--limit", type=int, default=None, help="only the first prompts (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the models run, for example cuda (default cpu)")
    args = parser.parse_args(argv)
    if args.passages and args.prompts != "varied":
        parser.error("--passages are read by varied prompts only: add --prompts varied")
    missing = [str(p) for p in args.passages or [] if not p.is_file()]
    if missing:
        parser.error(f"no teacher file {', '.join(missing)} for --passages: make one with --kind on-policy first")
    torch.set_num_threads(args.threads)
    from ..gguf import load_model_and_tokenizer

    target, tokenizer = load_model_and_tokenizer(args.target)
    target.to(args.device)
    started = time.time()
    if args.kind == "corpus":
        windows = corpus_windows(tokenizer, args.windows, args.window_length, args.seed)
        records = score_windows(target, windows, batch_size=max(1, args.batch_size // 4), k=args.k)
    else:
        from .prompt_bank import varied_prompts
        from .prompts import training_prompts

        passages = answer_passages(args.passages, tokenizer) if args.passages else None
        chosen = varied_prompts(args.seed, args.count, passages=passages) if args.prompts == "varied" else \
            training_prompts(args.seed)
        prompts = [p["prompt"] for p in chosen][: args.limit]
        model, scorer = target, None
        if args.draft is not None:
            from transformers import AutoModelForCausalLM

            model, scorer = AutoModelForCausalLM.from_pretrained(args.draft).eval().to(args.device), target
        records = generate_records(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size, k=args.k, temperature=args.temperature,
                                   scorer=scorer, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: str(v) for k, v in vars(args).items()}
    meta.update(seconds=round(time.time() - started, 1), records=len(records),
                tokens=sum(len(r["topk_ids"]) for r in records))
    torch.save({"meta": meta, "records": records}, args.out)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
