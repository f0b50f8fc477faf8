"""Speculative cascades: the deferral rules and the mixture law by hand, the thresholds that always defer give the
target's own output, and sampling follows the documented law ``pi = defer * p + (1 - defer) * q`` (chi-square on the
first token, whose law is ``pi`` at the prompt)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import decoding
from decoding.cascade import Cascade
from laws import chi_square_pvalue, left_pad, next_token_laws
from models import greedy_reference, tiny_pair
from strategies import draft_lengths, prompts


def _laws(seed: int, batch=5, g=3, vocab=9):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(batch, g + 1, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(batch, g, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    ids = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, g)
    return p, q, ids


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rule, threshold", [("chow", 0.3), ("diff", 0.05), ("opt", 0.5)])
def test_the_law_is_the_rules_mixture_by_hand(seed, rule, threshold):
    p, q, ids = _laws(seed)
    ids[0, 2:] = -1
    law = Cascade(rule, threshold).law(p, q, ids)
    for r in range(p.shape[0]):
        for i in range(p.shape[1]):
            if i == q.shape[1] or ids[r, i] < 0:
                defer = True
            elif rule == "chow":
                defer = q[r, i].max() <= 1 - threshold
            elif rule == "diff":
                defer = q[r, i].max() <= p[r, i].max() - threshold
            else:
                defer = q[r, i].max() <= p[r, i].max() - threshold * 0.5 * (p[r, i] - q[r, i]).abs().sum()
            expected = p[r, i] if defer else q[r, i]
            assert torch.equal(law[r, i], expected), (r, i)


@pytest.mark.parametrize("rule, threshold", [("chow", 0.0), ("diff", -1.0)])
def test_thresholds_that_always_defer_give_the_targets_law(rule, threshold):
    p, q, ids = _laws(0)
    assert torch.equal(Cascade(rule, threshold).law(p, q, ids), p)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [1.001, 2.0])
def test_the_opt_rule_above_cost_1_keeps_the_drafts_law_wherever_it_differs(seed, threshold):
    """TV(p, q) >= max p - max q, so max q > max p - t TV for t > 1 wherever TV > 0."""
    p, q, ids = _laws(seed)
    assert torch.equal(Cascade("opt", threshold).law(p, q, ids)[:, :-1], q)


@pytest.mark.parametrize("rule, threshold", [("chow", 0.0), ("diff", -1.0)])
@given(batch=prompts(), g=draft_lengths(1, 5))
def test_always_deferring_gives_the_targets_own_greedy_output(rule, threshold, batch, g):
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeCascade(draft, rule=rule, threshold=threshold, num_draft_tokens=g)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 8))


def test_a_threshold_that_never_defers_keeps_the_drafts_own_greedy_tokens():
    """chow with t = 1 never defers: every draft is accepted, and only bonus tokens come from the target."""
    target, draft = tiny_pair("llama", draft_kind="independent")
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4]])
    decoding.enable(target)
    strategy = decoding.SpeculativeCascade(draft, rule="chow", threshold=1.0, num_draft_tokens=3)
    target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, strategy=strategy)
    assert strategy.stats.accepted == strategy.stats.drafted > 0


@pytest.mark.parametrize("rule, threshold", [("chow", 0.4), ("chow", 0.8), ("diff", 0.0), ("opt", 0.5)])
def test_sampling_follows_the_documented_law(rule, threshold):
    """The first token of every row is drawn from pi at the prompt: defer * p + (1 - defer) * q of the processed
    laws (transformers' own processing of each model's logits)."""
    target, draft = tiny_pair("gpt2", vocab_size=12, draft_kind="noisy_copy", noise=0.5)
    settings = dict(temperature=0.9)
    prompt = [5, 7, 3]
    p = next_token_laws(target, [prompt], settings)[0]
    q = next_token_laws(draft, [prompt], settings)[0]
    cascade = Cascade(rule, threshold)
    expected = p if bool(cascade.defer(p, q)) else q
    rows = 4000
    ids = torch.tensor([prompt] * rows)
    decoding.enable(target)
    torch.manual_seed(0)
    with torch.no_grad():
        out = target.generate(ids, max_new_tokens=2, do_sample=True, **settings,
                              strategy=decoding.SpeculativeCascade(draft, rule=rule, threshold=threshold,
                                                                   num_draft_tokens=2))
    observed = torch.bincount(out[:, len(prompt)], minlength=12)
    assert chi_square_pvalue(observed, expected) > 1e-5
    other = q if bool(cascade.defer(p, q)) else p
    if (other - expected).abs().sum() > 0.2:
        assert chi_square_pvalue(observed, other) < 1e-9


@pytest.mark.parametrize("kwargs, error", [(dict(rule="lazy"), ValueError), (dict(threshold=float("nan")), ValueError)])
def test_bad_settings(kwargs, error):
    with pytest.raises(error):
        decoding.SpeculativeCascade(tiny_pair("llama")[1], **kwargs)


def test_a_cascade_needs_a_draft_model():
    with pytest.raises(TypeError, match="needs a draft model"):
        decoding.SpeculativeCascade(decoding.PromptLookup())
