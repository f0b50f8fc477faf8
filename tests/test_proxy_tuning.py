"""Proxy-tuning (``decoding.ProxyTuning``): ``s_large + alpha (s_tuned - s_base)``, three models, three caches.

- With ``tuned`` equal to ``base`` (the same object, or an equal copy) the difference is exactly zero and the
  output is the large model's own greedy ``generate``, shape included, with and without EOS and with a user
  processor (repetition penalty) that transformers applies to the large model's logits.
- Otherwise greedy decoding equals the formula applied by hand with full recomputation of all three models
  (:func:`laws.greedy_by_hand`), per row of a left-padded batch, on five architectures, for drawn
  ``alpha`` (negative values included: the formula does not restrict it); the steer really changes the text.
- Sampling: the exact law of one step (the strategy's uniform scripted and bisected) is ``softmax(score)``.
- ``MixingStats`` count every row-step and one forward pass per model per step.
- Incompatible vocabularies raise ``ValueError`` naming the vocab and the role, before any forward pass; a
  padded large model works over the shared ids and never produces an id past them.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import decoding
from laws import (
    SAMPLING_PROMPTS,
    SMALL_VOCAB,
    assert_same_tokens,
    check_mixing_stats,
    generated_lengths,
    greedy_by_hand,
    left_pad,
    measure,
    next_token_logits,
    proxy_by_hand,
    scripted_rand,
    threshold,
)
from models import ARCHS, SHARED, forbid_forward, fresh_model, greedy_reference, padded_copy, tiny_model, tiny_pair
from strategies import batch_sizes, draw_eos, new_token_counts, prompts

ROLES = ("target", "base", "tuned")
ALPHAS = st.sampled_from([0.5, 1.0, 2.0]) | st.floats(-1.0, 3.0)


def helpers(arch, vocab_size=96):
    """A small base (2 layers, seed 7) and a "tuned" version of it (a noisy copy), beside the large
    ``tiny_model(arch)``."""
    return tiny_pair(arch, vocab_size=vocab_size, seed=7, draft_kind="noisy_copy", noise=0.3)


def proxy(large, base, tuned, input_ids, mask, max_new_tokens, alpha=1.0, **kwargs):
    decoding.enable(large)
    strategy = decoding.ProxyTuning(base, tuned, alpha=alpha)
    kwargs.setdefault("do_sample", False)
    with torch.no_grad():
        out = large.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, strategy=strategy,
                             **kwargs)
    return out, strategy


def proxy_greedy_by_hand(large, base, tuned, input_ids, mask, max_new_tokens, alpha, eos_token_id=None):
    return greedy_by_hand(
        {"large": large, "tuned": tuned, "base": base},
        lambda s: proxy_by_hand(s["large"], s["tuned"], s["base"], alpha),
        input_ids, mask, max_new_tokens, eos_token_id=eos_token_id,
    )


_copies: dict = {}


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    batch=prompts(batch_size=batch_sizes(1, 6)),
    alpha=ALPHAS,
    same_object=st.booleans(),
    repetition_penalty=st.sampled_from([None, 1.5]),
    max_new_tokens=new_token_counts(1, 10),
)
def test_tuned_equal_to_base_is_the_large_models_greedy(arch, data, batch, alpha, same_object, repetition_penalty,
                                                        max_new_tokens):
    large = tiny_model(arch)
    base, _ = helpers(arch)
    if same_object:
        tuned = base
    else:  # an equal but separate model: its logits are bitwise those of base
        tuned = _copies.setdefault(arch, fresh_model(arch, seed=7))
    input_ids, mask = batch
    kwargs = {} if repetition_penalty is None else {"repetition_penalty": repetition_penalty}
    plain = greedy_reference(large, input_ids, mask, max_new_tokens, **kwargs)
    eos = draw_eos(data, plain[:, input_ids.shape[1] :])
    ref = greedy_reference(large, input_ids, mask, max_new_tokens, eos_token_id=eos, **kwargs)
    out, strategy = proxy(large, base, tuned, input_ids, mask, max_new_tokens, alpha, eos_token_id=eos, **kwargs)
    assert_same_tokens(out, ref)
    check_mixing_stats(strategy.stats, generated_lengths(out, input_ids.shape[1], eos), ROLES)


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    batch=prompts(batch_size=batch_sizes(1, 6)),
    alpha=ALPHAS,
    max_new_tokens=new_token_counts(1, 10),
)
def test_greedy_equals_the_formula_by_hand(arch, data, batch, alpha, max_new_tokens):
    large = tiny_model(arch)
    base, tuned = helpers(arch)
    input_ids, mask = batch
    no_eos = proxy_greedy_by_hand(large, base, tuned, input_ids, mask, max_new_tokens, alpha)
    eos = draw_eos(data, no_eos[:, input_ids.shape[1] :])
    ref = proxy_greedy_by_hand(large, base, tuned, input_ids, mask, max_new_tokens, alpha, eos_token_id=eos)
    out, strategy = proxy(large, base, tuned, input_ids, mask, max_new_tokens, alpha, eos_token_id=eos)
    assert_same_tokens(out, ref)
    check_mixing_stats(strategy.stats, generated_lengths(out, input_ids.shape[1], eos), ROLES)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_steer_changes_the_text(arch):
    """Fixed prompts: with alpha = 1 the text differs from the large model's own greedy text (so the
    formula test above is not plain greedy decoding in disguise) and the roles are counted separately."""
    large = tiny_model(arch)
    base, tuned = helpers(arch)
    input_ids = torch.randint(3, 96, (4, 5), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(input_ids)
    out, strategy = proxy(large, base, tuned, input_ids, mask, 10)
    assert not torch.equal(out, greedy_reference(large, input_ids, mask, 10))
    assert_same_tokens(out, proxy_greedy_by_hand(large, base, tuned, input_ids, mask, 10, 1.0))
    check_mixing_stats(strategy.stats, [10] * 4, ROLES)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_sampling_one_step_law_is_softmax_of_the_score(alpha, monkeypatch):
    """Rows (prompt, y) of a left-padded batch; the strategy's uniform is scripted and bisected until the
    emitted token exceeds y: the exact CDF of the emitted token, compared with ``softmax(score / 0.9)``."""
    large = tiny_model("qwen2", vocab_size=SMALL_VOCAB)
    base, tuned = helpers("qwen2", vocab_size=SMALL_VOCAB)
    input_ids, mask = left_pad([p for p in SAMPLING_PROMPTS for _ in range(SMALL_VOCAB)])
    ys = torch.arange(SMALL_VOCAB).repeat(len(SAMPLING_PROMPTS))

    def at_most_y(u):
        scripted_rand(monkeypatch, [u])
        try:
            out, _ = proxy(large, base, tuned, input_ids, mask, 1, alpha, do_sample=True, temperature=0.9)
        finally:
            monkeypatch.undo()
        return out[:, -1] <= ys

    cdf = measure(*threshold(at_most_y, ys.numel(), steps=40)).reshape(len(SAMPLING_PROMPTS), SMALL_VOCAB)
    law = torch.diff(cdf, dim=1, prepend=torch.zeros(len(SAMPLING_PROMPTS), 1, dtype=torch.float64))
    prefixes = [list(p) for p in SAMPLING_PROMPTS]
    logits = {name: next_token_logits(m, prefixes) for name, m in (("large", large), ("base", base), ("tuned", tuned))}
    expected = torch.softmax(proxy_by_hand(logits["large"], logits["tuned"], logits["base"], alpha) / 0.9, dim=-1)
    torch.testing.assert_close(law, expected, atol=1e-9, rtol=0)
    assert (law - torch.softmax(logits["large"] / 0.9, dim=-1)).abs().sum(dim=1).min() > 0.05


@pytest.mark.parametrize("role", ["base", "tuned"])
def test_incompatible_vocab_raises_before_any_forward(role):
    large = forbid_forward(fresh_model("llama", vocab_size=96))
    small = forbid_forward(fresh_model("llama", vocab_size=96, seed=7))
    wrong = forbid_forward(fresh_model("llama", vocab_size=96 + 129, seed=8))
    base, tuned = (wrong, small) if role == "base" else (small, wrong)
    input_ids, mask = left_pad([[5, 6, 7], [8]])
    with pytest.raises(ValueError, match="vocab") as err:
        proxy(large, base, tuned, input_ids, mask, 4)
    assert role in str(err.value)


@pytest.mark.parametrize("extra_logit", [None, 1e3], ids=["random-extra-rows", "extra-rows-win"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_padded_large_model_works_over_the_shared_ids(arch, extra_logit):
    """Large model with 160 rows, base and tuned with 128: the formula over the shared ids, no id >= 128."""
    large = padded_copy(arch, 0, 2, 160, extra_logit)
    base, tuned = helpers(arch, vocab_size=SHARED)
    input_ids, mask = left_pad([[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    out, strategy = proxy(large, base, tuned, input_ids, mask, 8)
    assert int(out.max()) < SHARED
    assert_same_tokens(out, proxy_greedy_by_hand(large, base, tuned, input_ids, mask, 8, 1.0))
    check_mixing_stats(strategy.stats, [8] * 3, ROLES)
    torch.manual_seed(0)
    sampled, _ = proxy(large, base, tuned, input_ids.repeat(30, 1), mask.repeat(30, 1), 6, do_sample=True)
    assert int(sampled.max()) < SHARED
