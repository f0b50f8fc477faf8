"""The CuPy kernels on a real GPU (marked ``gpu``; skipped, with the reason, without CUDA and CuPy):

- kernel output ids equal the torch reference's exactly for the same uniforms, over hypothesis-drawn shapes
  (B 1-64, g 1-8, V 7-151936), temperatures, top-k / top-p and dtypes (float32, float16, bfloat16), the
  reference running on the same GPU (so both use libdevice's ``expf``);
- every output element is written (buffers poisoned first);
- the sampled law matches the target law statistically (chi-square);
- generation with the kernels equals generation with the reference, end to end;
- no host synchronisation inside the kernel entry points (they run under a CUDA-graph capture).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decoding
from decoding.kernels import ops as kernels
from decoding.kernels import cupy_backend, dispatch, reference
from laws import chi_square_pvalue, left_pad
from models import tiny_pair

_ok, _reason = (torch.cuda.is_available(), "no CUDA device") if not torch.cuda.is_available() else dispatch.cupy_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _ok, reason=f"GPU kernel tests need CUDA and CuPy: {_reason}")]

DEVICE = "cuda"
VOCABS = st.one_of(st.integers(7, 300), st.sampled_from([4097, 32000, 50257, 128256, 151936]))
DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
GPU_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def processing(draw, vocab):
    temperature = draw(st.sampled_from([1.0, 0.7, 1.3, 0.25]))
    top_k = draw(st.sampled_from([0, 1, 5, 50, vocab - 1, vocab]))
    top_p = draw(st.sampled_from([1.0, 0.9, 0.5, 0.05, 0.0]))
    return temperature, max(top_k, 0), top_p


def _case(seed, batch, g, vocab, dtype):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = (torch.randn(batch, g + 1, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    q = torch.softmax(logits[:, :g].float() + torch.randn(batch, g, vocab, device=DEVICE, generator=gen), -1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, g)
    u = torch.rand(batch, g + 1, device=DEVICE, generator=gen, dtype=torch.float64)
    return logits, drafts, q, u


@GPU_SETTINGS
@given(data=st.data(), batch=st.integers(1, 64), g=st.integers(1, 8), vocab=VOCABS, dtype=DTYPES,
       seed=st.integers(0, 2**31 - 1))
def test_verify_ids_equal_the_reference(poisoned, data, batch, g, vocab, dtype, seed):
    logits, drafts, q, u = _case(seed, batch, g, vocab, dtype)
    t, k, p = data.draw(processing(vocab))
    got = cupy_backend.verify(logits, drafts, q, u, temperature=t, top_k=k, top_p=p)
    expected = reference.verify(logits, drafts, q, u, temperature=t, top_k=k, top_p=p)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    got = cupy_backend.verify(logits, drafts)
    expected = reference.verify(logits, drafts)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@GPU_SETTINGS
@given(data=st.data(), rows=st.integers(1, 64), vocab=VOCABS, dtype=DTYPES, seed=st.integers(0, 2**31 - 1))
def test_sample_logits_equals_the_reference(poisoned, data, rows, vocab, dtype, seed):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    logits = (torch.randn(rows, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    u = torch.rand(rows, device=DEVICE, generator=gen, dtype=torch.float64)
    t, k, p = data.draw(processing(vocab))
    ids, probs = cupy_backend.sample_logits(logits, u, temperature=t, top_k=k, top_p=p)
    expected_ids, expected_probs = reference.sample_logits(logits, u, temperature=t, top_k=k, top_p=p)
    assert torch.equal(ids, expected_ids)
    assert torch.equal(probs, expected_probs)  # same device, same expf: bit for bit


@GPU_SETTINGS
@given(data=st.data(), rows=st.integers(1, 64), vocab=VOCABS, dtype=DTYPES, seed=st.integers(0, 2**31 - 1),
       cd=st.sampled_from([dict(form="logit", beta=0.5), dict(form="logit", beta=0.0),
                           dict(form="logprob", amateur_temperature=0.5)]))
def test_contrastive_kernels_equal_the_reference(poisoned, data, rows, vocab, dtype, seed, cd):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    expert = (torch.randn(rows, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    amateur = (torch.randn(rows, vocab, device=DEVICE, generator=gen) * 3).to(dtype)
    u = torch.rand(rows, device=DEVICE, generator=gen, dtype=torch.float64)
    kw = dict(alpha=0.1, **cd)
    scores = cupy_backend.contrastive_scores(expert, amateur, **kw)
    expected = reference.contrastive_scores(expert, amateur, **kw)
    if cd["form"] == "logit":
        assert torch.equal(scores, expected)
    else:
        torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(cupy_backend.contrastive_choose(expert, amateur, **kw),
                       reference.contrastive_choose(expert, amateur, **kw))
    t, k, p = data.draw(processing(vocab))
    kw |= dict(temperature=t, top_k=k, top_p=p)
    assert torch.equal(cupy_backend.contrastive_choose(expert, amateur, u, **kw),
                       reference.contrastive_choose(expert, amateur, u, **kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_verify_law_matches_the_target_law(dtype):
    """g = 1, one row repeated 200k times: the first emitted token's counts pass a chi-square test against
    the processed target law p (and fail against the draft law q)."""
    vocab, rows = 50, 200_000
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    logits = (torch.randn(1, 2, vocab, device=DEVICE, generator=gen) * 2).to(dtype)
    q = torch.softmax(torch.randn(1, 1, vocab, device=DEVICE, generator=gen), -1)
    drafts = torch.multinomial(q[0].expand(rows, -1), 1, replacement=True, generator=gen)
    u = torch.rand(rows, 2, device=DEVICE, generator=gen, dtype=torch.float64)
    settings_ = dict(temperature=0.8, top_k=30, top_p=0.9)
    ids, _ = cupy_backend.verify(logits.expand(rows, -1, -1).contiguous(), drafts, q.expand(rows, -1, -1).contiguous(),
                                 u, **settings_)
    w, z = reference.processed_law(reference.scaled_scores(logits[0, :1], 0.8), 30, 0.9)
    p = (w.double() / z.double()[:, None])[0].cpu()
    observed = torch.bincount(ids[:, 0].cpu(), minlength=vocab)
    assert chi_square_pvalue(observed, p) > 1e-5
    assert chi_square_pvalue(observed, q[0, 0].double().cpu()) < 1e-9


@pytest.mark.parametrize("name", ["speculative", "contrastive", "speculative-contrastive"])
@pytest.mark.parametrize("sampling", [False, True], ids=["greedy", "sampling"])
def test_generation_with_kernels_equals_generation_with_the_reference(name, sampling):
    target, draft = tiny_pair("llama", vocab_size=1000, draft_kind="noisy_copy", noise=0.2)
    target, draft = copy.deepcopy(target).float().to(DEVICE), copy.deepcopy(draft).float().to(DEVICE)
    decoding.enable(target)
    ids, mask = left_pad([[5, 7, 3], [9, 4, 6, 8, 10], [11, 12]])
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    make = {"speculative": lambda: decoding.SpeculativeDecoding(draft, num_draft_tokens=4),
            "contrastive": lambda: decoding.ContrastiveDecoding(draft),
            "speculative-contrastive": lambda: decoding.SpeculativeContrastiveDecoding(draft, num_draft_tokens=3)}[name]
    settings_ = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9) if sampling else dict(do_sample=False)
    outs = []
    for backend in ("cupy", "torch"):
        torch.manual_seed(3)
        with kernels.use_backend(backend), torch.no_grad():
            outs.append(target.generate(ids, attention_mask=mask, max_new_tokens=24, strategy=make(), **settings_))
    assert torch.equal(outs[0], outs[1])


def test_kernel_entry_points_do_not_synchronise_the_host():
    """They capture into a CUDA graph (which raises on any synchronising call), and replay equal."""
    logits, drafts, q, u = _case(0, 8, 4, 32000, torch.bfloat16)
    cupy_backend.verify(logits, drafts, q, u, top_k=50, top_p=0.9)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        out, n = cupy_backend.verify(logits, drafts, q, u, top_k=50, top_p=0.9)
    graph.replay()
    torch.cuda.synchronize()
    expected = reference.verify(logits, drafts, q, u, top_k=50, top_p=0.9)
    assert torch.equal(out, expected[0]) and torch.equal(n, expected[1])
