"""Block verification (``kernels.verify_block``, ``SpeculativeDecoding(..., verification="block")``): the exact law
of the emitted text by integration over every uniform (the token-wise tests' machinery), expected accepted length
never below the token rule's on drawn laws, the paper's two-token example, rows proposing fewer drafts, and end to
end: greedy unchanged, the sampling law by chi-square."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

import decoding
from decoding.kernels import ops as kernels
from decoding.kernels import reference
from laws import assert_follows_target_law, below, emitted_law, measure, speculative_samples, threshold
from models import greedy_reference, tiny_pair
from strategies import draft_lengths, prompts, two_step_laws


class Block:
    """``verify_block`` under the name the integration helpers call."""

    verify_sampling = staticmethod(reference.verify_block)


ONE = below(1.0)  # a uniform that passes no test of probability < 1


def _pass_probability(p, q, drafts, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability that the test of ``position`` (0-based) passes, every other uniform failing, and a uniform
    just above it (which fails it where the probability is < 1)."""
    n, g = drafts.shape

    def passed(u):
        u_accept = torch.full((n, g), ONE, dtype=torch.float64)
        u_accept[:, position] = u
        _, tau = reference.verify_block(p, q, drafts, u_accept, torch.full((n,), 0.5, dtype=torch.float64))
        return tau > position

    lo, hi = threshold(passed, n)
    return measure(lo, hi), torch.where(hi < 1, hi, torch.full_like(hi, ONE))


def _block_pieces(laws):
    p1, q1, p2, q2, p3 = laws
    vocab = p1.numel()
    pairs = [(a, b) for a in range(vocab) for b in range(vocab) if q1[a] > 0 and q2[a, b] > 0]
    x1, x2 = torch.tensor([a for a, _ in pairs]), torch.tensor([b for _, b in pairs])
    n = len(pairs)
    weight = q1[x1] * q2[x1, x2]
    drafts = torch.stack([x1, x2], dim=1)
    p = torch.stack([p1.expand(n, -1), p2[x1], p3.expand(n, -1)], dim=1).contiguous()
    q = torch.stack([q1.expand(n, -1), q2[x1]], dim=1).contiguous()
    h1, fail1 = _pass_probability(p, q, drafts, 0)
    h2, fail2 = _pass_probability(p, q, drafts, 1)
    return x1, x2, weight, drafts, p, q, h1, h2, fail1, fail2


@given(laws=two_step_laws())
def test_block_verification_emits_exactly_the_target_law(laws):
    """g = 2: every draft pair is a row weighted by q1(x1) q2(x2 | x1); tau = 2 when the second test passes, else 1
    when the first does, else 0. The joint law of the first two tokens of the text equals p1(a) p2(b | a) to 1e-6
    (a step that emits one token is continued by the target's own law), and the bonus token's law is p3."""
    p1, q1, p2, q2, p3 = laws
    x1, x2, weight, drafts, p, q, h1, h2, fail1, fail2 = _block_pieces(laws)
    n = weight.numel()
    zeros = torch.zeros(n, dtype=torch.float64)
    w2 = weight * h2
    w1 = weight * (1 - h2) * h1
    w0 = weight * (1 - h2) * (1 - h1)
    r0 = emitted_law(Block, p, q, drafts, torch.stack([fail1, fail2], 1), 0, w0)
    r1 = emitted_law(Block, p, q, drafts, torch.stack([zeros, fail2], 1), 1, w1)
    bonus = emitted_law(Block, p, q, drafts, torch.stack([torch.full_like(zeros, ONE), zeros], 1), 2, w2)
    joint = (w0 @ r0)[:, None] * p2
    joint = joint.index_put((x1,), w1[:, None] * r1, accumulate=True)
    joint = joint.index_put((x1, x2), w2, accumulate=True)
    torch.testing.assert_close(joint, p1[:, None] * p2, atol=1e-6, rtol=0)
    for r in (w2 > 0).nonzero().squeeze(1).tolist():
        torch.testing.assert_close(bonus[r], p3, atol=1e-6, rtol=0)


@given(laws=two_step_laws())
def test_block_verification_accepts_at_least_as_many_drafts_as_the_token_rule(laws):
    p1, q1, p2, q2, _ = laws
    x1, x2, weight, _, _, _, h1, h2, _, _ = _block_pieces(laws)
    block = (weight * (2 * h2 + (1 - h2) * h1)).sum()
    a1 = (p1[x1] / q1[x1]).clamp_max(1)
    a2 = (p2[x1, x2] / q2[x1, x2]).clamp_max(1)
    token = (weight * (a1 + a1 * a2)).sum()
    assert float(block) >= float(token) - 1e-9


def test_the_papers_example_accepts_11_9_tokens_where_the_token_rule_accepts_10_9():
    """Sun et al. section 2: context-free M_b = (1/3, 2/3), M_s = (2/3, 1/3), g = 2."""
    mb = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    ms = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    laws = (mb, ms, mb.expand(2, -1), ms.expand(2, -1), mb)
    _, _, weight, _, _, _, h1, h2, _, _ = _block_pieces(laws)
    assert float((weight * (2 * h2 + (1 - h2) * h1)).sum()) == pytest.approx(11 / 9, abs=1e-12)


def test_one_draft_is_the_token_rule():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, 2, 9, generator=gen, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(64, 1, 9, generator=gen, dtype=torch.float64), -1)
    drafts = torch.multinomial(q[:, 0], 1, generator=gen)
    u, v = torch.rand(64, 1, generator=gen, dtype=torch.float64), torch.rand(64, generator=gen, dtype=torch.float64)
    block, token = reference.verify_block(p, q, drafts, u, v), reference.verify_sampling(p, q, drafts, u, v)
    assert torch.equal(block[0], token[0]) and torch.equal(block[1], token[1])


@pytest.mark.parametrize("seed", range(4))
def test_rows_proposing_fewer_drafts_end_their_block_there(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, g, vocab = 6, 4, 7
    p = torch.softmax(torch.randn(batch, g + 1, vocab, generator=gen, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(batch, g, vocab, generator=gen, dtype=torch.float64), -1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, g)
    lengths = torch.randint(0, g + 1, (batch,), generator=gen)
    beyond = torch.arange(g) >= lengths[:, None]
    drafts, q = drafts.masked_fill(beyond, -1), q.masked_fill(beyond[..., None], 0.0)
    for _ in range(20):
        u = torch.rand(batch, g, generator=gen, dtype=torch.float64)
        ids, tau = reference.verify_block(p, q, drafts, u, torch.rand(batch, generator=gen, dtype=torch.float64))
        assert (tau <= lengths).all()
        rows = torch.arange(batch)
        assert (p[rows, tau, ids[rows, tau]] > 0).all()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@given(batch=prompts(), g=draft_lengths(1, 5))
def test_block_verification_leaves_greedy_output_unchanged(arch, batch, g):
    target, draft = tiny_pair(arch, draft_kind="noisy_copy", noise=0.1)
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, verification="block")
    out = target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 8))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_block_verification_sampling_follows_the_target_law(backend, monkeypatch):
    """Chi-square against exact enumeration, as for the token rule (tests/test_sampling_law.py); on the fused route
    the strategy falls back to the processors' sampler, since the kernels implement the token rule."""
    real = decoding.SpeculativeDecoding.__init__

    def block_init(self, *args, **kwargs):
        real(self, *args, verification="block", **kwargs)

    monkeypatch.setattr(decoding.SpeculativeDecoding, "__init__", block_init)
    calls = []
    monkeypatch.setattr(kernels, "verify_block", lambda *a: calls.append(1) or reference.verify_block(*a))
    target, draft = tiny_pair("gpt2", vocab_size=12, draft_kind="noisy_copy", noise=0.1)
    settings = dict(temperature=0.9, top_k=8)
    with kernels.use_backend(backend):
        tokens, stats = speculative_samples(target, draft, settings, seed=3)
    assert calls and 0 < stats.accepted < stats.drafted
    assert_follows_target_law(tokens, target, settings)


def test_verification_must_be_token_or_block():
    with pytest.raises(ValueError, match="verification must be 'token' or 'block'"):
        decoding.SpeculativeDecoding(tiny_pair("llama")[1], verification="tree")


def test_the_law_check_detects_a_residual_without_its_weight(monkeypatch):
    """Negative control: drawing the token after tau from max(0, p - q) instead of max(0, w_tau p - q) changes the
    law, and the integration above sees it."""

    real = reference.verify_block

    def unweighted(p, q, drafts, u_accept, u_sample):
        ids, tau = real(p, q, drafts, u_accept, u_sample)
        rows = torch.arange(drafts.shape[0])
        q_padded = torch.cat([q, q.new_zeros(q.shape[0], 1, q.shape[-1])], dim=1)
        residual = (p[rows, tau] - q_padded[rows, tau]).clamp_min(0)
        residual = torch.where(residual.sum(-1, keepdim=True) <= 0, p[rows, tau], residual)
        ids[rows, tau] = reference.sample(residual, u_sample)
        return ids, tau

    monkeypatch.setattr(reference, "verify_block", unweighted)
    monkeypatch.setattr(Block, "verify_sampling", staticmethod(unweighted))
    mb = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ms = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    laws = (mb, ms, torch.stack([ms, mb, ms]), torch.stack([mb, ms, mb]), mb)
    with pytest.raises(AssertionError):
        test_block_verification_emits_exactly_the_target_law.hypothesis.inner_test(laws=laws)
