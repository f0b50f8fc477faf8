"""Contrastive decoding (``decoding.ContrastiveDecoding``) against the formula applied by hand.

The oracle (:func:`laws.greedy_by_hand`) runs the expert and the amateur with full recomputation at
every step (no cache: a plain forward pass over each row's compact token list), computes the score from the
papers' formulas (:func:`laws.contrastive_by_hand`) and takes the argmax, row by row. Properties:

- the kernel entry points ``contrastive_scores`` and ``proxy_tuning_scores`` equal the formulas on random
  logits (same ``-inf`` set, values to 1e-12), for the reference and for ``decoding.kernels``;
- greedy CD equals the oracle token for token, per row of a left-padded batch, on five architectures, for
  drawn ``alpha``, ``beta``, form (O'Brien & Lewis logit form, Li et al. log-prob form), amateur temperature,
  ``max_new_tokens`` and EOS ids; ``MixingStats`` count every row-step and one forward per model per step;
- ``beta = 0`` and ``alpha = 1`` are plain greedy ``generate``, exactly; the default settings really differ
  from both the expert's and the amateur's greedy output (so the equalities above test the contrast);
- ``amateur_window=W``: the oracle's amateur reads only the last ``W`` tokens;
- user logits processors apply to the score (repetition penalty, oracle with transformers' own processor);
- sampling: the law of one step, integrated exactly over the strategy's own uniform (``torch.rand`` is
  scripted, bisection on the real run), is ``softmax(warp(score))``; end to end, three sampled tokens pass a
  chi-square test against the enumerated contrastive law, and the expert's and amateur's own laws fail it;
- bad settings (of ``SpeculativeContrastiveDecoding`` too), incompatible vocabularies and tokenizers raise
  ``ValueError`` before any forward pass; padded vocabularies work and never produce an id past the shared
  range.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from transformers import LogitsProcessorList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

import decoding
from decoding.kernels import ops as kernels
from decoding.kernels import reference
from char_tokenizer import char_tokenizer
from laws import (
    FORMS,
    SAMPLING_PROMPTS,
    SMALL_VOCAB,
    assert_same_tokens,
    cd_by_hand,
    check_mixing_stats,
    chi_square_pvalue,
    contrastive,
    contrastive_by_hand,
    contrastive_law,
    generated_lengths,
    left_pad,
    measure,
    own_law,
    proxy_by_hand,
    scripted_rand,
    three_token_laws,
    threshold,
    token_counts,
)
from models import (
    ARCHS,
    PADDING_CASES,
    SHARED,
    forbid_forward,
    fresh_model,
    greedy_reference,
    padded_pair,
    tiny_model,
    tiny_pair,
)
from strategies import ALPHAS, BETAS, batch_sizes, draw_eos, new_token_counts, prompts

TEMPERATURES = st.sampled_from([0.5, 1.0, 1.5])
# Amateurs: a separate 1-layer model (strong contrast) or a noisy copy of the expert (weak contrast).
AMATEUR_KINDS = st.sampled_from(["independent", "noisy_copy"])


# ----------------------------------------------------------------------------------------------------------
# The kernel entry points against the formula (a fused kernel with the same signature can be appended)

IMPLEMENTATIONS = [pytest.param(reference, id="reference"), pytest.param(kernels, id="entry-points")]


@st.composite
def logit_pairs(draw):
    rows, vocab = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    expert = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale
    amateur = torch.randn(rows, vocab, generator=gen, dtype=torch.float64) * scale
    return expert, amateur


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(logits=logit_pairs(), alpha=ALPHAS, beta=st.just(0.0) | BETAS, form=st.sampled_from(FORMS),
       amateur_temperature=TEMPERATURES)
def test_contrastive_scores_kernel_is_the_formula(impl, logits, alpha, beta, form, amateur_temperature):
    expert, amateur = logits
    settings = dict(alpha=alpha, beta=beta, form=form, amateur_temperature=amateur_temperature)
    scores = impl.contrastive_scores(expert, amateur, **settings)
    expected = contrastive_by_hand(expert, amateur, **settings)
    assert scores.dtype == torch.float64 and scores.shape == expert.shape
    assert torch.equal(torch.isinf(scores), torch.isinf(expected))
    torch.testing.assert_close(scores, expected, atol=1e-12, rtol=1e-12)
    # The expert's argmax is always plausible; float32 input gives float32 scores.
    assert bool(torch.isfinite(scores.gather(1, expert.argmax(dim=1, keepdim=True))).all())
    assert impl.contrastive_scores(expert.float(), amateur.float(), **settings).dtype == torch.float32


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(logits=logit_pairs(), alpha=st.floats(-2.0, 3.0))
def test_proxy_tuning_scores_kernel_is_the_formula(impl, logits, alpha):
    large, tuned = logits
    base = tuned.flip(0) + 0.5
    torch.testing.assert_close(impl.proxy_tuning_scores(large, tuned, base, alpha=alpha),
                               proxy_by_hand(large, tuned, base, alpha), atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Greedy: the formula by hand


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    batch=prompts(batch_size=batch_sizes(1, 6)),
    alpha=ALPHAS,
    beta=BETAS,
    form=st.sampled_from(FORMS),
    amateur_temperature=TEMPERATURES,
    kind=AMATEUR_KINDS,
    max_new_tokens=new_token_counts(1, 10),
)
def test_greedy_equals_the_formula_by_hand(arch, data, batch, alpha, beta, form, amateur_temperature, kind,
                                           max_new_tokens):
    expert, amateur = tiny_pair(arch, draft_kind=kind, noise=0.1)
    input_ids, mask = batch
    settings = dict(alpha=alpha, beta=beta, form=form, amateur_temperature=amateur_temperature)
    no_eos = cd_by_hand(expert, amateur, input_ids, mask, max_new_tokens, **settings)
    eos = draw_eos(data, no_eos[:, input_ids.shape[1] :])
    # A row's tokens up to its first EOS do not depend on the EOS, so the oracle with EOS is a truncation;
    # running it again checks the oracle's own stopping too.
    ref = cd_by_hand(expert, amateur, input_ids, mask, max_new_tokens, eos_token_id=eos, **settings)
    out, strategy = contrastive(expert, amateur, input_ids, mask, max_new_tokens, eos_token_id=eos, **settings)
    assert_same_tokens(out, ref)
    lengths = generated_lengths(out, input_ids.shape[1], eos)
    check_mixing_stats(strategy.stats, lengths, ("target", "amateur"))
    expert_greedy = greedy_reference(expert, input_ids, mask, max_new_tokens)[:, input_ids.shape[1] :]
    note(f"tokens differing from the expert's greedy: {(no_eos[:, input_ids.shape[1]:] != expert_greedy).sum()}")


@pytest.mark.parametrize("arch", ARCHS)
def test_default_settings_really_contrast(arch):
    """Fixed prompts: CD's output differs from both models' own greedy output (so the oracle equality above
    is not the expert's greedy decoding in disguise), and stats are those of the last call only."""
    expert, amateur = tiny_pair(arch)
    input_ids = torch.randint(3, 96, (4, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(input_ids)
    out, strategy = contrastive(expert, amateur, input_ids, mask, 10)
    assert_same_tokens(out, cd_by_hand(expert, amateur, input_ids, mask, 10))
    assert not torch.equal(out, greedy_reference(expert, input_ids, mask, 10))
    assert not torch.equal(out, greedy_reference(amateur, input_ids, mask, 10))
    check_mixing_stats(strategy.stats, [10] * 4, ("target", "amateur"))
    # The same strategy object again, on one row: the stats describe that call alone.
    with torch.no_grad():
        expert.generate(input_ids[:1], attention_mask=mask[:1], max_new_tokens=3, do_sample=False, strategy=strategy)
    check_mixing_stats(strategy.stats, [3], ("target", "amateur"))


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    batch=prompts(batch_size=batch_sizes(1, 6)),
    which=st.sampled_from(["beta=0", "alpha=1"]),
    alpha=ALPHAS,
    beta=BETAS,
    form=st.sampled_from(FORMS),
    amateur_temperature=TEMPERATURES,
    max_new_tokens=new_token_counts(1, 10),
)
def test_beta_zero_and_alpha_one_are_plain_greedy(arch, data, batch, which, alpha, beta, form, amateur_temperature,
                                                  max_new_tokens):
    """``beta = 0`` is the expert alone (logit form); ``alpha = 1`` leaves only the expert's argmax plausible,
    in both forms. Either way the output equals plain transformers' greedy ``generate``, shape included."""
    expert, amateur = tiny_pair(arch)
    input_ids, mask = batch
    if which == "beta=0":
        beta, form = 0.0, "logit"
    else:
        alpha = 1.0
    plain = greedy_reference(expert, input_ids, mask, max_new_tokens)
    eos = draw_eos(data, plain[:, input_ids.shape[1] :])
    ref = greedy_reference(expert, input_ids, mask, max_new_tokens, eos_token_id=eos)
    out, strategy = contrastive(expert, amateur, input_ids, mask, max_new_tokens, eos_token_id=eos, alpha=alpha,
                                beta=beta, form=form, amateur_temperature=amateur_temperature)
    assert_same_tokens(out, ref)
    check_mixing_stats(strategy.stats, generated_lengths(out, input_ids.shape[1], eos), ("target", "amateur"))


@pytest.mark.parametrize("arch", ARCHS)
@given(
    batch=prompts(batch_size=batch_sizes(1, 5)),
    window=st.integers(1, 12),
    beta=BETAS,
    form=st.sampled_from(FORMS),
    max_new_tokens=new_token_counts(1, 8),
)
def test_amateur_window_equals_the_formula_by_hand(arch, batch, window, beta, form, max_new_tokens):
    """The amateur reads only the last ``window`` tokens of each row (prompt and generated tokens alike);
    a window longer than the text is plain CD."""
    expert, amateur = tiny_pair(arch)
    input_ids, mask = batch
    settings = dict(alpha=0.1, beta=beta, form=form)
    ref = cd_by_hand(expert, amateur, input_ids, mask, max_new_tokens, amateur_window=window, **settings)
    out, strategy = contrastive(expert, amateur, input_ids, mask, max_new_tokens, amateur_window=window, **settings)
    assert_same_tokens(out, ref)
    check_mixing_stats(strategy.stats, [max_new_tokens] * input_ids.shape[0], ("target", "amateur"))
    if window >= input_ids.shape[1] + max_new_tokens:
        assert_same_tokens(out, contrastive(expert, amateur, input_ids, mask, max_new_tokens, **settings)[0])


def test_amateur_window_changes_the_output():
    """Negative control for the window oracle: a short window gives another text than the full context."""
    expert, amateur = tiny_pair("llama")
    input_ids = torch.randint(3, 96, (4, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(input_ids)
    full, _ = contrastive(expert, amateur, input_ids, mask, 10, beta=1.0)
    short, _ = contrastive(expert, amateur, input_ids, mask, 10, beta=1.0, amateur_window=2)
    assert not torch.equal(full, short)
    assert_same_tokens(short, cd_by_hand(expert, amateur, input_ids, mask, 10, beta=1.0, amateur_window=2))


def test_a_window_wider_than_the_context_costs_what_the_context_costs():
    """``amateur_window`` far beyond the context (4000 and 10**9 against 20 tokens) feeds the amateur no wider
    input than the context itself (it was O(W^2): 15 s and 650 MB for W = 8000), and gives the same text as a
    window of exactly the context."""
    expert, amateur = tiny_pair("llama")
    input_ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(input_ids)
    widths = []
    hook = amateur.register_forward_pre_hook(lambda _m, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                             with_kwargs=True)
    try:
        exact, _ = contrastive(expert, amateur, input_ids, mask, 10, beta=1.0, amateur_window=20)
        for window in (4000, 10**9):
            widths.clear()
            wide, _ = contrastive(expert, amateur, input_ids, mask, 10, beta=1.0, amateur_window=window)
            assert torch.equal(wide, exact)
            assert widths and max(widths) <= 20, widths
    finally:
        hook.remove()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@given(batch=prompts(batch_size=batch_sizes(1, 4)), form=st.sampled_from(FORMS), max_new_tokens=new_token_counts(2, 8))
def test_user_processors_apply_to_the_score(arch, batch, form, max_new_tokens):
    """``repetition_penalty`` rescales the contrastive score (not the expert's logits): the oracle applies
    transformers' own processor to the hand-made score, with each row's padded view as ``input_ids``."""
    expert, amateur = tiny_pair(arch)
    input_ids, mask = batch
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(2.0)])
    ref = cd_by_hand(expert, amateur, input_ids, mask, max_new_tokens, beta=0.5, form=form, processors=processors)
    out, _ = contrastive(expert, amateur, input_ids, mask, max_new_tokens, beta=0.5, form=form,
                         repetition_penalty=2.0)
    assert_same_tokens(out, ref)


# ----------------------------------------------------------------------------------------------------------
# Sampling: the exact law of one step, and chi-square end to end

SAMPLING_CASES = [
    pytest.param("llama", dict(alpha=0.1, beta=0.5), dict(temperature=1.0), id="llama-logit-t1"),
    pytest.param("gpt2", dict(alpha=0.05, beta=1.0), dict(temperature=0.8, top_k=4), id="gpt2-logit-t0.8-topk4"),
    pytest.param("qwen2", dict(alpha=0.02, beta=0.0, form="logprob", amateur_temperature=0.5),
                 dict(temperature=1.3), id="qwen2-logprob-T0.5-t1.3"),
    pytest.param("opt", dict(alpha=0.01, beta=2.0, amateur_temperature=1.5), dict(temperature=1.0, top_k=6),
                 id="opt-logit-T1.5-topk6"),
]


def one_step_law(expert, amateur, cd, warpers, monkeypatch) -> torch.Tensor:
    """The exact law ``# [prompts, V]`` of CD's first sampled token after each of ``SAMPLING_PROMPTS``.

    Rows of a left-padded batch, one per (prompt, token y): the strategy's uniform is scripted and bisected
    until the emitted token exceeds ``y``, which gives the exact CDF of the emitted token."""
    input_ids, mask = left_pad([p for p in SAMPLING_PROMPTS for _ in range(SMALL_VOCAB)])
    ys = torch.arange(SMALL_VOCAB).repeat(len(SAMPLING_PROMPTS))

    def at_most_y(u):
        scripted_rand(monkeypatch, [u])
        try:
            out, _ = contrastive(expert, amateur, input_ids, mask, 1, do_sample=True, **cd, **warpers)
        finally:
            monkeypatch.undo()
        return out[:, -1] <= ys

    cdf = measure(*threshold(at_most_y, ys.numel(), steps=40)).reshape(len(SAMPLING_PROMPTS), SMALL_VOCAB)
    return torch.diff(cdf, dim=1, prepend=torch.zeros(len(SAMPLING_PROMPTS), 1, dtype=torch.float64))


@pytest.mark.parametrize(("arch", "cd", "warpers"), SAMPLING_CASES)
def test_sampling_one_step_law_is_exactly_the_contrastive_law(arch, cd, warpers, monkeypatch):
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB)
    prefixes = [list(p) for p in SAMPLING_PROMPTS]
    law = one_step_law(expert, amateur, cd, warpers, monkeypatch)
    torch.testing.assert_close(law, contrastive_law(expert, amateur, prefixes, cd, warpers), atol=1e-9, rtol=0)
    # Negative control: the expert's own law is not what is sampled.
    assert (law - own_law(expert, prefixes, warpers)).abs().sum(dim=1).min() > 0.05


def test_sampling_with_beta_zero_is_the_experts_own_law(monkeypatch):
    """``beta = 0``: no contrast and no plausibility mask, the expert's own processed law exactly."""
    expert, amateur = tiny_pair("gpt_neox", vocab_size=SMALL_VOCAB)
    warpers = dict(temperature=1.5)
    law = one_step_law(expert, amateur, dict(alpha=0.5, beta=0.0), warpers, monkeypatch)
    expert_law = own_law(expert, [list(p) for p in SAMPLING_PROMPTS], warpers)
    torch.testing.assert_close(law, expert_law, atol=1e-9, rtol=0)
    assert bool((expert_law > 1e-6).all()), "the case must have tokens a mask at alpha = 0.5 would remove"


ROWS_PER_PROMPT = 3000
P_FLOOR = 1e-5  # seeded runs: a correct build passes deterministically; a new random stream fails w.p. ~1e-4
POWER = 1e-9  # negative controls must be rejected far more strongly


@pytest.mark.parametrize(("arch", "cd", "warpers"), SAMPLING_CASES)
def test_sampling_follows_the_contrastive_law_chi_square(arch, cd, warpers):
    """2 x 3000 rows (two prompts of different lengths, left-padded together) sample 3 tokens each; the
    first token, the first pair and the third token pass a chi-square test against the contrastive law
    enumerated by hand, never contain a token of zero probability, and reject the expert's and the
    amateur's own laws."""
    expert, amateur = tiny_pair(arch, vocab_size=SMALL_VOCAB)
    input_ids, mask = left_pad([SAMPLING_PROMPTS[r % 2] for r in range(2 * ROWS_PER_PROMPT)])
    torch.manual_seed(4321)
    out, strategy = contrastive(expert, amateur, input_ids, mask, 3, do_sample=True, **cd, **warpers)
    tokens = out[:, input_ids.shape[1] :]
    assert tokens.shape == (2 * ROWS_PER_PROMPT, 3)
    check_mixing_stats(strategy.stats, [3] * tokens.shape[0], ("target", "amateur"))
    for p, prompt in enumerate(SAMPLING_PROMPTS):
        rows = tokens[p::2]
        laws = three_token_laws(lambda prefixes: contrastive_law(expert, amateur, prefixes, cd, warpers),
                                list(prompt), SMALL_VOCAB)
        observed = token_counts(rows, SMALL_VOCAB)
        pvalues = {name: chi_square_pvalue(c, law) for name, c, law in zip(("first", "pair", "third"), observed, laws)}
        assert min(pvalues.values()) > P_FLOOR, f"prompt {prompt}: {pvalues}"
        for model in (expert, amateur):
            assert chi_square_pvalue(observed[0], own_law(model, [list(prompt)], warpers)[0]) < POWER


# ----------------------------------------------------------------------------------------------------------
# Bad input


CONTRASTIVE_STRATEGIES = (decoding.ContrastiveDecoding, decoding.SpeculativeContrastiveDecoding)
# Settings that both contrastive strategies check, then each one's own.
BAD_CONTRASTIVE_SETTINGS = [
    (dict(alpha=0.0), "alpha must be in (0, 1]"),
    (dict(alpha=-0.1), "alpha must be in (0, 1]"),
    (dict(alpha=1.5), "alpha must be in (0, 1]"),
    (dict(beta=-0.5), "beta must be >= 0"),
    (dict(form="logits"), "form must be"),
    (dict(form="prob"), "form must be"),
    (dict(form=None), "form must be"),
    (dict(amateur_temperature=0.0), "amateur_temperature must be > 0"),
    (dict(amateur_temperature=-1.0), "amateur_temperature must be > 0"),
    (dict(amateur_temperature=-2.0), "amateur_temperature must be > 0"),
]
BAD_SETTINGS = [
    *[(strategy, kwargs, phrase) for strategy in CONTRASTIVE_STRATEGIES for kwargs, phrase in BAD_CONTRASTIVE_SETTINGS],
    (decoding.ContrastiveDecoding, dict(amateur_window=0), "amateur_window"),
    (decoding.ContrastiveDecoding, dict(amateur_window=-3), "amateur_window"),
    (decoding.ContrastiveDecoding, dict(amateur_window=2.5), "amateur_window"),
    (decoding.SpeculativeContrastiveDecoding, dict(num_draft_tokens=0), "num_draft_tokens"),
    (decoding.SpeculativeContrastiveDecoding, dict(num_draft_tokens=2.0), "num_draft_tokens"),
]


@pytest.mark.parametrize(("strategy_class", "kwargs", "phrase"), [
    pytest.param(*case, id=f"{case[0].__name__}-{case[1]}") for case in BAD_SETTINGS])
def test_bad_settings_raise(strategy_class, kwargs, phrase):
    with pytest.raises(ValueError) as err:
        strategy_class(tiny_model("llama"), **kwargs)
    assert phrase in str(err.value)


@pytest.mark.parametrize("strategy_class", CONTRASTIVE_STRATEGIES)
def test_incompatible_amateur_vocab_raises_before_any_forward(strategy_class):
    """Sizes 129 rows apart cannot be embedding padding: a ValueError naming the vocab, with no forward."""
    expert = forbid_forward(fresh_model("llama", vocab_size=96))
    amateur = forbid_forward(fresh_model("llama", vocab_size=96 + 129, seed=1000, num_layers=1))
    decoding.enable(expert)
    input_ids, mask = left_pad([[5, 6, 7], [8]])
    for do_sample in (False, True):
        with pytest.raises(ValueError, match="vocab") as err:
            expert.generate(input_ids, attention_mask=mask, max_new_tokens=4, do_sample=do_sample,
                            strategy=strategy_class(amateur))
        assert "an amateur from the target's tokenizer family" in str(err.value)


def test_tokenizers_that_disagree_raise():
    expert, amateur = tiny_pair("llama")
    input_ids, mask = left_pad([[5, 6, 7]])
    tokenizers = (char_tokenizer(96), char_tokenizer(96, swap=(10, 11)))
    with pytest.raises(ValueError, match="vocab mismatch"):
        contrastive(expert, amateur, input_ids, mask, 4, tokenizers=tokenizers)
    # The same tokenizer on both sides proves compatibility: CD runs and equals the oracle.
    out, _ = contrastive(expert, amateur, input_ids, mask, 4, tokenizers=(char_tokenizer(96), char_tokenizer(96)))
    assert_same_tokens(out, cd_by_hand(expert, amateur, input_ids, mask, 4))


# ----------------------------------------------------------------------------------------------------------
# Padded vocabularies (``models.padded_pair``)


@pytest.mark.parametrize(("bigger", "extra_logit"), PADDING_CASES)
@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_padded_vocab_greedy_equals_the_formula_over_shared_ids(arch, bigger, extra_logit):
    """128 vs 160 rows: the score is the formula over the 128 ids both models have; no id >= 128 is ever
    produced, even when the padded model's extra rows have the largest logits."""
    expert, amateur = padded_pair(arch, bigger, extra_logit)
    input_ids, mask = left_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    for form in FORMS:
        out, strategy = contrastive(expert, amateur, input_ids, mask, 8, form=form)
        assert int(out.max()) < SHARED
        assert_same_tokens(out, cd_by_hand(expert, amateur, input_ids, mask, 8, form=form))
        check_mixing_stats(strategy.stats, [8] * 3, ("target", "amateur"))


@pytest.mark.parametrize(("bigger", "extra_logit"), PADDING_CASES)
def test_padded_vocab_sampling_stays_in_the_shared_range(bigger, extra_logit):
    expert, amateur = padded_pair("llama", bigger, extra_logit)
    input_ids, mask = left_pad([[5, 6, 7, 8], [9, 10]] * 50)
    torch.manual_seed(0)
    out, _ = contrastive(expert, amateur, input_ids, mask, 6, do_sample=True, alpha=0.01, beta=0.5)
    assert int(out.max()) < SHARED
    # Every sampled token is plausible for the expert among the shared ids.
    prefixes = [input_ids[r][mask[r].bool()].tolist() for r in range(2)]
    law = contrastive_law(expert, amateur, prefixes, dict(alpha=0.01, beta=0.5), {})
    first = out[:, input_ids.shape[1]].reshape(-1, 2)
    for p in range(2):
        assert bool((law[p, first[:, p]] > 0).all())
