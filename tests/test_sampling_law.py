"""End-to-end losslessness of speculative *sampling*: chi-square tests against the exact target law.

On a 12-token vocabulary, thousands of rows share two left-padded prompts (so rows of different lengths are
batched together) and sample 3 new tokens with ``num_draft_tokens=2``: the first step drafts 2 tokens, so
the first three tokens of a row are each an accepted draft, a recovered token or a bonus token, or come from
a later step. The exact law of the generated text is computed from the *target alone*, with plain
transformers' ``generate(output_scores=True)`` giving its processed scores (temperature, top-k, top-p, min-p,
repetition penalty, in transformers' own order) for every prefix, by enumeration:

- first token: ``p1(a)``; pair of the first two tokens: ``p1(a) p2(b | a)``;
- third token: ``sum_{a,b} p1(a) p2(b | a) p3(c | a, b)``.

The empirical laws must pass a chi-square test (p-value above 1e-5; runs are seeded, so a correct
implementation passes deterministically), must never contain a token of zero target probability, and two
negative controls prove the test has the power to fail: the same samples are rejected when tested against
the draft's own law, and a broken verification that accepts every draft is rejected against the target's.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging import version

from decoding.kernels import ops as kernels
from laws import (
    POWER,
    PROMPTS,
    SMALL_VOCAB,
    assert_follows_target_law,
    chi_square_pvalue,
    counts,
    exact_laws,
    next_token_laws,
    pvalues,
    speculative_samples,
)
from models import tiny_pair

CASES = [
    pytest.param("llama", "independent", dict(temperature=1.0), id="llama-independent-t1.0"),
    pytest.param("gpt2", "noisy_copy", dict(temperature=0.8, top_k=6), id="gpt2-noisy-t0.8-topk6"),
    pytest.param("qwen2", "noisy_copy", dict(temperature=1.3, top_p=0.85), id="qwen2-noisy-t1.3-topp0.85"),
    pytest.param("opt", "noisy_copy", dict(temperature=1.5, min_p=0.05), id="opt-noisy-t1.5-minp0.05"),
    pytest.param("gpt_neox", "noisy_copy", dict(temperature=1.2, repetition_penalty=1.5), id="neox-noisy-rep1.5",
                 marks=pytest.mark.skipif(
                     version.parse(transformers.__version__) < version.parse("5.23"),
                     reason="before 5.23 transformers' repetition penalty also penalises left-pad ids in a padded "
                            "batch (its own generate and ours alike), so the law differs from the unpadded oracle")),
]


@pytest.mark.parametrize(("arch", "draft_kind", "settings"), CASES)
def test_speculative_sampling_follows_the_target_law(arch, draft_kind, settings):
    target, draft = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind=draft_kind, noise=0.1)
    tokens, stats = speculative_samples(target, draft, settings, seed=1234)
    assert 0 < stats.accepted < stats.drafted, "the test must exercise both acceptances and rejections"
    for prompt, rows in zip(PROMPTS, assert_follows_target_law(tokens, target, settings)):
        # Negative control 1: the same samples are far from the draft's own (processed) first-token law.
        draft_first = next_token_laws(draft, [prompt], settings)[0]
        first_counts = counts(rows)[0]
        assert chi_square_pvalue(first_counts, draft_first) < POWER, "the test cannot tell target from draft"


def test_speculative_sampling_with_a_static_cache_follows_the_target_law():
    """cache="static": rows that finish stay in the batch (until half of it has) and keep drawing; the others'
    law is the target's."""
    target, draft = tiny_pair("qwen2", vocab_size=SMALL_VOCAB, draft_kind="noisy_copy", noise=0.1)
    settings = dict(temperature=1.3, top_p=0.85)
    tokens, stats = speculative_samples(target, draft, settings, seed=4321, cache="static")
    assert 0 < stats.accepted < stats.drafted
    assert_follows_target_law(tokens, target, settings)


@pytest.mark.parametrize(("arch", "draft_kind", "settings"), CASES[:3])
def test_a_verification_that_accepts_every_draft_is_detected(arch, draft_kind, settings, monkeypatch):
    """Negative control 2: verifying drafts against the draft's law instead of the target's (so every draft
    is accepted) makes the same chi-square test fail for the same seed and sample size."""
    real = kernels.verify_sampling

    def accept_every_draft(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms):
        fake_target = torch.cat([draft_probs.to(target_probs.dtype), target_probs[:, -1:]], dim=1)
        return real(fake_target, draft_probs, draft_ids, accept_uniforms, sample_uniforms)

    monkeypatch.setattr(kernels, "verify_sampling", accept_every_draft)
    target, draft = tiny_pair(arch, vocab_size=SMALL_VOCAB, draft_kind=draft_kind, noise=0.1)
    tokens, stats = speculative_samples(target, draft, settings, seed=1234)
    assert stats.accepted == stats.drafted
    worst = min(min(pvalues(tokens[p :: len(PROMPTS)], exact_laws(target, prompt, settings)).values())
                for p, prompt in enumerate(PROMPTS))
    assert worst < POWER
