"""The fused operations' specification (:mod:`decoding.kernels.reference`: ``processed_law``, ``verify``,
``sample_logits``, ``contrastive_choose``) against the strategies' own math: transformers' temperature /
top-k / top-p warpers in ``generate``'s order, softmax, ``verify_greedy`` and ``contrastive_scores``.

Laws are checked exactly, by integrating the real functions over their uniforms with the bisection helpers
of ``tests/laws.py`` (acceptance is monotone in its uniform and the sampled id is non-decreasing in the
sample uniform), as ``tests/test_verification.py`` does for ``verify_sampling``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from transformers import LogitsProcessorList
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from decoding.kernels import reference
from decoding.processing import warper_settings
from laws import measure, threshold
from strategies import logit_tensors, processing_settings, vocab_sizes


def transformers_warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' own processing of ``logits  # [N, V]`` (float32), as generate builds it."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(temperature)))
    if top_k:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors(torch.zeros(logits.shape[0], 1, dtype=torch.int64), logits.float().clone())


def transformers_law(logits, temperature, top_k, top_p) -> torch.Tensor:
    return torch.softmax(transformers_warp(logits, temperature, top_k, top_p).to(torch.float64), dim=-1)


def law_of(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return w.to(torch.float64) / z.to(torch.float64)[:, None]


def _clear_of_boundaries(logits, temperature, top_k, top_p, margin=1e-4) -> bool:
    """No exact ties among the scaled scores and no id whose mass above it is within ``margin`` of top_p:
    where transformers' float32 sort-and-cumsum and the integer rule may legitimately disagree."""
    scaled = reference.scaled_scores(logits, temperature)
    for row in scaled:
        if row.unique().numel() != row.numel():
            return False
    law = transformers_law(logits, temperature, top_k, 1.0)
    above = torch.stack([(law[r] * (scaled[r][None, :] > scaled[r][:, None])).sum(-1) for r in range(len(law))])
    return top_p >= 1.0 or bool(((above - top_p).abs() > margin).all())


# ----------------------------------------------------------------------------------------------------------
# processed_law: the same ids and law as transformers' warpers


@given(data=st.data(), rows=st.integers(1, 4), vocab=vocab_sizes(2, 64))
def test_processed_law_is_transformers_law(data, rows, vocab):
    settings = data.draw(processing_settings(vocab))
    logits = data.draw(logit_tensors((rows, vocab), ties=False))
    assume(_clear_of_boundaries(logits, *settings))
    w, z = reference.processed_law(reference.scaled_scores(logits, settings[0]), *settings[1:])
    expected = transformers_law(logits, *settings)
    kept_by_transformers = expected > 0
    assert bool(((w > 0) <= kept_by_transformers).all()), "an id transformers removes has weight"
    assert bool(((expected > 1e-12) <= (w > 0)).all()), "an id transformers keeps has no weight"
    torch.testing.assert_close(law_of(w, z), expected, atol=1e-6, rtol=0)
    assert w.dtype == torch.int64 and bool((w <= 2**reference.FIXED_POINT_BITS).all())
    assert torch.equal(z, w.sum(-1))


def test_top_k_keeps_ties_with_the_kth_value_as_transformers_does():
    logits = torch.tensor([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]])
    w, _ = reference.processed_law(logits, top_k=2)
    assert (w > 0).tolist() == [[True, True, True, True, False, False]]
    assert torch.isfinite(transformers_warp(logits, 1.0, 2, 1.0)).tolist() == (w > 0).tolist()


def test_top_p_keeps_a_tie_group_on_the_boundary_whole():
    """transformers keeps part of a tie group that straddles top_p (which part depends on its sort); the
    threshold rule keeps the whole group: a superset that differs on the tied ids only."""
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0, -5.0]])
    w, _ = reference.processed_law(logits, top_p=0.6)
    ours = (w > 0)[0]
    theirs = torch.isfinite(transformers_warp(logits, 1.0, 0, 0.6))[0]
    assert ours.tolist() == [True, True, True, True, False]
    assert bool((theirs <= ours).all()) and theirs[0] and not theirs[4]


def test_top_p_zero_keeps_the_maxima_and_off_settings_keep_everything():
    logits = torch.tensor([[1.0, 4.0, 4.0, -2.0]])
    w, _ = reference.processed_law(logits, top_p=0.0)
    assert (w > 0).tolist() == [[False, True, True, False]]
    w, z = reference.processed_law(logits, top_k=4, top_p=1.0)
    assert bool((w > 0).all())
    torch.testing.assert_close(law_of(w, z), torch.softmax(logits.double(), -1), atol=1e-7, rtol=0)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(temperature=float("nan")), dict(top_k=-1),
                                 dict(top_k=1.5), dict(top_p=1.5), dict(top_p=-0.1)])
def test_processing_settings_are_validated(bad):
    settings = dict(temperature=1.0, top_k=0, top_p=1.0) | bad
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=name) as err:
        reference.check_processing(**settings)
    assert repr(value) in str(err.value) or str(value) in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# verify: greedy is verify_greedy on raw logits; sampling has exactly the target's processed law


@given(data=st.data(), batch=st.integers(1, 6), g=st.integers(0, 6), vocab=vocab_sizes(2, 12))
def test_fused_greedy_verify_is_verify_greedy(data, batch, g, vocab):
    logits = data.draw(logit_tensors((batch, g + 1, vocab)))
    best = logits.argmax(-1)[:, :g]
    agree = torch.tensor(data.draw(st.lists(st.integers(0, g), min_size=batch, max_size=batch)))
    drafts = torch.where(torch.arange(g) < agree[:, None], best, (best + 1) % vocab)
    out, n = reference.verify(logits, drafts, temperature=0.5, top_k=1)  # processing is ignored by greedy
    expected_out, expected_n = reference.verify_greedy(logits, drafts)
    assert torch.equal(out, expected_out) and torch.equal(n, expected_n)


def _fused(logits, q, drafts, u, settings):
    return reference.verify(logits, drafts, q, u, temperature=settings[0], top_k=settings[1], top_p=settings[2])


def _first_token_law(logits2, q1, settings):
    """g = 1: the exact law ``# [V]`` of the first emitted token (each draft x with q(x) > 0 is a row weighted
    by q(x)) and each draft's acceptance probability, by bisection over the two uniforms."""
    xs = q1.nonzero().squeeze(1)
    n, vocab = xs.numel(), q1.numel()
    logits = logits2.expand(n, -1, -1).contiguous()  # [N, 2, V]
    q = q1.expand(n, 1, -1).contiguous()
    drafts = xs[:, None]

    def accepted(u):
        return _fused(logits, q, drafts, torch.stack([u, torch.full_like(u, 0.5)], 1), settings)[1] > 0

    lo, hi = threshold(accepted, n)
    accept = measure(lo, hi)
    reject_u = torch.where(hi < 1, hi, torch.zeros_like(hi))
    rows = torch.arange(n).repeat_interleave(vocab)
    ys = torch.arange(vocab).repeat(n)

    def at_most_y(u):
        out, _ = _fused(logits[rows], q[rows], drafts[rows], torch.stack([reject_u[rows], u], 1), settings)
        return out[:, 0] <= ys

    cdf = measure(*threshold(at_most_y, rows.numel())).reshape(n, vocab)
    recovered = torch.diff(cdf, dim=1, prepend=torch.zeros(n, 1, dtype=torch.float64))
    law = (q1[xs] * (1 - accept)) @ recovered
    return law.index_add(0, xs, q1[xs] * accept), xs, accept


@given(data=st.data(), vocab=vocab_sizes(2, 10))
def test_fused_verify_first_token_law_is_the_processed_target_law(data, vocab):
    settings = data.draw(processing_settings(vocab))
    logits2 = data.draw(logit_tensors((2, vocab), ties=False))
    assume(_clear_of_boundaries(logits2[:1], *settings))
    weights = torch.tensor(data.draw(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=vocab,
                                              max_size=vocab)), dtype=torch.float64)
    assume(bool((weights > 0).any()))
    q1 = (weights / weights.sum()).to(torch.float32).to(torch.float64)  # verify reads q as float32
    p1 = transformers_law(logits2[:1], *settings)[0]
    law, xs, accept = _first_token_law(logits2, q1, settings)
    torch.testing.assert_close(law, p1, atol=1e-6, rtol=0)
    torch.testing.assert_close(accept, (p1[xs] / q1[xs]).clamp_max(1), atol=1e-6, rtol=0)


@given(data=st.data(), vocab=vocab_sizes(2, 10))
def test_fused_verify_bonus_token_law_is_the_processed_target_law(data, vocab):
    settings = data.draw(processing_settings(vocab))
    logits2 = data.draw(logit_tensors((2, vocab), ties=False))
    assume(_clear_of_boundaries(logits2[1:], *settings))
    p = transformers_law(logits2, *settings)
    x = int(p[0].argmax())  # accepted with u = 0, since p(x) > 0
    q = torch.zeros(vocab, dtype=torch.float32)
    q[x] = 1.0
    ys = torch.arange(vocab)

    def at_most_y(u):
        us = torch.stack([torch.zeros_like(u), u], 1)
        out, n = _fused(logits2.expand(vocab, -1, -1), q.expand(vocab, 1, -1), torch.full((vocab, 1), x), us, settings)
        assert bool((n == 1).all())
        return out[:, 1] <= ys

    cdf = measure(*threshold(at_most_y, vocab))
    torch.testing.assert_close(torch.diff(cdf, prepend=torch.zeros(1, dtype=torch.float64)), p[1], atol=1e-6, rtol=0)


@given(data=st.data(), batch=st.integers(1, 5), g=st.integers(1, 5), vocab=vocab_sizes(2, 12))
def test_fused_verify_never_emits_an_id_the_processing_removes(data, batch, g, vocab):
    settings = data.draw(processing_settings(vocab))
    logits = data.draw(logit_tensors((batch, g + 1, vocab)))
    q = torch.softmax(data.draw(logit_tensors((batch, g, vocab))), -1)
    drafts = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=batch * g, max_size=batch * g)))
    uniform = st.one_of(st.just(0.0), st.floats(0, 1, exclude_max=True), st.just(math.nextafter(1.0, 0.0)))
    u = torch.tensor(data.draw(st.lists(uniform, min_size=batch * (g + 1), max_size=batch * (g + 1))),
                     dtype=torch.float64).reshape(batch, g + 1)
    out, n = _fused(logits, q, drafts.reshape(batch, g), u, settings)
    w, _ = reference.processed_law(reference.scaled_scores(logits.reshape(-1, vocab), settings[0]), *settings[1:])
    w = w.reshape(batch, g + 1, vocab)
    for r in range(batch):
        k = int(n[r])
        assert out[r, k + 1 :].tolist() == [-1] * (g - k)
        assert all(w[r, i, out[r, i]] > 0 for i in range(k + 1))


def test_verify_argument_errors_name_expected_and_actual():
    logits = torch.zeros(2, 4, 5)
    drafts = torch.zeros(2, 3, dtype=torch.int64)
    q = torch.full((2, 3, 5), 0.2)
    with pytest.raises(ValueError, match=r"\(2, 4\).*None"):
        reference.verify(logits, drafts, q)
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        reference.verify(logits, drafts, q, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\(2, 3, 5\).*\(2, 4, 5\)"):
        reference.verify(logits, drafts, torch.full((2, 4, 5), 0.2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(2, 4, V\).*\(2, 3, 5\)"):
        reference.verify(logits[:, :3], drafts)


# ----------------------------------------------------------------------------------------------------------
# sample_logits and contrastive_choose


def _sampled_law(sampler, vocab: int) -> torch.Tensor:
    """Law ``# [V]`` of ``sampler(u  # [n]) -> ids  # [n]`` (non-decreasing in u) by bisection per id."""
    ys = torch.arange(vocab)
    cdf = measure(*threshold(lambda u: sampler(u) <= ys, vocab))
    return torch.diff(cdf, prepend=torch.zeros(1, dtype=torch.float64))


@given(data=st.data(), vocab=vocab_sizes(2, 24))
def test_sample_logits_law_and_probs_are_transformers_law(data, vocab):
    settings = data.draw(processing_settings(vocab))
    logits = data.draw(logit_tensors((1, vocab), ties=False))
    assume(_clear_of_boundaries(logits, *settings))
    expected = transformers_law(logits, *settings)[0]
    kw = dict(temperature=settings[0], top_k=settings[1], top_p=settings[2])
    law = _sampled_law(lambda u: reference.sample_logits(logits.expand(vocab, -1), u, **kw)[0], vocab)
    torch.testing.assert_close(law, expected, atol=1e-6, rtol=0)
    _, probs = reference.sample_logits(logits, torch.zeros(1), **kw)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs[0].double(), expected, atol=1e-6, rtol=0)


FORMS = [dict(form="logit", beta=0.5), dict(form="logit", beta=0.0), dict(form="logprob", amateur_temperature=0.5)]


@pytest.mark.parametrize("cd", FORMS, ids=["logit", "logit-beta0", "logprob-t0.5"])
@given(data=st.data(), rows=st.integers(1, 6), vocab=vocab_sizes(2, 40))
def test_contrastive_choose_greedy_is_argmax_of_contrastive_scores(cd, data, rows, vocab):
    expert = data.draw(logit_tensors((rows, vocab)))
    amateur = data.draw(logit_tensors((rows, vocab)))
    scores = reference.contrastive_scores(expert, amateur, alpha=0.1, **cd)
    ids = reference.contrastive_choose(expert, amateur, alpha=0.1, **cd)
    if cd["form"] == "logprob":  # the dropped per-row constant may only reorder scores within rounding
        top2 = scores.topk(min(2, vocab), dim=-1).values
        clear = (top2[:, 0] - top2[:, -1] > 1e-4) | ~torch.isfinite(top2[:, -1])
        ids, scores = ids[clear], scores[clear]
    assert torch.equal(ids, scores.argmax(-1))


@pytest.mark.parametrize("cd", FORMS, ids=["logit", "logit-beta0", "logprob-t0.5"])
@given(data=st.data(), vocab=vocab_sizes(2, 24))
def test_contrastive_choose_sampling_law_is_the_processed_contrastive_law(cd, data, vocab):
    settings = data.draw(processing_settings(vocab))
    expert = data.draw(logit_tensors((1, vocab), ties=False))
    amateur = data.draw(logit_tensors((1, vocab), ties=False))
    scores = reference.contrastive_scores(expert, amateur, alpha=0.1, **cd)
    finite = torch.isfinite(scores)
    assume(_clear_of_boundaries(scores.masked_fill(~finite, -1e30), *settings))
    expected = transformers_law(scores, *settings)[0]
    kw = dict(temperature=settings[0], top_k=settings[1], top_p=settings[2], alpha=0.1, **cd)
    law = _sampled_law(lambda u: reference.contrastive_choose(expert.expand(vocab, -1), amateur.expand(vocab, -1), u,
                                                              **kw), vocab)
    torch.testing.assert_close(law, expected, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# warper_settings: which processor lists the fused route takes


def test_warper_settings_reads_generates_own_warpers():
    assert warper_settings([]) == (1.0, 0, 1.0)
    assert warper_settings([TemperatureLogitsWarper(0.7), TopKLogitsWarper(20), TopPLogitsWarper(0.9)]) == (0.7, 20, 0.9)
    assert warper_settings([TopKLogitsWarper(3, min_tokens_to_keep=5)]) == (1.0, 5, 1.0)
    assert warper_settings([TopPLogitsWarper(0.5)]) == (1.0, 0, 0.5)


@pytest.mark.parametrize("processors", [
    [TopKLogitsWarper(5), TemperatureLogitsWarper(0.7)],  # not generate's order
    [TemperatureLogitsWarper(0.7), TemperatureLogitsWarper(0.5)],
    [TopPLogitsWarper(0.9, min_tokens_to_keep=2)],
    [TopKLogitsWarper(5, filter_value=-1e4)],
], ids=["order", "twice", "min-tokens", "filter-value"])
def test_warper_settings_refuses_what_the_kernels_do_not_do(processors):
    assert warper_settings(processors) is None


def test_warper_settings_refuses_any_other_processor():
    from transformers.generation.logits_process import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor

    assert warper_settings([TemperatureLogitsWarper(0.7), MinPLogitsWarper(0.1)]) is None
    assert warper_settings([RepetitionPenaltyLogitsProcessor(1.2)]) is None
