"""Shipping a trained draft head: its weights in bfloat16 and a model card written from the run's record.

    python -m decoding.model_pairs.heads.ship --run runs/head --out model_pairs/smollm2/head

copies ``<run>/head`` (written in float32 by ``python -m decoding.model_pairs.heads``) to ``<out>`` in bfloat16,
half the size (``load_pair(..., head=True)`` loads it back in the target's dtype), and writes the card
``<out>/../HEAD_CARD.md`` (``--card`` elsewhere) from ``<run>/record.json`` and, where they still exist, the
teacher files the run read (their generation settings). :func:`head_card` is the card: a pure function of the
record.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path

import torch

from .curve import curve_row, held_out_changes, in_vocab, number, projection_lines

__all__ = ["data_files", "describe_head", "head_card", "main", "ship"]

SHIPPED_DTYPE = torch.bfloat16
_TEACHER = "python -m decoding.model_pairs.distill.teacher"
_TRAIN = "python -m decoding.model_pairs.heads"
_SHIP = "python -m decoding.model_pairs.heads.ship"


def data_files(record: dict) -> list[str]:
    """The teacher files of a run, from its settings (a list, or the ``str`` of a list of paths that the trainer
    records: ``"[PosixPath('a.pt'), PosixPath('b.pt')]"``)."""
    data = record.get("settings", {}).get("data", [])
    if isinstance(data, (list, tuple)):
        return [str(d) for d in data]
    quoted = re.findall(r"""['"]([^'"]+)['"]""", data)
    return quoted or ([data] if data else [])


def _passage_files(meta: dict) -> list[str]:
    """The teacher files whose answers a teacher file's prompts read as passages (``--passages``)."""
    return data_files({"settings": {"data": meta["passages"]}})


def _setting(settings: dict, name: str):
    """A recorded setting as a value: ``None`` for ``"None"``, else the string."""
    value = settings.get(name)
    return None if value in (None, "None", "") else value


def _train_command(settings: dict) -> str:
    parts = ["--target", str(settings.get("target")), "--data", *data_files({"settings": settings}),
             "--out", str(settings.get("out"))]
    for name in ("draft_vocab", "ttt", "decay", "lr", "lr_end", "batch_tokens", "steps", "time_limit", "heldout",
                 "eval_every", "device", "threads", "seed"):
        value = _setting(settings, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    parts += [flag for flag, name in (("--resume", "resume"), ("--reselect-vocab", "reselect_vocab"))
              if settings.get(name) == "True"]
    return " ".join([_TRAIN, *(shlex.quote(p) for p in parts)])


def _teacher_command(meta: dict) -> str:
    parts = ["--target", str(meta.get("target")), "--kind", str(meta.get("kind"))]
    names = ["draft", "k", "max_new_tokens", "temperature", "batch_size", "limit", "seed", "threads", "device"]
    if meta.get("prompts") not in (None, "templated"):
        names += ["prompts", "count"]
    if meta.get("kind") == "corpus":
        names = ["k", "windows", "window_length", "batch_size", "seed", "threads", "device"]
    for name in names:
        value = _setting(meta, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    if _setting(meta, "passages") is not None:
        parts += ["--passages", *_passage_files(meta)]
    parts += ["--out", str(meta.get("out"))]
    return " ".join([_TEACHER, *(shlex.quote(p) for p in parts)])


def _teacher_row(path: str, meta: dict | None) -> str:
    name = f"`{Path(path).name}`"
    if meta is None:
        return f"| {name} | (not read: the file was not found when the card was written) | | | | |"
    temperature = _setting(meta, "temperature")
    if meta.get("kind") == "corpus":
        kind = f"corpus windows of {meta.get('window_length')} tokens"
    else:
        kind = f"the target's {'greedy' if temperature is None else f'sampled (T = {temperature})'} answers"
        if meta.get("prompts") not in (None, "templated"):
            kind += f" to {meta['prompts']} prompts (seed {meta.get('seed')})"
        if _setting(meta, "passages") is not None:
            kind += ", passages from " + ", ".join(f"`{Path(f).name}`" for f in _passage_files(meta))
    return (f"| {name} | {kind} | {number(meta.get('records', 0))} | {number(meta.get('tokens', 0))} | "
            f"{meta.get('max_new_tokens') if meta.get('kind') != 'corpus' else '-'} | "
            f"{float(meta.get('seconds', 0)) / 60:.1f} |")


def describe_head(head, folder: str | Path | None = None) -> dict:
    """The facts of a head that its card states: shape, parameters, layers read, and its size on disk in
    ``folder``."""
    config = head.config
    out = {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "heads": config.num_attention_heads,
        "kv_heads": config.num_key_value_heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "draft_vocab_size": head.lm_head.out_features,
        "target_layers": list(head.target_layers),
        "parameters": sum(p.numel() for p in head.parameters()),
        "dtype": str(head.fc.weight.dtype).removeprefix("torch."),
        "own_embedding": head.embed_tokens is not None,
    }
    if folder is not None:
        out["bytes"] = sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
    return out


def head_card(record: dict, *, teachers: dict[str, dict | None] | None = None, model: dict | None = None,
              folder: str = "head", pair: str | None = None) -> str:
    """The model card of a head (markdown) from its run's ``record.json``.

    Args:
        record: the run's record (``settings``, ``training_sequences``, ``heldout_sequences``, ``steps``,
            ``tokens``, ``minutes``, ``curve``).
        teachers: the ``meta`` of each teacher file the run read, by path (``None`` for a file not found); the
            data section then says how each was generated, and the reproduction gives their commands.
        model: :func:`describe_head` of the shipped head (shape, parameters, size on disk).
        folder: the shipped head's folder, as the card should name it.
        pair: the registry pair whose head it is (``load_pair(pair, head=True)``), if any.
    """
    settings = record.get("settings", {})
    target = settings.get("target", "the target")
    files = data_files(record)
    teachers = teachers or {}
    curve = record.get("curve", [])
    ttt = int(_setting(settings, "ttt") or (len(in_vocab(curve[-1])) if curve else 1))
    draft_vocab = model["draft_vocab_size"] if model else _setting(settings, "draft_vocab")
    lines = [f"# An EAGLE-3 draft head for {target}", ""]
    use = f"`head = decoding.model_pairs.eagle.load_head({folder!r}, dtype=target.dtype)`"
    if pair:
        use = (f"`pair = decoding.model_pairs.loading.load_pair({pair!r}, head=True)` (the head is `pair.draft`, "
               f"in the target's dtype) or {use}")
    lines += [
        f"A draft head that reads {target}'s own hidden states (the EAGLE-3 design, `decoding.FeatureDraft`), in "
        f"`{folder}`. Load it with {use}, and draft with `decoding.SpeculativeDecoding(head, num_draft_tokens=g)`: "
        "the output is the target's own (lossless); the head only changes how many drafted tokens are accepted.",
        "",
        "## Model",
        "",
    ]
    if model:
        size = f", {model['bytes'] / 1e6:.1f} MB on disk" if "bytes" in model else ""
        embedding = "its own table" if model.get("own_embedding") else "the target's table"
        lines += [
            f"`Eagle3Head`: one Llama decoder layer (hidden {model['hidden_size']}, MLP {model['intermediate_size']}, "
            f"{model['heads']} heads of {model['head_dim']}, {model['kv_heads']} KV heads) whose attention reads "
            f"the target's hidden states at layers {tuple(model['target_layers'])} (fused by `fc`) and the embedding "
            f"of the next token ({embedding}); an output layer over {number(model['draft_vocab_size'])} "
            f"draft ids mapped to the target's {number(model['vocab_size'])} (`d2t`, `t2d`). "
            f"{model['parameters'] / 1e6:.2f}M parameters{size}, stored in {model['dtype']}"
            + (f" (trained in {model['trained_dtype']})" if model.get("trained_dtype", model["dtype"]) != model["dtype"]
               else "")
            + ": `load_pair(..., head=True)` loads it in the target's dtype, `load_head(..., dtype=)` in any.",
            "",
        ]
    else:
        lines += [f"`Eagle3Head`: one Llama decoder layer over {draft_vocab} draft ids.", ""]
    lines += ["## Data", ""]
    lines += [f"Teacher files (`{_TEACHER}`; only their token ids are read, the target's features and laws are "
              "computed as training goes):", "",
              "| file | what | sequences | answer tokens | max new tokens | minutes to make |",
              "|---|---|---|---|---|---|"]
    lines += [_teacher_row(path, teachers.get(path)) for path in files]
    heldout_share = _setting(settings, "heldout")
    steps, tokens = int(record.get("steps", 0)), int(record.get("tokens", 0))
    lines += [
        "",
        f"Sequences: {number(record.get('training_sequences', 0))} trained on, "
        f"{number(record.get('heldout_sequences', 0))} held out"
        + ((f" (a share of {heldout_share} of the prompts, by a hash of each prompt's ids)"
            if record.get("split") == "prompt-hash" else
            f" (a share of {heldout_share}, drawn with seed {settings.get('seed', 0)})") if heldout_share else "")
        + f". Trained: {number(tokens)} answer tokens in all (the training sequences are read again on each pass: "
        f"a token read twice counts twice) in {number(steps)} optimizer steps"
        + (f", about {tokens // steps:,} per step" if steps else "") + f", {record.get('minutes')} minutes.",
        "",
        "## Training",
        "",
        "| draft vocab | training-time test steps | step weight | lr | tokens per step (budget) | steps "
        "| time limit (s) | device | torch threads | seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {draft_vocab} | {ttt} | {_setting(settings, 'decay')} ** k | {_setting(settings, 'lr')} | "
        f"{_setting(settings, 'batch_tokens')} | {_setting(settings, 'steps') or 'no limit'} | "
        f"{_setting(settings, 'time_limit') or 'no limit'} | {_setting(settings, 'device') or 'cpu'} | "
        f"{_setting(settings, 'threads') or 'default'} | {_setting(settings, 'seed') or 0} |",
        "",
        f"Trained with `{_TRAIN}` (`decoding.model_pairs.heads.train`). The draft vocabulary is the "
        f"{draft_vocab} most frequent tokens of the training answers. The head starts from the target: its output "
        "rows and final norm are the target's, its MLP and post-attention norm those of the target's last layer, "
        "and `fc` passes the highest of the three layers through. Each step runs a batch of sequences (grouped by "
        "length up to the token budget) through the frozen target once, for its hidden states and its logits; the "
        "head reads the pairs (features of token i, token i + 1) and is trained by soft cross-entropy towards the "
        f"target's law of token i + 2 over the draft vocabulary. Training-time test: for {ttt} steps the head then "
        "reads its own output state, as it does when drafting, and predicts one token further; step k weighs "
        f"{_setting(settings, 'decay')} ** k. Positions whose target top token is outside the draft vocabulary are "
        "not trained. AdamW (betas 0.9, 0.95, no weight decay), "
        + (f"the learning rate annealed by a cosine to {_setting(settings, 'lr_end')} over the last run"
           if _setting(settings, "lr_end") else "constant learning rate") + ", gradient clipping 0.5.",
        "",
        "## Held-out curve",
        "",
        f"On the {number(record.get('heldout_sequences', 0))} held-out sequences"
        + (f" ({number(curve[-1]['positions'])} positions)" if curve else "")
        + ", teacher-forced on the target's answers. Acceptance at position k: the share of positions where the "
        "head's top token equals the target's at drafted position k, given that positions 1 to k - 1 did (greedy "
        "acceptance of the k-th drafted token), over every answer position: where the target's top token lies "
        "outside the draft vocabulary the head misses, as it does when drafting. Coverage: the share of positions "
        "whose target top token the head can draft. In vocabulary: the first position's acceptance over those "
        "positions only, the only figure measured before 2026-12-06 (those rows show no other). Reach: the share "
        "where all of the first k drafted tokens match. "
        f"Accepted per step: the expected number of accepted drafted tokens per step of greedy speculative "
        f"decoding with g = {ttt} (the sum of the reaches; tokens per target forward are one more)."
        + (" Held out by prompt (a hash of the prompt's ids): every answer to a held-out prompt, in every file, is "
           "held out." if record.get("split") == "prompt-hash" else
           " The held-out sequences are drawn from the same teacher files as the trained ones: a held-out answer may "
           "be to a prompt that another file answers in training." if len(files) > 1 else ""),
        "",
    ]
    lines += held_out_changes(curve)
    lines += [
        "| step | tokens | minutes | held-out positions | " + " | ".join(f"acceptance {k}" for k in range(1, ttt + 1))
        + f" | reach {ttt} | accepted per step (g = {ttt}) | coverage | in vocabulary, 1 |",
        "|---|---|---|---|" + "---|" * ttt + "---|---|---|---|",
    ]
    lines += [curve_row(point, ttt) for point in curve]
    notes = [f"step {p['step']}: {p['note']}" for p in curve if p.get("note")]
    lines += ["", "Notes on the rows: " + "; ".join(notes) + "."] if notes else []
    lines += projection_lines(curve)
    lines += ["", "## Reproduce", "", "```"]
    lines += [_teacher_command(teachers[path]) for path in files if teachers.get(path)]
    lines += [_train_command(settings),
              f"{_SHIP} --run {shlex.quote(str(settings.get('out', 'RUN')))} --out {shlex.quote(folder)}", "```", ""]
    if any(teachers.get(path) is None for path in files):
        lines += ["The teacher files not found when this card was written are made by the same teacher command "
                  "(`--kind on-policy --k 1`, see `model_pairs/smollm2/train_head_gpu.sh`).", ""]
    lines += [f"The run's record (settings and the full curve: agreement, reach and acceptance per position) is "
              f"`{Path(folder).name}/record.json`.", ""]
    return "\n".join(lines)


def _read_meta(path: str) -> dict | None:
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True)["meta"])
    except (OSError, KeyError, RuntimeError, TypeError, ValueError):
        return None


def ship(run: str | Path, out: str | Path, card: str | Path | None = None, *, folder_name: str | None = None,
         pair: str | None = None, notes: str | Path | None = None) -> tuple[Path, Path]:
    """Copy ``<run>/head`` to ``out`` in bfloat16 with the run's record, and write its card (default
    ``<out>/../HEAD_CARD.md``), ending with the markdown file ``notes`` when given (measurements made after
    training, such as the head's speed on the real pair); returns ``(out, card)``."""
    from decoding.model_pairs.eagle import load_head, save_head

    run, out = Path(run), Path(out)
    record = json.loads((run / "record.json").read_text())
    head = load_head(run / "head")
    trained_dtype = str(head.fc.weight.dtype).removeprefix("torch.")
    head = head.to(SHIPPED_DTYPE)
    head.config.dtype = SHIPPED_DTYPE
    save_head(head, out)
    (out / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    mask = os.umask(0)
    os.umask(mask)
    for path in out.iterdir():  # safetensors writes its file owner-only: shipped files get the umask's mode
        if path.is_file():
            path.chmod(0o666 & ~mask)
    teachers = {path: _read_meta(path) for path in data_files(record)}
    card = Path(card) if card is not None else out.parent / "HEAD_CARD.md"
    model = {**describe_head(head, out), "trained_dtype": trained_dtype}
    text = head_card(record, teachers=teachers, model=model, folder=folder_name or str(out), pair=pair)
    if notes is not None:
        text = text.rstrip("\n") + "\n\n" + Path(notes).read_text().strip() + "\n"
    card.write_text(text)
    return out, card


def _registered_pair(out: Path) -> str | None:
    """The registry pair whose head folder ``out`` is, if any."""
    from decoding.model_pairs.registry import pairs

    resolved = out.resolve()
    return next((p.name for p in pairs() if p.head and Path(p.head).resolve() == resolved), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=_SHIP, description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder of python -m decoding.model_pairs.heads")
    parser.add_argument("--out", type=Path, required=True, help="where the head goes (created)")
    parser.add_argument("--card", type=Path, default=None, help="the card's path (default <out>/../HEAD_CARD.md)")
    parser.add_argument("--notes", type=Path, default=None, help="a markdown file appended to the card")
    args = parser.parse_args(argv)
    missing = [str(p) for p in (args.run / "record.json", args.run / "head" / "config.json",
                                *([args.notes] if args.notes else [])) if not p.is_file()]
    if missing:
        parser.error(f"{args.run} is not a finished head run: no {', '.join(missing)}")
    out, card = ship(args.run, args.out, args.card, folder_name=str(args.out), pair=_registered_pair(args.out),
                     notes=args.notes)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB) and {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
