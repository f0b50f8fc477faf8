"""Backend choice of the kernel entry points (:mod:`decoding.kernels.dispatch`): ``auto`` falls back to the
torch reference cleanly without CuPy or CUDA, ``torch`` forced works everywhere, ``cupy`` forced where it
cannot run raises a clear error, the environment variable and the context manager set it, and strategies
take the fused route exactly when the setting and their processors allow it."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

import decoding
from decoding.kernels import ops as kernels
from decoding.kernels import dispatch, reference
from laws import left_pad
from models import tiny_pair


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy made unimportable (as on a machine without the ``cuda`` extra), whatever is installed."""
    monkeypatch.setitem(sys.modules, "cupy", None)
    dispatch.cupy_status.cache_clear()
    yield
    dispatch.cupy_status.cache_clear()


def test_default_setting_is_auto(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.setting() == "auto"


@pytest.mark.parametrize("value", ["torch", "cupy", "auto", " Torch "])
def test_environment_variable_sets_the_backend(monkeypatch, value):
    monkeypatch.setenv(dispatch.ENV_VAR, value)
    assert dispatch.setting() == value.strip().lower()


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    with pytest.raises(ValueError, match="DECODING_KERNELS must be one of auto, torch, cupy, got 'triton'"):
        dispatch.setting()


def test_context_manager_wins_over_the_environment_nests_and_restores(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "cupy")
    with kernels.use_backend("torch"):
        assert dispatch.setting() == "torch"
        with kernels.use_backend("auto"):
            assert dispatch.setting() == "auto"
        assert dispatch.setting() == "torch"
    assert dispatch.setting() == "cupy"
    with pytest.raises(ValueError, match="one of auto, torch, cupy, got 'gpu'"):
        with kernels.use_backend("gpu"):
            pass


def test_the_context_is_per_thread(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    seen = []
    with kernels.use_backend("torch"):
        thread = threading.Thread(target=lambda: seen.append(dispatch.setting()))
        thread.start()
        thread.join()
    assert seen == ["auto"]


@pytest.mark.parametrize(("setting", "device", "dtype", "cupy_ok", "expected"), [
    ("auto", "cuda", torch.float32, True, "cupy"),
    ("auto", "cuda", torch.bfloat16, True, "cupy"),
    ("auto", "cuda", torch.float64, True, "torch"),
    ("auto", "cpu", torch.float32, True, "torch"),
    ("auto", "cuda", torch.float16, False, "torch"),
    ("torch", "cuda", torch.float32, True, "torch"),
    ("cupy", "cuda", torch.float16, True, "cupy"),
])
def test_resolve(setting, device, dtype, cupy_ok, expected):
    assert dispatch.resolve(setting, device, dtype, cupy_ok) == expected


def test_forcing_cupy_where_it_cannot_run_names_the_reason():
    with pytest.raises(RuntimeError, match="'cupy' was requested, but CuPy is not installed"):
        dispatch.resolve("cupy", "cuda", torch.float32, False, "CuPy is not installed")
    with pytest.raises(RuntimeError, match="needs CUDA tensors, got tensors on 'cpu'"):
        dispatch.resolve("cupy", "cpu", torch.float32, True)
    with pytest.raises(TypeError, match="float32, float16 and bfloat16 logits, got torch.float64"):
        dispatch.resolve("cupy", "cuda", torch.float64, True)


def test_without_cupy_status_says_why_and_names_the_extra(no_cupy):
    ok, reason = dispatch.cupy_status()
    assert not ok and "CuPy is not installed" in reason and "pairdecode[cuda]" in reason


def _inputs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=gen)
    drafts = torch.randint(0, 11, (2, 2), generator=gen)
    q = torch.softmax(torch.randn(2, 2, 11, generator=gen), -1)
    return logits, drafts, q, torch.rand(2, 3, generator=gen)


def test_entry_points_fall_back_to_the_reference_without_cupy(no_cupy, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    logits, drafts, q, u = _inputs()
    for setting in ("auto", "torch"):
        with kernels.use_backend(setting):
            got = kernels.verify(logits, drafts, q, u, top_k=5)
            assert all(torch.equal(a, b) for a, b in zip(got, reference.verify(logits, drafts, q, u, top_k=5)))
            ids, probs = kernels.sample_logits(logits[:, 0], u[:, 0], top_p=0.5)
            assert torch.equal(ids, reference.sample_logits(logits[:, 0], u[:, 0], top_p=0.5)[0])
            assert torch.equal(kernels.contrastive_choose(logits[:, 0], logits[:, 1]),
                               reference.contrastive_choose(logits[:, 0], logits[:, 1]))


def test_forcing_cupy_without_cupy_raises_at_the_entry_point(no_cupy):
    logits, drafts, q, u = _inputs()
    with kernels.use_backend("cupy"):
        with pytest.raises(RuntimeError, match="CuPy is not installed"):
            kernels.verify(logits, drafts, q, u)
        with pytest.raises(RuntimeError, match="CuPy is not installed"):
            kernels.contrastive_scores(logits[:, 0], logits[:, 1])


def test_forcing_cupy_with_cpu_tensors_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "cupy_status", lambda: (True, ""))
    logits, drafts, q, u = _inputs()
    with kernels.use_backend("cupy"), pytest.raises(RuntimeError, match="needs CUDA tensors"):
        kernels.verify(logits, drafts, q, u)


def test_auto_never_imports_cupy_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)

    def fail():
        raise AssertionError("cupy_status was consulted for CPU tensors")

    monkeypatch.setattr(dispatch, "cupy_status", fail)
    assert dispatch.backend_for(torch.zeros(1)) == "torch"
    assert not dispatch.fused_route(torch.device("cpu"))


def test_fused_route_setting(no_cupy, monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert not kernels.fused_route(torch.device("cpu"))
    assert not kernels.fused_route(torch.device("cuda"))  # auto without CuPy: the general path
    with kernels.use_backend("torch"):
        assert kernels.fused_route(torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# Which route strategies take


def _count_calls(monkeypatch):
    calls = {"verify": 0, "verify_sampling": 0, "sample_logits": 0, "contrastive_choose": 0}
    for name in calls:
        real = getattr(kernels, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, counted)
    return calls


def _run(strategy, backend, **settings):
    target, draft = tiny_pair("llama", vocab_size=24, draft_kind="noisy_copy", noise=0.2)
    decoding.enable(target)
    ids, mask = left_pad([[5, 7, 3], [9, 4, 6, 8]])
    torch.manual_seed(0)
    with kernels.use_backend(backend), torch.no_grad():
        return target.generate(ids, attention_mask=mask, max_new_tokens=4, strategy=strategy(draft), **settings)


SAMPLING = dict(do_sample=True, temperature=0.9, top_k=8, top_p=0.95)


def test_speculative_takes_the_fused_route_only_when_forced_on_cpu(monkeypatch):
    calls = _count_calls(monkeypatch)
    _run(lambda d: decoding.SpeculativeDecoding(d, num_draft_tokens=2), "auto", **SAMPLING)
    assert calls["verify"] == 0 and calls["verify_sampling"] > 0 and calls["sample_logits"] == 0
    _run(lambda d: decoding.SpeculativeDecoding(d, num_draft_tokens=2), "torch", **SAMPLING)
    assert calls["verify"] > 0 and calls["sample_logits"] > 0


@pytest.mark.parametrize("settings", [dict(SAMPLING, output_scores=True, return_dict_in_generate=True),
                                      dict(SAMPLING, repetition_penalty=1.3), dict(SAMPLING, min_p=0.1),
                                      dict(do_sample=False, repetition_penalty=1.3)],
                         ids=["scores-kept", "repetition-penalty", "min-p", "greedy-with-processor"])
def test_other_processors_or_kept_scores_keep_the_general_route(monkeypatch, settings):
    calls = _count_calls(monkeypatch)
    _run(lambda d: decoding.SpeculativeDecoding(d, num_draft_tokens=2), "torch", **settings)
    _run(lambda d: decoding.ContrastiveDecoding(d), "torch", **settings)
    assert calls["verify"] == calls["sample_logits"] == calls["contrastive_choose"] == 0


def test_contrastive_takes_the_fused_route_when_forced(monkeypatch):
    calls = _count_calls(monkeypatch)
    _run(lambda d: decoding.ContrastiveDecoding(d), "auto", **SAMPLING)
    assert calls["contrastive_choose"] == 0
    _run(lambda d: decoding.ContrastiveDecoding(d), "torch", **SAMPLING)
    _run(lambda d: decoding.ContrastiveDecoding(d), "torch", do_sample=False)
    assert calls["contrastive_choose"] == 8  # 4 tokens, sampled and greedy
