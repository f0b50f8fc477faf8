"""Unit and property tests of the verification kernels' specification, :mod:`decoding.kernels.reference`.

The losslessness of the sampling rule is checked *exactly*: the law of the emitted tokens is computed by
integrating the real ``verify_sampling`` over its uniforms. Acceptance at a position is monotone in its
uniform (accept for ``u`` below a threshold) and the sampled token is non-decreasing in the sample uniform
(inverse CDF), so bisection on the real function finds every threshold and every interval boundary; no
formula of the rule is re-implemented here.

``IMPLEMENTATIONS`` lists the modules under test: a fused kernel with the same signatures can be appended.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from decoding.kernels import ops as kernels
from decoding.kernels import reference
from laws import below, emitted_law, measure, threshold
from strategies import probability_vectors, two_step_laws

IMPLEMENTATIONS = [pytest.param(reference, id="reference"), pytest.param(kernels, id="entry-points")]


# ----------------------------------------------------------------------------------------------------------
# sample(probs, u)


@st.composite
def dyadic_weights(draw, max_vocab=16):
    """Integer weights summing to ``2**k`` (zeros allowed, at least one positive): every normalised CDF
    boundary ``cdf[y] / total`` and its product with the total are exact in float64."""
    vocab = draw(st.integers(1, max_vocab))
    k = draw(st.integers(0, 12))
    total = 2**k
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=vocab - 1, max_size=vocab - 1)))
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges[:-1], edges[1:])]


def _below_in(x: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` strictly below ``x``, as a Python float."""
    x = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(x, torch.tensor(-math.inf, dtype=dtype)))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(weights=dyadic_weights(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_sample_chooses_each_token_exactly_on_its_cdf_interval(impl, weights, dtype):
    """Token y is chosen for u at the left end of [cdf[y-1], cdf[y]) (normalised), in its middle and just
    below its right end, and a token of zero weight never is."""
    total = sum(weights)
    probs = torch.tensor(weights, dtype=dtype)
    us, expected = [], []
    right = 0
    for y, w in enumerate(weights):
        left, right = right, right + w
        if w:
            us += [left / total, (left + right) / 2 / total, _below_in(right / total, dtype)]
            expected += [y, y, y]
    ids = impl.sample(probs.expand(len(us), -1).contiguous(), torch.tensor(us, dtype=dtype))
    assert ids.tolist() == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)), min_size=1, max_size=16),
    trailing_zeros=st.integers(0, 5),
    leading_zeros=st.integers(0, 5),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_sample_never_chooses_a_zero_weight_token(impl, weights, trailing_zeros, leading_zeros, dtype):
    """Including u = 0, u just below 1 (rounding would land on the total, i.e. past the last positive
    token, with trailing zeros after it) and unnormalised weights."""
    assume(any(w > 0 for w in weights))
    weights = [0.0] * leading_zeros + weights + [0.0] * trailing_zeros
    probs = torch.tensor(weights, dtype=dtype)
    tiny = torch.finfo(dtype).eps
    us = torch.tensor(sorted({0.0, 0.25, 0.5, 0.75, 1 - tiny, 1 - tiny / 2, _below_in(1.0, dtype)}), dtype=dtype)
    ids = impl.sample(probs.expand(len(us), -1).contiguous(), us)
    positive = [i for i, w in enumerate(weights) if w > 0]
    assert all(i in positive for i in ids.tolist()), (ids.tolist(), positive)
    assert ids[0] == positive[0]
    assert ids[-1] == positive[-1]
    assert ids.tolist() == sorted(ids.tolist()), "the sampled token must be non-decreasing in u"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-2, 1.0)), min_size=1, max_size=16),
    trailing_zeros=st.integers(1, 5),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)
def test_sample_with_uniforms_that_round_to_one_in_the_weights_dtype(impl, weights, trailing_zeros, dtype):
    """float64 uniforms just below 1 round to 1.0 in a lower-precision weight dtype: the threshold then
    equals the total, and the result must still be the last token of positive weight."""
    assume(any(w > 0 for w in weights))
    weights = weights + [0.0] * trailing_zeros
    probs = torch.tensor(weights, dtype=dtype)
    us = torch.tensor([below(1.0), 1 - 2**-30, 1 - 2**-20], dtype=torch.float64)
    ids = impl.sample(probs.expand(len(us), -1).contiguous(), us)
    positive = (probs > 0).nonzero().flatten().tolist()
    assert ids.tolist() == [positive[-1]] * len(us)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 8), vocab=st.integers(1, 50))
def test_sample_lands_in_the_interval_of_u(impl, seed, rows, vocab):
    """Random float weights: cdf[y-1] <= u * total <= cdf[y] up to rounding, for every row of a batch."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.rand(rows, vocab, generator=gen, dtype=torch.float64)
    probs[torch.rand(rows, vocab, generator=gen) < 0.3] = 0
    probs[:, vocab // 2] += 0.1
    u = torch.rand(rows, generator=gen, dtype=torch.float64)
    ids = impl.sample(probs, u)
    cdf = probs.cumsum(-1)
    for r in range(rows):
        y = int(ids[r])
        assert probs[r, y] > 0
        target = float(u[r] * cdf[r, -1])
        low = float(cdf[r, y - 1]) if y else 0.0
        assert low - 1e-12 <= target <= float(cdf[r, y]) + 1e-12


# ----------------------------------------------------------------------------------------------------------
# verify_greedy


def _greedy_loop(scores: list, drafts: list) -> tuple[list, int]:
    """Independent per-row spec: accept drafts while they equal the first argmax, then emit the argmax."""
    best = [row.index(max(row)) for row in scores]
    n = 0
    while n < len(drafts) and drafts[n] == best[n]:
        n += 1
    return drafts[:n] + [best[n]] + [-1] * (len(drafts) - n), n


@st.composite
def greedy_cases(draw):
    batch, g, vocab = draw(st.integers(1, 8)), draw(st.integers(1, 8)), draw(st.integers(2, 6))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        scores = torch.randn(batch, g + 1, vocab, generator=gen, dtype=torch.float64)
    else:  # small integers: ties, which must break towards the first maximal index as torch.argmax does
        scores = torch.randint(0, 3, (batch, g + 1, vocab), generator=gen).to(torch.float32)
    best = scores.argmax(-1)[:, :g]
    # Each row copies the argmax up to a drawn position, then random tokens (which may match by chance).
    drafts = torch.randint(0, vocab, (batch, g), generator=gen)
    agree = torch.tensor(draw(st.lists(st.integers(0, g), min_size=batch, max_size=batch)))
    drafts = torch.where(torch.arange(g) < agree[:, None], best, drafts)
    return scores, drafts


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(case=greedy_cases())
def test_verify_greedy_matches_a_per_row_loop(impl, case):
    scores, drafts = case
    out, num_accepted = impl.verify_greedy(scores, drafts)
    assert out.dtype == torch.int64 and num_accepted.dtype == torch.int64
    assert out.shape == (drafts.shape[0], drafts.shape[1] + 1) and num_accepted.shape == (drafts.shape[0],)
    for r in range(drafts.shape[0]):
        expected, n = _greedy_loop(scores[r].tolist(), drafts[r].tolist())
        assert out[r].tolist() == expected
        assert int(num_accepted[r]) == n


# ----------------------------------------------------------------------------------------------------------
# verify_sampling: p == q accepts everything


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(data=st.data(), batch=st.integers(1, 6), g=st.integers(1, 6), vocab=st.integers(1, 10))
def test_verify_sampling_accepts_every_draft_when_p_equals_q(impl, data, batch, g, vocab):
    probs = torch.stack([torch.stack([data.draw(probability_vectors(vocab)) for _ in range(g + 1)])
                         for _ in range(batch)])
    uniform = st.one_of(st.floats(0, 1, exclude_max=True), st.just(below(1.0)), st.just(0.0))
    u_accept = torch.tensor(data.draw(st.lists(uniform, min_size=batch * g, max_size=batch * g)), dtype=torch.float64)
    u_accept = u_accept.reshape(batch, g)
    u_sample = torch.tensor(data.draw(st.lists(uniform, min_size=batch, max_size=batch)), dtype=torch.float64)
    # Drafts drawn from q itself (so q(x) > 0), by the sampler under test's own rule.
    draws = data.draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=batch * g, max_size=batch * g))
    draws = torch.tensor(draws, dtype=torch.float64)
    drafts = reference.sample(probs[:, :g].reshape(batch * g, vocab), draws).reshape(batch, g)
    out, num_accepted = impl.verify_sampling(probs, probs[:, :g].clone(), drafts, u_accept, u_sample)
    assert num_accepted.tolist() == [g] * batch
    assert torch.equal(out[:, :g], drafts)
    assert torch.equal(out[:, g], reference.sample(probs[:, g], u_sample))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(data=st.data(), batch=st.integers(1, 6), g=st.integers(1, 6), vocab=st.integers(2, 10))
def test_verify_sampling_never_emits_a_token_the_target_excludes(impl, data, batch, g, vocab):
    """Zero target probability (top-k, top-p, a banned word) means never emitted: not as an accepted draft,
    even with an acceptance uniform of exactly 0 (a float32 ``torch.rand`` draws it with probability 2^-24
    per draw), and not as a recovered or bonus token."""
    p = torch.stack([torch.stack([data.draw(probability_vectors(vocab)) for _ in range(g + 1)]) for _ in range(batch)])
    q = torch.stack([torch.stack([data.draw(probability_vectors(vocab, zeros=False)) for _ in range(g)])
                     for _ in range(batch)])
    drafts = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=batch * g, max_size=batch * g)))
    drafts = drafts.reshape(batch, g)
    uniform = st.one_of(st.just(0.0), st.floats(0, 1, exclude_max=True), st.just(below(1.0)))
    u_accept = torch.tensor(data.draw(st.lists(uniform, min_size=batch * g, max_size=batch * g)), dtype=torch.float64)
    u_sample = torch.tensor(data.draw(st.lists(uniform, min_size=batch, max_size=batch)), dtype=torch.float64)
    out, num_accepted = impl.verify_sampling(p, q, drafts, u_accept.reshape(batch, g), u_sample)
    for r in range(batch):
        n = int(num_accepted[r])
        assert out[r, n + 1 :].tolist() == [-1] * (g - n)
        for i in range(n + 1):
            assert p[r, i, out[r, i]] > 0, f"row {r} emitted token {int(out[r, i])} of zero target probability"
        assert out[r, :n].tolist() == drafts[r, :n].tolist()


# ----------------------------------------------------------------------------------------------------------
# verify_sampling: the exact law of the emitted tokens, by integration over the uniforms


def _acceptance(impl, p, q, drafts) -> tuple[torch.Tensor, torch.Tensor]:
    """``accept  # [N, g]``: probability that draft position i is accepted given all earlier ones were, and
    ``reject_u  # [N, g]``: a uniform that rejects position i (where ``accept < 1``).

    Earlier positions get u = 0, a sure acceptance whenever acceptance is possible at all; where it is not
    (``accept[:, j] == 0`` for an earlier j) later positions read 0 too, and such rows carry no weight."""
    n, g = drafts.shape
    accept, reject_u = [], []
    for i in range(g):
        def accepted(u, i=i):
            u_accept = torch.zeros(n, g, dtype=torch.float64)
            u_accept[:, i] = u
            _, num_accepted = impl.verify_sampling(p, q, drafts, u_accept, torch.full((n,), 0.5, dtype=torch.float64))
            return num_accepted > i

        lo, hi = threshold(accepted, n)
        accept.append(measure(lo, hi))
        reject_u.append(torch.where(hi < 1, hi, torch.zeros_like(hi)))
    return torch.stack(accept, dim=1), torch.stack(reject_u, dim=1)


def _first_token_law(impl, p1, q1, p2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = 1: the exact law ``# [V]`` of the first emitted token, the draft tokens ``xs`` (q1(x) > 0) and
    their acceptance probabilities."""
    xs = q1.nonzero().squeeze(1)  # [N]
    n = xs.numel()
    p = torch.stack([p1, p2]).expand(n, -1, -1).contiguous()  # [N, 2, V]
    q = q1.expand(n, 1, -1).contiguous()  # [N, 1, V]
    drafts = xs[:, None]
    accept, reject_u = _acceptance(impl, p, q, drafts)
    rejected = emitted_law(impl, p, q, drafts, reject_u, 0, 1 - accept[:, 0])  # [N, V]
    law_first = (q1[xs] * (1 - accept[:, 0])) @ rejected
    law_first = law_first.index_add(0, xs, q1[xs] * accept[:, 0])
    return law_first, xs, accept[:, 0]


@st.composite
def one_step_laws(draw, max_vocab=12):
    vocab = draw(st.integers(2, max_vocab))
    p = draw(probability_vectors(vocab))
    q = p.clone() if draw(st.integers(0, 4)) == 0 else draw(probability_vectors(vocab))  # p == q: empty-residual corner
    # Target at position 1, draft at position 1, target at the bonus position.
    return p, q, draw(probability_vectors(vocab))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(laws=one_step_laws())
def test_verify_sampling_first_token_law_is_exactly_the_target_law(impl, laws):
    """g = 1: every draft token x with q(x) > 0 is a batch row; weight by q(x); the law of the first emitted
    token (accepted draft or recovered token) equals p to 1e-6."""
    p1, q1, p2 = laws
    law_first, xs, accept = _first_token_law(impl, p1, q1, p2)
    torch.testing.assert_close(law_first, p1, atol=1e-6, rtol=0)
    # The acceptance probability is the rule's min(1, p/q): a sanity check of the integration itself.
    torch.testing.assert_close(accept, (p1[xs] / q1[xs]).clamp_max(1), atol=1e-9, rtol=0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(laws=two_step_laws())
def test_verify_sampling_law_of_the_first_two_tokens_is_exactly_the_target_law(impl, laws):
    """g = 2: every draft pair (x1, x2) is a row weighted by q1(x1) q2(x2 | x1). The joint law of the first
    two tokens of the text equals p1(a) p2(b | a) to 1e-6, where a step that emits only one token (rejection
    at position 1) is continued by the target's own law p2(. | a), as the next step would be (its first token
    is exact by the g = 1 test). The bonus token's law is p3."""
    p1, q1, p2, q2, p3 = laws
    vocab = p1.numel()
    pairs = [(a, b) for a in range(vocab) for b in range(vocab) if q1[a] > 0 and q2[a, b] > 0]
    x1 = torch.tensor([a for a, _ in pairs])
    x2 = torch.tensor([b for _, b in pairs])
    n = len(pairs)
    weight = q1[x1] * q2[x1, x2]  # [N]
    drafts = torch.stack([x1, x2], dim=1)
    p = torch.stack([p1.expand(n, -1), p2[x1], p3.expand(n, -1)], dim=1).contiguous()  # [N, 3, V]
    q = torch.stack([q1.expand(n, -1), q2[x1]], dim=1).contiguous()  # [N, 2, V]

    accept, reject_u = _acceptance(impl, p, q, drafts)  # [N, 2]
    torch.testing.assert_close(accept[:, 0], (p1[x1] / q1[x1]).clamp_max(1), atol=1e-9, rtol=0)
    reachable = p1[x1] > 0  # position 2 is only tested after position 1 accepts
    expected_2 = (p2[x1, x2] / q2[x1, x2]).clamp_max(1)
    torch.testing.assert_close(accept[reachable, 1], expected_2[reachable], atol=1e-9, rtol=0)

    w0 = weight * (1 - accept[:, 0])  # rejected at position 1
    w1 = weight * accept[:, 0] * (1 - accept[:, 1])  # accepted 1, rejected 2
    w2 = weight * accept[:, 0] * accept[:, 1]  # accepted both: bonus token
    zeros = torch.zeros(n, dtype=torch.float64)
    r0 = emitted_law(impl, p, q, drafts, torch.stack([reject_u[:, 0], zeros], 1), 0, w0)
    r1 = emitted_law(impl, p, q, drafts, torch.stack([zeros, reject_u[:, 1]], 1), 1, w1)
    bonus = emitted_law(impl, p, q, drafts, torch.stack([zeros, zeros], 1), 2, w2)

    joint = (w0 @ r0)[:, None] * p2  # first token recovered, the second from the next step
    joint = joint.index_put((x1,), w1[:, None] * r1, accumulate=True)  # second token recovered
    joint = joint.index_put((x1, x2), w2, accumulate=True)  # both drafts accepted
    torch.testing.assert_close(joint, p1[:, None] * p2, atol=1e-6, rtol=0)
    for r in (w2 > 0).nonzero().squeeze(1).tolist():
        torch.testing.assert_close(bonus[r], p3, atol=1e-6, rtol=0)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_exact_law_check_rejects_a_wrong_rule(impl):
    """Negative control for the integration machinery: a rule that accepts every draft it can (it verifies
    against q instead of p) does not pass the same check."""

    class AcceptEverything:
        @staticmethod
        def verify_sampling(p, q, drafts, u_accept, u_sample):
            return impl.verify_sampling(p, p[:, :-1].clone(), drafts, u_accept, u_sample)

    p1 = torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64)
    q1 = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    law_right, _, _ = _first_token_law(impl, p1, q1, p1)
    torch.testing.assert_close(law_right, p1, atol=1e-6, rtol=0)
    law_wrong, _, _ = _first_token_law(AcceptEverything, p1, q1, p1)
    torch.testing.assert_close(law_wrong, torch.tensor([0.3, 0.3, 0.4, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Validation errors name the expected and the actual shapes


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_verify_greedy_shape_errors_name_expected_and_actual(impl):
    drafts = torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError) as err:
        impl.verify_greedy(torch.zeros(2, 3, 5), drafts)
    assert "(2, 4, V)" in str(err.value) and "(2, 3, 5)" in str(err.value) and "(2, 3)" in str(err.value)
    with pytest.raises(ValueError) as err:
        impl.verify_greedy(torch.zeros(3, 4, 5), drafts)
    assert "(2, 4, V)" in str(err.value) and "(3, 4, 5)" in str(err.value)
    with pytest.raises(ValueError) as err:
        impl.verify_greedy(torch.zeros(2, 4), drafts)
    assert "(2, 4)" in str(err.value) and "[batch, g+1, vocab]" in str(err.value)
    with pytest.raises(ValueError, match="int64.*int32"):
        impl.verify_greedy(torch.zeros(2, 4, 5), drafts.to(torch.int32))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_verify_sampling_shape_errors_name_expected_and_actual(impl):
    p = torch.full((2, 4, 5), 0.2, dtype=torch.float64)
    drafts = torch.zeros(2, 3, dtype=torch.int64)
    u_accept, u_sample = torch.zeros(2, 3), torch.zeros(2)
    with pytest.raises(ValueError) as err:
        impl.verify_sampling(p, torch.full((2, 4, 5), 0.2), drafts, u_accept, u_sample)
    assert "(2, 3, 5)" in str(err.value) and "(2, 4, 5)" in str(err.value)
    with pytest.raises(ValueError) as err:
        impl.verify_sampling(p, p[:, :3], drafts, torch.zeros(2, 4), u_sample)
    assert "(2, 3)" in str(err.value) and "(2, 4)" in str(err.value)
    with pytest.raises(ValueError) as err:
        impl.verify_sampling(p, p[:, :3], drafts, u_accept, torch.zeros(3))
    assert "(2,)" in str(err.value) and "(3,)" in str(err.value)
    with pytest.raises(ValueError) as err:
        impl.verify_sampling(p[:, :3], p[:, :3], drafts, u_accept, u_sample)
    assert "(2, 4, V)" in str(err.value) and "(2, 3, 5)" in str(err.value)
