"""Speculative contrastive decoding (``decoding.SpeculativeContrastiveDecoding``): CD's output, drafted by the
amateur and verified against the contrastive law.

- Greedy: token for token ``ContrastiveDecoding``'s greedy output (itself checked against the formula by
  hand in ``tests/test_contrastive.py``), for drawn left-padded prompt batches (1-8 rows), draft lengths 1-8,
  both forms, drawn ``alpha``/``beta``, with and without EOS ids, on five architectures; ``AcceptanceStats``
  are consistent with the tokens emitted. A noisy-copy amateur with a small ``beta`` has drafts really
  accepted (long runs in the logit form), so verification is exercised, not only the recovered tokens.
- Sampling, exactly at one step: every random choice of the real strategy (the draft's sample, the
  acceptance test, the recovered token) reads a scripted uniform; bisection on whole ``generate`` calls gives
  the draft law (the amateur's own processed law), each draft's acceptance probability and each residual
  law, and so the exact law of the first emitted token, which must be the contrastive law
  ``softmax(warp(score))``. Negative control: a strategy verifying against the expert's law is measured to
  emit the expert's law instead.
- Sampling, end to end: chi-square of three sampled tokens against the enumerated contrastive law; the
  expert's and the amateur's own laws and a verification that accepts every draft are rejected.
- Bad settings and incompatible vocabularies raise ``ValueError`` before any forward pass (tested for both
  strategies in ``tests/test_contrastive.py``); padded vocabularies give CD's output and never an id past
  the shared range.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import decoding
from decoding.kernels import ops as kernels
from laws import (
    FORMS,
    SAMPLING_PROMPTS,
    SMALL_VOCAB,
    assert_same_tokens,
    cd_by_hand,
    check_stats,
    chi_square_pvalue,
    contrastive,
    contrastive_law,
    generated_lengths,
    left_pad,
    measure,
    own_law,
    scripted_rand,
    three_token_laws,
    threshold,
    token_counts,
)
from models import ARCHS, PADDING_CASES, SHARED, greedy_reference, padded_pair, tiny_pair
from strategies import ALPHAS, BETAS, draft_lengths, draw_eos, new_token_counts, prompts


def speculative_contrastive(expert, amateur, input_ids, mask, max_new_tokens, g, *, do_sample=False, **kwargs):
    """``generate`` with ``SpeculativeContrastiveDecoding(amateur, num_draft_tokens=g, **scd_kwargs)``."""
    scd_keys = ("alpha", "beta", "amateur_temperature", "form", "tokenizers")
    scd_kwargs = {k: kwargs.pop(k) for k in scd_keys if k in kwargs}
    decoding.enable(expert)
    strategy = decoding.SpeculativeContrastiveDecoding(amateur, num_draft_tokens=g, **scd_kwargs)
    with torch.no_grad():
        out = expert.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                              strategy=strategy, **kwargs)
    return out, strategy


# ----------------------------------------------------------------------------------------------------------
# Greedy: equal to contrastive decoding


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    batch=prompts(),
    g=draft_lengths(),
    max_new_tokens=new_token_counts(),
    kind=st.sampled_from(["independent", "noisy_copy"]),
    alpha=ALPHAS,
    small_beta=st.floats(0.05, 0.5),
    large_beta=BETAS,
)
def test_greedy_equals_contrastive_decoding(arch, form, data, batch, g, max_new_tokens, kind, alpha, small_beta,
                                           large_beta):
    # A noisy copy (noise 0.02) with a small beta: the contrastive argmax is often the amateur's, so drafts
    # are accepted; an independent amateur with any beta: drafts are mostly rejected.
    expert, amateur = tiny_pair(arch, draft_kind=kind)
    beta = small_beta if kind == "noisy_copy" else large_beta
    settings = dict(alpha=alpha, beta=beta, form=form)
    input_ids, mask = batch
    plain, _ = contrastive(expert, amateur, input_ids, mask, max_new_tokens, **settings)
    eos = draw_eos(data, plain[:, input_ids.shape[1] :])
    ref, _ = contrastive(expert, amateur, input_ids, mask, max_new_tokens, eos_token_id=eos, **settings)
    out, strategy = speculative_contrastive(expert, amateur, input_ids, mask, max_new_tokens, g,
                                            eos_token_id=eos, **settings)
    assert_same_tokens(out, ref)
    lengths = generated_lengths(out, input_ids.shape[1], eos)
    b = input_ids.shape[0]
    check_stats(strategy.stats, b, g, lengths, exact_count=(b == 1 and eos is None))
    note(f"acceptance {strategy.stats.acceptance_rate:.3f}, accepted {strategy.stats.accepted}")


@pytest.mark.parametrize("arch", ARCHS)
def test_noisy_copy_amateur_drafts_are_accepted(arch):
    """Fixed case: a noisy-copy amateur, beta = 0.2: long accepted runs in the logit form, some acceptances in
    the log-prob form, outputs equal to CD's, and CD's output is not the expert's greedy output (the
    contrast is real). An amateur identical to the expert has every draft accepted in the logit form."""
    expert, amateur = tiny_pair(arch, draft_kind="noisy_copy")
    input_ids = torch.randint(3, 96, (8, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    expert_greedy = greedy_reference(expert, input_ids, mask, 24)
    for form in FORMS:
        settings = dict(alpha=0.1, beta=0.2, form=form)
        ref, _ = contrastive(expert, amateur, input_ids, mask, 24, **settings)
        out, strategy = speculative_contrastive(expert, amateur, input_ids, mask, 24, 4, **settings)
        assert_same_tokens(out, ref)
        assert not torch.equal(ref, expert_greedy)
        stats = strategy.stats
        check_stats(stats, 8, 4, [24] * 8, exact_count=False)
        assert stats.accepted > 0
        if form == "logit":
            assert stats.acceptance_rate >= 0.3
            assert stats.mean_accepted_length >= 2.0
    _, same = tiny_pair(arch, draft_kind="self")
    out, strategy = speculative_contrastive(expert, same, input_ids, mask, 24, 4, beta=0.5)
    assert_same_tokens(out, expert_greedy)
    assert strategy.stats.accepted == strategy.stats.drafted > 0


# ----------------------------------------------------------------------------------------------------------
# Sampling: the exact law of one step of the real strategy

EXACT_CASES = [
    pytest.param("llama", dict(alpha=0.1, beta=0.5), dict(temperature=1.0), id="llama-logit"),
    pytest.param("gpt2", dict(alpha=0.02, form="logprob", amateur_temperature=0.5), dict(temperature=0.8, top_k=6),
                 id="gpt2-logprob-T0.5-t0.8-topk6"),
]
STEPS = 40  # bisection steps: every boundary to 2^-40


class FirstStep:
    """Runs SCD sampling (g = 1, two new tokens) on a batch with scripted uniforms ``(u_draft, u_accept,
    u_sample)`` per row; returns each row's draft token, number of accepted drafts and first emitted token."""

    def __init__(self, expert, amateur, input_ids, mask, cd, warpers, monkeypatch, patch=None):
        self.args = (expert, amateur, input_ids, mask)
        self.cd, self.warpers, self.monkeypatch, self.patch = cd, warpers, monkeypatch, patch

    def __call__(self, u_draft, u_accept, u_sample):
        expert, amateur, input_ids, mask = self.args
        rows = input_ids.shape[0]
        calls = []
        real = kernels.verify_sampling

        def spy(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms):
            out, num_accepted = real(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms)
            calls.append((draft_ids.clone(), num_accepted.clone()))
            return out, num_accepted

        self.monkeypatch.setattr(kernels, "verify_sampling", spy)
        if self.patch is not None:
            self.patch(self.monkeypatch)
        shapes = scripted_rand(self.monkeypatch, [u_draft, u_accept[:, None], u_sample])
        try:
            out, _ = speculative_contrastive(expert, amateur, input_ids, mask, 2, 1, do_sample=True, **self.cd,
                                             **self.warpers)
        finally:
            self.monkeypatch.undo()
        assert shapes[:3] == [(rows,), (rows, 1), (rows,)], shapes
        draft_ids, num_accepted = calls[0]
        return draft_ids[:, 0], num_accepted, out[:, input_ids.shape[1]]


def measured_first_token_law(expert, amateur, cd, warpers, monkeypatch, patch=None):
    """``(law  # [prompts, V], draft_law  # [prompts, V])`` of the first emitted token, by integration over
    the three uniforms of the real strategy."""
    n_prompts, vocab = len(SAMPLING_PROMPTS), SMALL_VOCAB
    half = lambda n: torch.full((n,), 0.5, dtype=torch.float64)  # noqa: E731
    zeros = lambda n: torch.zeros(n, dtype=torch.float64)  # noqa: E731

    def batch(prompt_index):
        ids, mask = left_pad([SAMPLING_PROMPTS[p] for p in prompt_index.tolist()])
        return FirstStep(expert, amateur, ids, mask, cd, warpers, monkeypatch, patch)

    # 1. The draft's law: rows (prompt, y), the draft token is <= y for u_draft below a threshold.
    prompt_of = torch.arange(n_prompts).repeat_interleave(vocab)
    ys = torch.arange(vocab).repeat(n_prompts)
    run = batch(prompt_of)
    draft_cdf = measure(*threshold(lambda u: run(u, zeros(len(ys)), half(len(ys)))[0] <= ys, len(ys), STEPS))
    draft_cdf = draft_cdf.reshape(n_prompts, vocab)
    lower = torch.cat([torch.zeros(n_prompts, 1, dtype=torch.float64), draft_cdf[:, :-1]], dim=1)
    draft_law = draft_cdf - lower
    middle = (lower + draft_cdf) / 2  # a u_draft that drafts x

    # 2. Acceptance: rows (prompt, x) with x drafted with positive probability.
    live = (draft_law > 1e-9).nonzero()  # [N, 2]: prompt, x
    run = batch(live[:, 0])
    u_draft = middle[live[:, 0], live[:, 1]]

    def accepted(u):
        drafted, num_accepted, _ = run(u_draft, u, half(len(live)))
        assert torch.equal(drafted, live[:, 1])
        return num_accepted >= 1

    lo, hi = threshold(accepted, len(live), STEPS)
    accept = measure(lo, hi)

    # 3. Residual laws: rows (prompt, x, y) with x rejected with positive probability; u_accept = hi rejects.
    rejectable = (accept < 1).nonzero().squeeze(1)
    member = rejectable.repeat_interleave(vocab)
    ys = torch.arange(vocab).repeat(len(rejectable))
    run = batch(live[member, 0])

    def at_most_y(u):
        drafted, num_accepted, first = run(u_draft[member], hi[member], u)
        assert torch.equal(drafted, live[member, 1]) and bool((num_accepted == 0).all())
        return first <= ys

    residual_cdf = measure(*threshold(at_most_y, len(member), STEPS)).reshape(len(rejectable), vocab)
    residual = torch.diff(residual_cdf, dim=1, prepend=torch.zeros(len(rejectable), 1, dtype=torch.float64))

    law = torch.zeros(n_prompts, vocab, dtype=torch.float64)
    weight = draft_law[live[:, 0], live[:, 1]]
    law.index_put_((live[:, 0], live[:, 1]), weight * accept, accumulate=True)
    law.index_add_(0, live[rejectable, 0], (weight * (1 - accept))[rejectable, None] * residual)
    return law, draft_law


@pytest.mark.parametrize(("arch", "cd", "warpers"), EXACT_CASES)
def test_sampling_one_step_law_is_exactly_the_contrastive_law(arch, cd, warpers, monkeypatch):
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind="noisy_copy", noise=0.3)
    prefixes = [list(p) for p in SAMPLING_PROMPTS]
    law, draft_law = measured_first_token_law(expert, amateur, cd, warpers, monkeypatch)
    torch.testing.assert_close(draft_law, own_law(amateur, prefixes, warpers), atol=1e-9, rtol=0)
    expected = contrastive_law(expert, amateur, prefixes, cd, warpers)
    torch.testing.assert_close(law, expected, atol=1e-9, rtol=0)
    # The case exercises acceptances, rejections and a law unlike the expert's and the amateur's.
    for other in (own_law(expert, prefixes, warpers), draft_law):
        assert (expected - other).abs().sum(dim=1).min() > 0.05


def test_exact_law_check_detects_verification_against_the_expert(monkeypatch):
    """Negative control: a strategy that verifies drafts against the expert's own processed law (plain
    speculative decoding) is measured, by the same machinery, to emit the expert's law, not the contrastive."""
    arch, cd, warpers = EXACT_CASES[0].values
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind="noisy_copy", noise=0.3)
    prefixes = [list(p) for p in SAMPLING_PROMPTS]

    def verify_against_expert(mp):
        mp.setattr(decoding.SpeculativeContrastiveDecoding, "target_scores", lambda self, logits, proposal: logits)

    law, _ = measured_first_token_law(expert, amateur, cd, warpers, monkeypatch, patch=verify_against_expert)
    torch.testing.assert_close(law, own_law(expert, prefixes, warpers), atol=1e-9, rtol=0)
    assert (law - contrastive_law(expert, amateur, prefixes, cd, warpers)).abs().sum(dim=1).min() > 0.05


# ----------------------------------------------------------------------------------------------------------
# Sampling: chi-square end to end

ROWS_PER_PROMPT = 3000
P_FLOOR = 1e-5
POWER = 1e-9

CHI_CASES = [
    pytest.param("llama", "independent", dict(alpha=0.1, beta=0.5), dict(temperature=1.0), id="llama-indep-logit"),
    pytest.param("gpt2", "noisy_copy", dict(alpha=0.05, beta=1.0), dict(temperature=0.8, top_k=6),
                 id="gpt2-noisy-logit-topk6"),
    pytest.param("gpt_neox", "noisy_copy", dict(alpha=0.02, form="logprob", amateur_temperature=0.5),
                 dict(temperature=1.2), id="neox-noisy-logprob-T0.5"),
]


def sampled(expert, amateur, cd, warpers, seed=2024):
    input_ids, mask = left_pad([SAMPLING_PROMPTS[r % 2] for r in range(2 * ROWS_PER_PROMPT)])
    torch.manual_seed(seed)
    out, strategy = speculative_contrastive(expert, amateur, input_ids, mask, 3, 2, do_sample=True, **cd, **warpers)
    assert out.shape == (input_ids.shape[0], input_ids.shape[1] + 3)
    return out[:, input_ids.shape[1] :], strategy.stats


def pvalues(expert, amateur, tokens, prompt_index, cd, warpers):
    prompt = list(SAMPLING_PROMPTS[prompt_index])
    laws = three_token_laws(lambda prefixes: contrastive_law(expert, amateur, prefixes, cd, warpers), prompt,
                            SMALL_VOCAB)
    observed = token_counts(tokens[prompt_index::2], SMALL_VOCAB)
    return {name: chi_square_pvalue(c, law) for name, c, law in zip(("first", "pair", "third"), observed, laws)}


@pytest.mark.parametrize(("arch", "kind", "cd", "warpers"), CHI_CASES)
def test_sampling_follows_the_contrastive_law_chi_square(arch, kind, cd, warpers):
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind=kind, noise=0.3)
    tokens, stats = sampled(expert, amateur, cd, warpers)
    assert 0 < stats.accepted < stats.drafted, "the test must exercise both acceptances and rejections"
    check_stats(stats, tokens.shape[0], 2, [3] * tokens.shape[0], exact_count=False)
    for p, prompt in enumerate(SAMPLING_PROMPTS):
        result = pvalues(expert, amateur, tokens, p, cd, warpers)
        assert min(result.values()) > P_FLOOR, f"prompt {prompt}: {result}"
        first = token_counts(tokens[p::2], SMALL_VOCAB)[0]
        for model in (expert, amateur):
            assert chi_square_pvalue(first, own_law(model, [list(prompt)], warpers)[0]) < POWER


def test_a_verification_that_accepts_every_draft_is_detected(monkeypatch):
    """Negative control: verifying against the amateur's law (every draft accepted) fails the same test."""
    real = kernels.verify_sampling

    def accept_every_draft(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms):
        fake_target = torch.cat([draft_probs.to(target_probs.dtype), target_probs[:, -1:]], dim=1)
        return real(fake_target, draft_probs, draft_ids, accept_uniforms, sample_uniforms)

    monkeypatch.setattr(kernels, "verify_sampling", accept_every_draft)
    arch, kind, cd, warpers = CHI_CASES[1].values
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind=kind, noise=0.3)
    tokens, stats = sampled(expert, amateur, cd, warpers)
    assert stats.accepted == stats.drafted
    worst = min(min(pvalues(expert, amateur, tokens, p, cd, warpers).values()) for p in range(2))
    assert worst < POWER


# ----------------------------------------------------------------------------------------------------------
# Vocabularies (bad settings and incompatible vocabularies: tests/test_contrastive.py, for both strategies)


@pytest.mark.parametrize(("bigger", "extra_logit"), PADDING_CASES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_padded_vocab_greedy_equals_contrastive_decoding(arch, bigger, extra_logit):
    expert, amateur = padded_pair(arch, bigger, extra_logit)
    input_ids, mask = left_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    for form in FORMS:
        out, strategy = speculative_contrastive(expert, amateur, input_ids, mask, 8, 3, form=form)
        assert int(out.max()) < SHARED
        assert_same_tokens(out, cd_by_hand(expert, amateur, input_ids, mask, 8, form=form))
        check_stats(strategy.stats, 3, 3, [8] * 3, exact_count=False)


@pytest.mark.parametrize(("bigger", "extra_logit"), PADDING_CASES)
def test_padded_vocab_sampling_stays_in_the_shared_range(bigger, extra_logit):
    expert, amateur = padded_pair("llama", bigger, extra_logit)
    input_ids, mask = left_pad([[5, 6, 7, 8], [9, 10]] * 50)
    torch.manual_seed(0)
    out, _ = speculative_contrastive(expert, amateur, input_ids, mask, 6, 3, do_sample=True, alpha=0.01)
    assert int(out.max()) < SHARED
