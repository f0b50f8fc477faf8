"""Oracles for tests of laws and formulas: exact integration over uniforms by bisection, a chi-square test, and
the contrastive, proxy and greedy computations written out by hand, independently of the library; then the
helpers several test modules share: output assertions, and the runs and exact laws of the sampling tests (a
12-token vocabulary, two prompts of different lengths, thousands of rows each).

Scores and laws are ``[n, V]`` tensors, one row per token list (a compact prefix: no padding); the by-hand
formulas compute in float64, and ids past the vocabulary the models share score ``-inf`` (probability 0).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as scipy_stats
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

import decoding
from models import PAD_ID

# ----------------------------------------------------------------------------------------------------------
# Exact integration over uniforms: bisection on the real function

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


def below(x: float) -> float:
    """The largest float64 strictly below ``x``."""
    return math.nextafter(x, -math.inf)


def emitted_law(impl, p, q, drafts, u_accept, position: int, weight: torch.Tensor) -> torch.Tensor:
    """Law ``# [N, V]`` over ``u_sample`` of the token at ``position`` of each row's output, for fixed
    ``u_accept  # [N, g]`` that makes each row of positive ``weight`` emit its last token at ``position``
    (rows of zero weight get a zero law and are not evaluated). ``impl.verify_sampling`` is the rule, called
    with the signature of ``decoding.kernels.reference.verify_sampling``."""
    vocab = p.shape[-1]
    out = torch.zeros(drafts.shape[0], vocab, dtype=torch.float64)
    live = (weight > 0).nonzero().squeeze(1)
    if live.numel() == 0:
        return out
    rows = live.repeat_interleave(vocab)  # one bisection per (row, token y)
    ys = torch.arange(vocab).repeat(live.numel())

    def at_most_y(u):
        ids, num_accepted = impl.verify_sampling(p[rows], q[rows], drafts[rows], u_accept[rows], u)
        assert bool((num_accepted == position).all())
        return ids[:, position] <= ys

    cdf = measure(*threshold(at_most_y, rows.numel())).reshape(live.numel(), vocab)
    out[live] = torch.diff(cdf, dim=1, prepend=torch.zeros(live.numel(), 1, dtype=torch.float64))
    return out


# ----------------------------------------------------------------------------------------------------------
# Batches and the chi-square test


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


# ----------------------------------------------------------------------------------------------------------
# Scores and laws written out by hand


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


# ----------------------------------------------------------------------------------------------------------
# Greedy decoding by hand


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


def cd_by_hand(expert, amateur, input_ids, mask, max_new_tokens, *, alpha=0.1, beta=0.5, form="logit",
               amateur_temperature=1.0, amateur_window=None, eos_token_id=None, processors=None):
    """Contrastive decoding's greedy output by hand: ``greedy_by_hand`` on ``contrastive_by_hand``, the amateur
    reading only each row's last ``amateur_window`` tokens when given."""
    views = {} if amateur_window is None else {"amateur": lambda seq: seq[-amateur_window:]}
    return greedy_by_hand(
        {"expert": expert, "amateur": amateur},
        lambda s: contrastive_by_hand(s["expert"], s["amateur"], alpha, beta, form, amateur_temperature),
        input_ids, mask, max_new_tokens, eos_token_id=eos_token_id, views=views, processors=processors,
    )


# ----------------------------------------------------------------------------------------------------------
# Enumerated laws of the first three generated tokens, and the matching counts


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


# ----------------------------------------------------------------------------------------------------------
# Scripted uniforms


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


# ----------------------------------------------------------------------------------------------------------
# Output assertions: tokens against a reference, statistics against the tokens


def assert_same_tokens(out, ref):
    """``out`` equals ``ref`` (int64, same shape, every token), naming the rows that differ."""
    assert out.dtype == ref.dtype == torch.int64
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    bad = (out != ref).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"rows {bad} differ:\n{out[bad]}\nreference:\n{ref[bad]}"


def generated_lengths(output, prompt_length, eos) -> list[int]:
    """Tokens each row generated, its EOS included (rows are compared with the reference first)."""
    eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    lengths = []
    for row in output[:, prompt_length:].tolist():
        stops = [i for i, token in enumerate(row) if token in eos_ids]
        lengths.append(stops[0] + 1 if stops else len(row))
    return lengths


def check_stats(stats, batch, g_max, lengths, exact_count: bool):
    """Consistency of ``AcceptanceStats`` with itself and with the ``lengths`` of tokens each row kept.

    Every (row, step) emits ``accepted + 1`` tokens of which at least one is kept, so
    ``steps <= sum(lengths) <= accepted + steps``; when no token can be cut (batch 1, no EOS) the upper
    bound is an equality.
    """
    kept = sum(lengths)
    assert stats.steps >= batch
    assert 0 <= stats.accepted <= stats.drafted
    assert stats.drafted == sum(stats.position_steps), "drafted != sum over (row, step) of drafts"
    assert stats.accepted == sum(stats.position_accepted)
    assert len(stats.position_steps) == len(stats.position_accepted) <= g_max
    for i in range(1, len(stats.position_steps)):
        assert stats.position_steps[i] <= stats.position_steps[i - 1]
        assert stats.position_accepted[i] <= stats.position_accepted[i - 1]
    assert all(0 <= a <= s for a, s in zip(stats.position_accepted, stats.position_steps))
    rates = stats.per_position_acceptance
    assert len(rates) == len(stats.position_steps)
    for a, s, r in zip(stats.position_accepted, stats.position_steps, rates):
        assert r == pytest.approx(a / s if s else 0.0)
    assert stats.mean_accepted_length == pytest.approx(1 + stats.accepted / stats.steps)
    assert stats.acceptance_rate == pytest.approx(stats.accepted / stats.drafted if stats.drafted else 0.0)
    assert stats.steps <= kept <= stats.accepted + stats.steps
    if exact_count:
        assert kept == stats.accepted + stats.steps


def check_mixing_stats(stats, lengths, roles):
    """One row-step per generated token, one forward per model per step (the longest row's steps)."""
    assert stats.steps == sum(lengths)
    assert stats.forwards == {role: max(lengths) for role in roles}


# ----------------------------------------------------------------------------------------------------------
# Contrastive decoding runs

FORMS = ("logit", "logprob")  # the forms of the contrastive score


def contrastive(expert, amateur, input_ids, mask, max_new_tokens, *, do_sample=False, **kwargs):
    """``generate`` with ``ContrastiveDecoding(amateur, **cd_kwargs)``; returns ``(output, strategy)``."""
    cd_keys = ("alpha", "beta", "amateur_temperature", "form", "amateur_window", "tokenizers")
    cd_kwargs = {k: kwargs.pop(k) for k in cd_keys if k in kwargs}
    decoding.enable(expert)
    strategy = decoding.ContrastiveDecoding(amateur, **cd_kwargs)
    with torch.no_grad():
        out = expert.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              strategy=strategy, **kwargs)
    return out, strategy


# ----------------------------------------------------------------------------------------------------------
# Sampling tests: a vocabulary small enough to enumerate three tokens, two prompts of different lengths

SMALL_VOCAB = 12
PROMPTS = ([5, 7, 3], [9, 4, 6, 8, 10])
SAMPLING_PROMPTS = PROMPTS  # the contrastive strategies' sampling tests use the same two prompts
ROWS_PER_PROMPT = 3000
NEW_TOKENS = 3
DRAFT_TOKENS = 2
ALPHA = 1e-5  # p-value floor: ~30 checks, so a change of random stream trips a correct build with odds ~3e-4
POWER = 1e-9  # negative controls must be rejected far more strongly than that
def next_token_laws(model, prefixes: list[list[int]], settings: dict) -> torch.Tensor:
    """Exact processed next-token law ``# [len(prefixes), V]`` float64 of plain transformers' sampling."""
    ids, mask = left_pad(prefixes)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=1, do_sample=True, output_scores=True,
            return_dict_in_generate=True, **settings,
        )
    return torch.softmax(out.scores[0].to(torch.float64), dim=-1)


def exact_laws(model, prompt: list[int], settings: dict):
    """``(first  # [V], pair  # [V, V], third  # [V])``: the target's law of the generated tokens."""
    return three_token_laws(lambda prefixes: next_token_laws(model, prefixes, settings), prompt, SMALL_VOCAB)


def speculative_samples(target, draft, settings: dict, seed: int, **strategy_kwargs):
    """``(new tokens  # [rows, 3], stats)`` of a seeded speculative sampling run; rows alternate prompts."""
    ids, mask = left_pad([PROMPTS[r % len(PROMPTS)] for r in range(ROWS_PER_PROMPT * len(PROMPTS))])
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=DRAFT_TOKENS, **strategy_kwargs)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = target.generate(
            ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True, strategy=strategy, **settings
        )
    assert out.shape == (ids.shape[0], ids.shape[1] + NEW_TOKENS)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    assert strategy.stats.steps >= ids.shape[0]
    return out[:, ids.shape[1] :], strategy.stats


def counts(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empirical counts of the first token ``# [V]``, the first pair ``# [V, V]`` and the third ``# [V]``."""
    return token_counts(tokens, SMALL_VOCAB)


def pvalues(tokens: torch.Tensor, laws) -> dict:
    """Chi-square p-values of ``tokens``' first token, first pair and third token against ``laws``."""
    return {name: chi_square_pvalue(c, law) for name, c, law in zip(("first", "pair", "third"), counts(tokens), laws)}


def assert_follows_target_law(tokens: torch.Tensor, target, settings: dict) -> list[torch.Tensor]:
    """Chi-square of each prompt's samples (``tokens`` from :func:`speculative_samples`) against the target's
    exact law of its first three tokens; returns each prompt's rows."""
    per_prompt = [tokens[p :: len(PROMPTS)] for p in range(len(PROMPTS))]
    for prompt, rows in zip(PROMPTS, per_prompt):
        result = pvalues(rows, exact_laws(target, prompt, settings))
        assert min(result.values()) > ALPHA, f"prompt {prompt}: chi-square p-values {result}"
    return per_prompt
