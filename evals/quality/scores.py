"""``decoding-eval``'s scores: every method's continuations generated
(:func:`decoding.evals.quality.generate.generate_all`) and scored (:mod:`decoding.evals.quality.metrics`), with
the human references as a row of their own; coherence and MAUVE are reported unavailable, with the reason, when
their optional packages or features are missing."""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass

import torch

from decoding.evals.common.acceptance import acceptance_summary
from decoding.evals.common.pairs import Pair
from decoding.evals.quality import metrics
from decoding.evals.quality.generate import Generations, at_temperature, generate_all
from decoding.evals.quality.prompts import PromptItem

__all__ = ["HUMAN", "METRIC_KEYS", "evaluate", "paired_nll_difference", "score_texts"]

HUMAN = "human"
# Every row of the JSON's "methods" has these keys (None where a metric is unavailable or does not apply).
METRIC_KEYS = ("rep_2", "rep_3", "rep_4", "diversity", "coherence", "mauve", "perplexity", "mean_words",
               "tokens_per_second")


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


@dataclass
class _Scoring:
    """What every row is scored with: the prompts (text and ids), the encoders and the human features."""

    pair: Pair
    prompts: list[str]
    prompt_ids: list[list[int]]
    coherence: _Embeddings
    features: _Embeddings | None  # MAUVE's; None when MAUVE is unavailable
    args: object
    human_features: torch.Tensor | None = None

    def text(self, ids: list[int]) -> str:
        return self.pair.tokenizer.decode(ids, skip_special_tokens=True)

    def perplexities(self, continuations: list[list[int]]) -> list[float]:
        return metrics.perplexities(self.pair.target, self.prompt_ids, continuations, self.args.batch_size,
                                    self.pair.pad_token_id)


def evaluate(pair: Pair, items: list[PromptItem], methods: list[str], args, log=print) -> dict:
    """Generate with every method and score it; the JSON-ready result (``docs/QUALITY.md``, "Output"), with the
    texts of every method under ``_generations``."""
    prompts = [item.prompt for item in items]
    prompt_ids = [pair.tokenizer(p)["input_ids"] for p in prompts]
    started = time.perf_counter()
    generations = generate_all(pair, prompt_ids, methods, args, log)
    log(f"generation: {time.perf_counter() - started:.1f} s; scoring")
    coherence = _coherence_encoder(args.encoder, args.device)
    features = coherence
    if args.mauve_features:
        features = _Embeddings(lambda: metrics.causal_lm_featurizer(args.mauve_features, device=args.device),
                               f"the MAUVE featurizer {args.mauve_features!r}")
    unavailable = {"coherence": coherence.reason, "mauve": _mauve_reason(features, items)}
    scoring = _Scoring(pair, prompts, prompt_ids, coherence, features if unavailable["mauve"] is None else None, args)
    rows = {}
    if all(item.reference for item in items):
        rows[HUMAN] = _human_row(scoring, items)
    samples = {}
    for method in methods:
        samples[method], rows[method] = _method_row(scoring, generations[method], len(items))
    _compare_with_sample(rows)
    return {
        "methods": rows,
        "unavailable": {key: reason for key, reason in unavailable.items() if reason is not None},
        "checks": _checks(generations, len(items)),
        "encoder": coherence.description,
        "mauve_features": scoring.features.description if scoring.features is not None else None,
        "samples": {method: texts[: args.show_samples] for method, texts in samples.items()} if args.show_samples else {},
        "_generations": samples,
    }


def _human_row(scoring: _Scoring, items: list[PromptItem]) -> dict:
    """The references, cut to the continuations' token budget as in the literature (both 256 tokens there);
    their features become MAUVE's human side."""
    tokenizer, budget = scoring.pair.tokenizer, scoring.args.max_new_tokens
    reference_ids = [tokenizer(item.reference, add_special_tokens=False)["input_ids"][:budget] for item in items]
    references = [scoring.text(ids) for ids in reference_ids]
    if scoring.features is not None:
        scoring.human_features = scoring.features(references)
    row = score_texts(scoring.prompts, references, scoring.coherence, None, None, scoring.args.seed)
    row["perplexity"] = _mean(scoring.perplexities(reference_ids))
    row["tokens_per_second"] = None
    return row


def _method_row(scoring: _Scoring, gen: Generations, count: int) -> tuple[list[str], dict]:
    """One method's texts and row: text metrics, the expert's perplexity, speed and strategy statistics."""
    continuations = [gen.continuations[i] for i in range(count)]
    texts = [scoring.text(ids) for ids in continuations]
    row = score_texts(scoring.prompts, texts, scoring.coherence, scoring.features, scoring.human_features,
                      scoring.args.seed)
    row["per_prompt_perplexity"] = scoring.perplexities(continuations)
    row["perplexity"] = _mean(row["per_prompt_perplexity"])
    row["tokens_per_second"] = gen.tokens / gen.seconds if gen.seconds > 0 else None
    row["new_tokens"], row["seconds"] = gen.tokens, gen.seconds
    row["stats"] = acceptance_summary(gen.stats, scoring.args.num_draft_tokens) if "drafted" in gen.stats else gen.stats
    return texts, row


def paired_nll_difference(perplexities: list[float], baseline: list[float]) -> tuple[float, float]:
    """Mean over prompts of ``log ppl - log ppl_baseline`` (the expert's NLL per token, one continuation against
    another of the same prompt) and its standard error; prompts where either is NaN are left out."""
    pairs = [(a, b) for a, b in zip(perplexities, baseline) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 2:
        return math.nan, math.nan
    diffs = [math.log(a) - math.log(b) for a, b in pairs]
    mean = sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(variance / len(diffs))


def _compare_with_sample(rows: dict) -> None:
    """Rows sampled at ``--temperature`` (speculative, cascades) get ``nll_vs_sample`` and its standard error
    ``nll_vs_sample_se``: how much less likely the expert finds their text than the target's own samples."""
    if "sample" not in rows:
        return
    baseline = rows["sample"]["per_prompt_perplexity"]
    for method, row in rows.items():
        if method != "sample" and at_temperature(method):
            row["nll_vs_sample"], row["nll_vs_sample_se"] = paired_nll_difference(row["per_prompt_perplexity"],
                                                                                  baseline)


def _checks(generations: dict, count: int) -> dict:
    """The fraction of prompts where a fast method's greedy output equals its exact counterpart's."""
    checks = {}
    for fast, exact in (("speculative_contrastive", "contrastive"),):
        if fast in generations and exact in generations:
            same = sum(generations[fast].continuations[i] == generations[exact].continuations[i] for i in range(count))
            checks[f"{fast}_equals_{exact}"] = same / count
    return checks
