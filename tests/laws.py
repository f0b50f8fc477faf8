"""Oracles for tests of laws and formulas: exact integration over uniforms by bisection, a chi-square test, and
the contrastive, proxy and greedy computations written out by hand, independently of the library.

Scores and laws are ``[n, V]`` tensors, one row per token list (a compact prefix: no padding); the by-hand
formulas compute in float64, and ids past the vocabulary the models share score ``-inf`` (probability 0).
"""

from __future__ import annotations

import math

import torch
from scipy import stats as scipy_stats
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

from models import PAD_ID

BISECTION_STEPS = 53  # float64 uniforms: the interval shrinks to 2^-53, far below the 1e-6 tolerance


def threshold(predicate, n: int, steps: int = BISECTION_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Bisection for ``n`` monotone predicates of u in [0, 1) (true below a threshold, false above).

    ``predicate(u  # [n] float64) -> bool [n]``. Returns ``lo, hi  # [n]`` with ``hi - lo = 2^-steps``: the
    predicate holds at ``lo`` (or is false everywhere and ``lo = 0``) and fails at ``hi`` (or holds at every
    midpoint below 1 and ``hi = 1``). Every midpoint is a dyadic rational, exact in float64, so fewer ``steps``
    give coarser but equally exact bounds. Used by ``tests/test_verification.py`` on the kernels and by the
    contrastive tests on whole strategies (with ``scripted_rand``); ``measure(lo, hi)`` turns the bounds into a
    probability.
    """
    lo = torch.zeros(n, dtype=torch.float64)
    hi = torch.ones(n, dtype=torch.float64)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ok = predicate(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo, hi


def measure(lo, hi):
    """Measure of ``{u in [0, 1): predicate}`` from the bisection bounds, to 2^-steps (exact at 0 and 1)."""
    return torch.where(hi == 1, torch.ones_like(lo), lo)


def left_pad(prefixes: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of token lists: ``(input_ids, attention_mask)``, both int64 ``[n, longest]``, padded
    with ``PAD_ID`` (mask 0)."""
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), PAD_ID, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prefixes):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    return ids, mask


def chi_square_pvalue(observed: torch.Tensor, law: torch.Tensor) -> float:
    """Pearson chi-square p-value of ``observed`` counts against ``law`` (both flattened).

    Cells the law gives no mass must be empty (that alone is a failure, reported as p = 0.0); cells with an
    expected count below 5 are pooled into one cell; fewer than two cells left gives p = 1.0.
    """
    observed, law = observed.flatten().to(torch.float64), law.flatten().to(torch.float64)
    total = float(observed.sum())
    if bool((observed[law <= 0] > 0).any()):
        return 0.0
    expected = law * total / float(law.sum())
    big = expected >= 5
    obs = observed[big].tolist()
    exp = expected[big].tolist()
    if bool((~big & (law > 0)).any()):
        obs.append(float(observed[~big].sum()))
        exp.append(float(expected[~big].sum()))
    if len(obs) < 2:
        return 1.0
    scale = sum(obs) / sum(exp)  # remove float drift so scipy's sum check passes
    return float(scipy_stats.chisquare(obs, [e * scale for e in exp]).pvalue)


@torch.no_grad()
def next_token_logits(model, sequences: list[list[int]]) -> torch.Tensor:
    """Raw next-token logits ``# [len(sequences), V]`` of ``model`` after each token list in ``sequences``.

    A plain forward pass over the whole list (no cache, no padding, default positions 0..L-1); lists of equal
    length share one batch. The logits keep the model's dtype.
    """
    out = [None] * len(sequences)
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(i)
    for members in by_length.values():
        batch = torch.tensor([sequences[i] for i in members], dtype=torch.int64)
        logits = model(input_ids=batch).logits[:, -1]
        for j, i in enumerate(members):
            out[i] = logits[j]
    return torch.stack(out)


def _cut(s_e: torch.Tensor, others: list[torch.Tensor]) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    shared = min([s_e.shape[-1]] + [o.shape[-1] for o in others])
    return shared, s_e[..., :shared], [o[..., :shared] for o in others]


def _pad_to(scores: torch.Tensor, size: int) -> torch.Tensor:
    pad = scores.new_full(scores.shape[:-1] + (size - scores.shape[-1],), -math.inf)
    return torch.cat([scores, pad], dim=-1)


def contrastive_by_hand(s_e, s_a, alpha: float = 0.1, beta: float = 0.5, form: str = "logit",
                        amateur_temperature: float = 1.0) -> torch.Tensor:
    """The contrastive score ``[n, V_e]`` (float64), written out from the papers, independently of the library.

    Both logit vectors are first cut to the ids both models have (embedding padding is never a token), then
    ``form="logit"`` gives ``(1 + beta) s_e - beta s_a / T`` (O'Brien & Lewis) and ``form="logprob"`` gives
    ``log_softmax(s_e) - log_softmax(s_a / T)`` (Li et al.), with ``T = amateur_temperature``; both are ``-inf``
    where ``s_e < log(alpha) + max s_e`` (the plausibility mask). Ids past the shared range are ``-inf``.
    ``beta = 0`` in the logit form returns the expert's logits themselves (no mask): the expert's own decoding.
    """
    vocab = s_e.shape[-1]
    _, e, (a,) = _cut(s_e.to(torch.float64), [s_a.to(torch.float64)])
    a = a / amateur_temperature
    if form == "logit" and beta == 0:
        return _pad_to(e, vocab)
    if form == "logit":
        score = (1 + beta) * e - beta * a
    elif form == "logprob":
        score = torch.log_softmax(e, dim=-1) - torch.log_softmax(a, dim=-1)
    else:
        raise AssertionError(form)
    plausible = e >= math.log(alpha) + e.max(dim=-1, keepdim=True).values
    return _pad_to(torch.where(plausible, score, -math.inf), vocab)


def proxy_by_hand(s_large, s_tuned, s_base, alpha: float) -> torch.Tensor:
    """The proxy-tuning score ``s_large + alpha (s_tuned - s_base)`` ``[n, V_large]`` (float64) over the ids all
    three models share, ``-inf`` past them."""
    vocab = s_large.shape[-1]
    _, big, (tuned, base) = _cut(s_large.to(torch.float64), [s_tuned.to(torch.float64), s_base.to(torch.float64)])
    return _pad_to(big + alpha * (tuned - base), vocab)


def contrastive_law(expert, amateur, prefixes, cd: dict, warpers: dict) -> torch.Tensor:
    """The law contrastive sampling must follow after each token list in ``prefixes``: ``[n, V]``
    ``softmax(warp(contrastive_by_hand(...)))``. ``cd``: keyword arguments of ``contrastive_by_hand``;
    ``warpers``: of ``warp``."""
    scores = contrastive_by_hand(next_token_logits(expert, prefixes), next_token_logits(amateur, prefixes), **cd)
    return torch.softmax(warp(scores, **warpers), dim=-1)


def own_law(model, prefixes, warpers: dict) -> torch.Tensor:
    """A model's own processed sampling law ``[n, V]`` (float64) after each token list in ``prefixes``;
    ``warpers``: keyword arguments of ``warp``."""
    return torch.softmax(warp(next_token_logits(model, prefixes).to(torch.float64), **warpers), dim=-1)


def warp(scores: torch.Tensor, temperature: float | None = None, top_k: int | None = None) -> torch.Tensor:
    """Transformers' own temperature and top-k warpers, in ``generate``'s order, applied to ``scores [n, V]``;
    a setting left at ``None`` skips its warper."""
    dummy_ids = torch.zeros(scores.shape[0], 1, dtype=torch.int64)
    if temperature is not None:
        scores = TemperatureLogitsWarper(temperature)(dummy_ids, scores)
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(dummy_ids, scores)
    return scores


@torch.no_grad()
def greedy_by_hand(models: dict, combine, input_ids, attention_mask, max_new_tokens: int, eos_token_id=None,
                   views: dict | None = None, processors=None) -> torch.Tensor:
    """An oracle greedy decoding loop with full recomputation, shaped and padded like ``generate``'s output.

    At every step each model of ``models`` (role -> model) reads each active row's compact sequence
    (``views[role](tokens)`` if given, e.g. a recent window) by ``next_token_logits``; ``combine(role -> [n, V]
    logits) -> [n, V]`` gives the scores; ``processors`` (a ``LogitsProcessorList``) get each row's
    transformers-style view (padded prompt + new tokens); the argmax is appended. A row stops after an id in
    ``eos_token_id`` (an int or a list). Returns ``LongTensor [B, P + longest]``, padded with ``PAD_ID``.
    """
    views = views or {}
    eos = set() if eos_token_id is None else ({eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id))
    batch, prompt_length = input_ids.shape
    compact = [input_ids[r][attention_mask[r].bool()].tolist() for r in range(batch)]
    new: list[list[int]] = [[] for _ in range(batch)]
    active = list(range(batch))
    for _ in range(max_new_tokens):
        if not active:
            break
        logits = {}
        for role, model in models.items():
            view = views.get(role, lambda seq: seq)
            logits[role] = next_token_logits(model, [view(compact[r] + new[r]) for r in active])
        scores = combine(logits)
        if processors:
            for i, r in enumerate(active):
                row_view = torch.cat([input_ids[r], torch.tensor(new[r], dtype=torch.int64)])[None]
                scores[i : i + 1] = processors(row_view, scores[i : i + 1].clone())
        tokens = scores.argmax(dim=-1).tolist()
        for r, token in zip(list(active), tokens):
            new[r].append(token)
            if token in eos:
                active.remove(r)
    width = max(len(n) for n in new)
    out = torch.full((batch, prompt_length + width), PAD_ID, dtype=torch.int64)
    out[:, :prompt_length] = input_ids
    for r, tokens in enumerate(new):
        out[r, prompt_length : prompt_length + len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    return out


def three_token_laws(next_law, prompt: list[int], vocab: int):
    """The exact laws of the first, first two and third generated tokens after ``prompt``: ``(first [V],
    pair [V, V], third [V])``, by enumeration of every prefix, from ``next_law(prefixes) -> [n, V]`` (the
    next-token law after each token list)."""
    first = next_law([prompt])[0]  # [V]
    second = next_law([prompt + [a] for a in range(vocab)])  # [a, b]
    pair = first[:, None] * second
    third = next_law([prompt + [a, b] for a in range(vocab) for b in range(vocab)]).reshape(vocab, vocab, vocab)
    return first, pair, (pair[:, :, None] * third).sum(dim=(0, 1))


def token_counts(tokens: torch.Tensor, vocab: int):
    """The empirical counts matching ``three_token_laws``: ``(first [V], pair [V, V], third [V])`` from
    ``tokens  # [rows, >= 3]``, whose first three columns are the first three generated tokens."""
    first = torch.bincount(tokens[:, 0], minlength=vocab)
    pair = torch.bincount(tokens[:, 0] * vocab + tokens[:, 1], minlength=vocab * vocab).reshape(vocab, vocab)
    third = torch.bincount(tokens[:, 2], minlength=vocab)
    return first, pair, third


def scripted_rand(monkeypatch, script: list[torch.Tensor]) -> list[tuple]:
    """Replace ``torch.rand`` for the rest of the test (meant for one ``generate`` call) by a scripted one.

    The i-th call returns ``script[i]`` (a float64 tensor of the requested shape; shapes are checked) and calls
    past the script draw from a fixed-seed generator. This drives a strategy's own random choices from chosen
    uniforms, so its exact law can be integrated by bisection (``threshold``). Returns the list of shapes
    requested, filled in as calls come, for assertions.
    """
    real_rand = torch.rand
    fallback = torch.Generator().manual_seed(0)
    shapes = []

    def fake_rand(*size, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        i = len(shapes)
        shapes.append(tuple(size))
        if i < len(script):
            expected = tuple(script[i].shape)
            assert expected == tuple(size), f"torch.rand call {i}: shape {size}, the script has {expected}"
            return script[i].clone()
        kwargs.pop("generator", None)
        return real_rand(*size, generator=fallback, **kwargs)

    monkeypatch.setattr(torch, "rand", fake_rand)
    return shapes
