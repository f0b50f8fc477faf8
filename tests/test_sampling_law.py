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

import decoding
from decoding.kernels import ops as kernels
from laws import chi_square_pvalue, left_pad
from models import tiny_pair

VOCAB = 12
ROWS_PER_PROMPT = 3000
PROMPTS = ([5, 7, 3], [9, 4, 6, 8, 10])
NEW_TOKENS = 3
DRAFT_TOKENS = 2
ALPHA = 1e-5  # p-value floor: ~30 checks, so a change of random stream trips a correct build with odds ~3e-4
POWER = 1e-9  # negative controls must be rejected far more strongly than that

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
    first = next_token_laws(model, [prompt], settings)[0]
    second = next_token_laws(model, [prompt + [a] for a in range(VOCAB)], settings)  # [a, b]
    pair = first[:, None] * second
    prefixes = [prompt + [a, b] for a in range(VOCAB) for b in range(VOCAB)]
    third = next_token_laws(model, prefixes, settings).reshape(VOCAB, VOCAB, VOCAB)  # [a, b, c]
    return first, pair, (pair[:, :, None] * third).sum(dim=(0, 1))


def speculative_samples(target, draft, settings: dict, seed: int):
    """``(new tokens  # [rows, 3], stats)`` of a seeded speculative sampling run; rows alternate prompts."""
    ids, mask = left_pad([PROMPTS[r % len(PROMPTS)] for r in range(ROWS_PER_PROMPT * len(PROMPTS))])
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=DRAFT_TOKENS)
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
    first = torch.bincount(tokens[:, 0], minlength=VOCAB)
    pair = torch.bincount(tokens[:, 0] * VOCAB + tokens[:, 1], minlength=VOCAB * VOCAB).reshape(VOCAB, VOCAB)
    third = torch.bincount(tokens[:, 2], minlength=VOCAB)
    return first, pair, third


def pvalues(tokens: torch.Tensor, laws) -> dict:
    return {name: chi_square_pvalue(c, law) for name, c, law in zip(("first", "pair", "third"), counts(tokens), laws)}


def assert_follows_target_law(tokens: torch.Tensor, target, settings: dict) -> list[torch.Tensor]:
    """Chi-square of each prompt's samples (``tokens`` from :func:`speculative_samples`) against the target's
    exact law of its first three tokens; returns each prompt's rows."""
    per_prompt = [tokens[p :: len(PROMPTS)] for p in range(len(PROMPTS))]
    for prompt, rows in zip(PROMPTS, per_prompt):
        result = pvalues(rows, exact_laws(target, prompt, settings))
        assert min(result.values()) > ALPHA, f"prompt {prompt}: chi-square p-values {result}"
    return per_prompt


@pytest.mark.parametrize(("arch", "draft_kind", "settings"), CASES)
def test_speculative_sampling_follows_the_target_law(arch, draft_kind, settings):
    target, draft = tiny_pair(arch, vocab_size=VOCAB, draft_kind=draft_kind, noise=0.1)
    tokens, stats = speculative_samples(target, draft, settings, seed=1234)
    assert 0 < stats.accepted < stats.drafted, "the test must exercise both acceptances and rejections"
    for prompt, rows in zip(PROMPTS, assert_follows_target_law(tokens, target, settings)):
        # Negative control 1: the same samples are far from the draft's own (processed) first-token law.
        draft_first = next_token_laws(draft, [prompt], settings)[0]
        first_counts = counts(rows)[0]
        assert chi_square_pvalue(first_counts, draft_first) < POWER, "the test cannot tell target from draft"


@pytest.mark.parametrize(("arch", "draft_kind", "settings"), CASES[:3])
def test_a_verification_that_accepts_every_draft_is_detected(arch, draft_kind, settings, monkeypatch):
    """Negative control 2: verifying drafts against the draft's law instead of the target's (so every draft
    is accepted) makes the same chi-square test fail for the same seed and sample size."""
    real = kernels.verify_sampling

    def accept_every_draft(target_probs, draft_probs, draft_ids, accept_uniforms, sample_uniforms):
        fake_target = torch.cat([draft_probs.to(target_probs.dtype), target_probs[:, -1:]], dim=1)
        return real(fake_target, draft_probs, draft_ids, accept_uniforms, sample_uniforms)

    monkeypatch.setattr(kernels, "verify_sampling", accept_every_draft)
    target, draft = tiny_pair(arch, vocab_size=VOCAB, draft_kind=draft_kind, noise=0.1)
    tokens, stats = speculative_samples(target, draft, settings, seed=1234)
    assert stats.accepted == stats.drafted
    worst = min(min(pvalues(tokens[p :: len(PROMPTS)], exact_laws(target, prompt, settings)).values())
                for p, prompt in enumerate(PROMPTS))
    assert worst < POWER
