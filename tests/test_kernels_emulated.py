"""The CUDA kernels' own source, run on the CPU by the emulator of ``tests/kernel_emulator.py`` through the
same launch code as CuPy (:mod:`decoding.kernels.cupy_backend` with ``launcher=Emulator(...)``), against the
torch reference: ids exactly equal for the same uniforms, over drawn shapes, dtypes and processing, any
block size and any block order; every output element written (buffers poisoned first).

Skipped without g++. What this cannot check (real GPU concurrency, NVRTC, CuPy, libdevice's ``expf``,
speed) is in ``tests/test_kernels_gpu.py``; probabilities are compared to 1e-6 here because the host's
``expf`` and torch's may differ in the last bit.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import decoding
from decoding.kernels import ops as kernels
from decoding.kernels import cupy_backend, reference
from kernel_emulator import Emulator, compiler
from laws import left_pad
from models import tiny_pair
from strategies import kernel_dtypes, kernel_shapes, logit_tensors, processing_settings, seeds

pytestmark = pytest.mark.skipif(compiler() is None, reason="the kernel emulator needs g++ (not found on PATH)")

BLOCKS = st.sampled_from([32, 64, 128])
# The poisoning fixture is stateless (it only wraps torch.empty), so sharing it across examples is fine.
_SUPPRESS = [*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture]


def _verify_case(data, shape, dtype):
    batch, g, vocab = shape
    logits = data.draw(logit_tensors((batch, g + 1, vocab))).to(dtype)
    best = logits.float().argmax(-1)[:, :g]
    agree = torch.tensor(data.draw(st.lists(st.integers(0, g), min_size=batch, max_size=batch)))
    noise = torch.randint(0, vocab, (batch, g), generator=torch.Generator().manual_seed(data.draw(seeds())))
    drafts = torch.where(torch.arange(g) < agree[:, None], best, noise)
    q = torch.softmax(logits[:, :g].float() + data.draw(logit_tensors((batch, g, vocab), ties=False)) * 0.3, -1)
    u = torch.rand(batch, g + 1, generator=torch.Generator().manual_seed(data.draw(seeds())), dtype=torch.float64)
    return logits, drafts, q, u


@settings(max_examples=25, suppress_health_check=_SUPPRESS)
@given(data=st.data(), shape=kernel_shapes(max_batch=6, max_g=5, max_vocab=300, min_g=0), dtype=kernel_dtypes(),
       block=BLOCKS, order=seeds())
def test_verify_kernel_equals_reference(poisoned, data, shape, dtype, block, order):
    logits, drafts, q, u = _verify_case(data, shape, dtype)
    t, k, p = data.draw(processing_settings(shape[2]))
    emulator = Emulator(block, seed=order)
    ids, n = cupy_backend.verify(logits, drafts, q, u, temperature=t, top_k=k, top_p=p, launcher=emulator)
    expected_ids, expected_n = reference.verify(logits, drafts, q, u, temperature=t, top_k=k, top_p=p)
    assert torch.equal(ids, expected_ids) and torch.equal(n, expected_n)
    ids, n = cupy_backend.verify(logits, drafts, launcher=emulator)
    expected_ids, expected_n = reference.verify(logits, drafts)
    assert torch.equal(ids, expected_ids) and torch.equal(n, expected_n)
    assert [name for name, _, _ in emulator.launches] == [f"verify_sample_{cupy_backend.SUFFIX[dtype]}",
                                                          f"verify_greedy_{cupy_backend.SUFFIX[dtype]}"]


@pytest.mark.parametrize(("vocab", "cases"), [(7, 3), (4097, 3), (151936, 1)])
def test_verify_kernel_equals_reference_at_odd_and_large_vocabularies(poisoned, vocab, cases):
    gen = torch.Generator().manual_seed(vocab)
    batch, g = 2, 3
    logits = torch.randn(batch, g + 1, vocab, generator=gen) * 4
    q = torch.softmax(logits[:, :g] + torch.randn(batch, g, vocab, generator=gen), -1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, g)
    for settings_ in [(0.7, 50, 0.9), (1.0, 0, 1.0), (1.3, 0, 0.5)][:cases]:
        for seed in range(cases):
            u = torch.rand(batch, g + 1, generator=gen, dtype=torch.float64)
            kw = dict(temperature=settings_[0], top_k=settings_[1], top_p=settings_[2])
            got = cupy_backend.verify(logits, drafts, q, u, launcher=Emulator(32 if cases == 1 else 128, seed=seed), **kw)
            expected = reference.verify(logits, drafts, q, u, **kw)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]), (settings_, seed)


def test_verify_kernel_empty_residual_falls_back_to_p():
    """p == q exactly and a rejection forced (x has zero target weight): the residual is empty and the
    recovered id is drawn from p, on both sides."""
    logits = torch.tensor([[[2.0, 1.0, 0.0, -9.0], [0.0, 0.0, 0.0, 0.0]]])
    w, z = reference.processed_law(logits[0, :1], top_k=3)
    q = (w.double() / z.double()).float()[None]  # q == p; draft id 3 has p = q = 0
    drafts = torch.tensor([[3]])
    for u in torch.linspace(0, 0.999, 9, dtype=torch.float64):
        us = torch.tensor([[0.5, float(u)]], dtype=torch.float64)
        got = cupy_backend.verify(logits, drafts, q, us, top_k=3, launcher=Emulator(32))
        expected = reference.verify(logits, drafts, q, us, top_k=3)
        assert torch.equal(got[0], expected[0]) and int(got[1]) == 0


@settings(max_examples=20, suppress_health_check=_SUPPRESS)
@given(data=st.data(), rows=st.integers(1, 6), vocab=st.integers(2, 2000), dtype=kernel_dtypes(), block=BLOCKS)
def test_sample_logits_kernel_equals_reference(poisoned, data, rows, vocab, dtype, block):
    logits = data.draw(logit_tensors((rows, vocab))).to(dtype)
    t, k, p = data.draw(processing_settings(vocab))
    u = torch.rand(rows, generator=torch.Generator().manual_seed(data.draw(seeds())), dtype=torch.float64)
    kw = dict(temperature=t, top_k=k, top_p=p)
    ids, probs = cupy_backend.sample_logits(logits, u, launcher=Emulator(block), **kw)
    expected_ids, expected_probs = reference.sample_logits(logits, u, **kw)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(probs, expected_probs, atol=1e-6, rtol=1e-5)
    ids, none = cupy_backend.sample_logits(logits, u, return_probs=False, launcher=Emulator(block), **kw)
    assert torch.equal(ids, expected_ids) and none is None


CONTRASTIVE = st.sampled_from([dict(form="logit", beta=0.5), dict(form="logit", beta=0.0),
                               dict(form="logit", beta=1.0, amateur_temperature=0.5),
                               dict(form="logprob", amateur_temperature=0.5), dict(form="logprob")])


@settings(max_examples=20, suppress_health_check=_SUPPRESS)
@given(data=st.data(), rows=st.integers(1, 5), vocab=st.integers(2, 9000), dtype=kernel_dtypes(), block=BLOCKS,
       cd=CONTRASTIVE, alpha=st.sampled_from([0.1, 0.01, 1.0]))
def test_contrastive_kernels_equal_reference(poisoned, data, rows, vocab, dtype, block, cd, alpha):
    expert = data.draw(logit_tensors((rows, vocab))).to(dtype)
    amateur = data.draw(logit_tensors((rows, vocab))).to(dtype)
    emulator = Emulator(block, seed=data.draw(seeds()))
    kw = dict(alpha=alpha, **cd)
    scores = cupy_backend.contrastive_scores(expert, amateur, launcher=emulator, **kw)
    expected = reference.contrastive_scores(expert, amateur, **kw)
    assert torch.equal(torch.isinf(scores), torch.isinf(expected))
    if cd["form"] == "logit":
        assert torch.equal(scores, expected)
    else:  # log-softmax normalisers are float sums in another order
        torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)
    ids = cupy_backend.contrastive_choose(expert, amateur, launcher=emulator, **kw)
    assert torch.equal(ids, reference.contrastive_choose(expert, amateur, **kw))
    t, k, p = data.draw(processing_settings(vocab))
    u = torch.rand(rows, generator=torch.Generator().manual_seed(data.draw(seeds())), dtype=torch.float64)
    kw |= dict(temperature=t, top_k=k, top_p=p)
    ids = cupy_backend.contrastive_choose(expert, amateur, u, launcher=emulator, **kw)
    assert torch.equal(ids, reference.contrastive_choose(expert, amateur, u, **kw))


def test_launch_size_must_match_the_compiled_launch_bounds():
    logits, drafts = torch.zeros(1, 2, 5), torch.zeros(1, 1, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"threads=256 .*__launch_bounds__\(64\)"):
        cupy_backend.verify(logits, drafts, threads=256, launcher=Emulator(64))
    cupy_backend.verify(logits, drafts, threads=64, launcher=Emulator(64))


# ----------------------------------------------------------------------------------------------------------
# End to end: generation with the (emulated) kernels equals generation with the reference


class EmulatedKernels:
    """Stands in for the cupy backend module, running every fused entry point on the emulator."""

    def __init__(self, emulator):
        self.emulator = emulator

    def __getattr__(self, name):
        function = getattr(cupy_backend, name)
        return lambda *args, **kwargs: function(*args, launcher=self.emulator, **kwargs)


@functools.lru_cache(maxsize=None)
def _float32_pair():
    """The kernels read float32/16-bit logits (float64 falls back to the reference): float32 copies."""
    target, draft = tiny_pair("llama", vocab_size=48, draft_kind="noisy_copy", noise=0.2)
    return copy.deepcopy(target).float(), copy.deepcopy(draft).float()


def _generate(strategy, settings_, backend, monkeypatch):
    target, draft = _float32_pair()
    ids, mask = left_pad([[5, 7, 3], [9, 4, 6, 8, 10], [11, 12]])
    decoding.enable(target)
    emulator = Emulator(32, seed=1)
    with monkeypatch.context() as m:
        if backend == "emulated":
            emulated = EmulatedKernels(emulator)
            m.setattr(kernels, "_backend", lambda tensor: emulated)
        torch.manual_seed(7)
        with kernels.use_backend("torch"), torch.no_grad():
            out = target.generate(ids, attention_mask=mask, max_new_tokens=6, strategy=strategy(draft), **settings_)
    return out, [name for name, _, _ in emulator.launches]


STRATEGIES = {
    "speculative": lambda draft: decoding.SpeculativeDecoding(draft, num_draft_tokens=3),
    "contrastive": lambda draft: decoding.ContrastiveDecoding(draft, alpha=0.1, beta=0.5),
    "speculative-contrastive": lambda draft: decoding.SpeculativeContrastiveDecoding(draft, num_draft_tokens=2),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("settings_", [dict(do_sample=False), dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)],
                         ids=["greedy", "sampling"])
def test_generation_with_emulated_kernels_equals_generation_with_the_reference(name, settings_, monkeypatch):
    with_kernels, launched = _generate(STRATEGIES[name], settings_, "emulated", monkeypatch)
    with_reference, none = _generate(STRATEGIES[name], settings_, "reference", monkeypatch)
    assert torch.equal(with_kernels, with_reference)
    assert launched and not none
    if name != "contrastive":
        assert any(n.startswith("verify_") for n in launched)
    if settings_["do_sample"] and name != "contrastive":
        assert any(n.startswith("sample_logits_") for n in launched)
