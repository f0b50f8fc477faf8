"""End to end on the CPU, on the fused kernel route (the torch reference forced, as a run with CuPy kernels
would take it): greedy output equals the target's own, speculative contrastive equals contrastive decoding,
and sampled text follows the exact target law (chi-square against enumeration, as tests/test_sampling_law.py
does on the general route)."""

from __future__ import annotations

import pytest
import torch

import decoding
from decoding.kernels import ops as kernels
from laws import (
    POWER,
    PROMPTS,
    assert_follows_target_law,
    chi_square_pvalue,
    counts,
    left_pad,
    next_token_laws,
    speculative_samples,
)
from models import greedy_reference, tiny_pair


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_fused_greedy_speculative_equals_the_targets_own_greedy(arch, monkeypatch):
    target, draft = tiny_pair(arch, vocab_size=32, draft_kind="noisy_copy", noise=0.3)
    ids, mask = left_pad([[5, 7, 3], [9, 4, 6, 8, 10], [12]])
    expected = greedy_reference(target, ids, mask, 9)
    decoding.enable(target)
    calls = []
    real = kernels.verify
    monkeypatch.setattr(kernels, "verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    for g in (1, 3, 5):
        with kernels.use_backend("torch"), torch.no_grad():
            out = target.generate(ids, attention_mask=mask, max_new_tokens=9,
                                  strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=g))
        assert torch.equal(out, expected)
    assert calls


@pytest.mark.parametrize("cd", [dict(alpha=0.1, beta=0.5), dict(alpha=0.05, form="logprob", amateur_temperature=0.5)],
                         ids=["logit", "logprob"])
def test_fused_greedy_speculative_contrastive_equals_contrastive(cd):
    expert, amateur = tiny_pair("llama", vocab_size=32, draft_kind="noisy_copy", noise=0.3)
    ids, mask = left_pad([[5, 7, 3], [9, 4, 6, 8, 10]])
    decoding.enable(expert)
    outs = []
    for backend in ("auto", "torch"):
        for strategy in (decoding.ContrastiveDecoding(amateur, **cd),
                         decoding.SpeculativeContrastiveDecoding(amateur, num_draft_tokens=3, **cd)):
            with kernels.use_backend(backend), torch.no_grad():
                outs.append(expert.generate(ids, attention_mask=mask, max_new_tokens=8, strategy=strategy))
    assert all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("settings", [dict(temperature=0.8, top_k=6, top_p=0.9)], ids=["t0.8-topk6-topp0.9"])
def test_fused_speculative_sampling_follows_the_target_law(settings):
    target, draft = tiny_pair("gpt2", vocab_size=12, draft_kind="noisy_copy", noise=0.1)
    with kernels.use_backend("torch"):
        tokens, stats = speculative_samples(target, draft, settings, seed=4321)
    assert 0 < stats.accepted < stats.drafted
    for prompt, rows in zip(PROMPTS, assert_follows_target_law(tokens, target, settings)):
        draft_first = next_token_laws(draft, [prompt], settings)[0]
        assert chi_square_pvalue(counts(rows)[0], draft_first) < POWER
