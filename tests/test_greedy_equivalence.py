"""Greedy speculative decoding is exact: token for token, per row, the target's own greedy ``generate``.

Properties, for drawn left-padded prompt batches (batch 1-8), draft lengths 1-8 and ``max_new_tokens`` 1-12, on
Llama, GPT-2, Qwen2, OPT and GPT-NeoX shapes, with independent, noisy-copy and self drafts:

- the output tensor (shape and every token) equals plain transformers' greedy ``generate`` with the same
  arguments, without and with EOS ids (rows stop independently and are padded with ``pad_token_id``);
- acceptance statistics are consistent with each other and with the tokens emitted;
- a draft identical to the target has every draft accepted, and steps are exactly ``ceil(N / (g + 1))``;
- the ``custom_generate=strategy`` path (no ``decoding.enable``) gives the same tokens.

All models are float64 so that argmax ties between matmul shapes cannot make an exact implementation flaky.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import decoding
from laws import assert_same_tokens, check_stats, generated_lengths
from models import ARCHS, DRAFT_KINDS, EOS_ID, PAD_ID, fresh_model, greedy_reference, tiny_pair
from strategies import draft_lengths, eos_choices, new_token_counts, prompts


def speculative(target, draft, input_ids, attention_mask, max_new_tokens, g, **kwargs):
    """Greedy speculative ``generate`` through ``decoding.enable``; returns ``(output, stats)``."""
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
    with torch.no_grad():
        out = target.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            strategy=strategy, **kwargs,
        )
    return out, strategy.stats


@pytest.mark.parametrize("draft_kind", DRAFT_KINDS)
@pytest.mark.parametrize("arch", ARCHS)
@given(batch=prompts(), g=draft_lengths(), max_new_tokens=new_token_counts())
def test_greedy_matches_target(arch, draft_kind, batch, g, max_new_tokens):
    target, draft = tiny_pair(arch, draft_kind=draft_kind)
    input_ids, mask = batch
    ref = greedy_reference(target, input_ids, mask, max_new_tokens)
    out, stats = speculative(target, draft, input_ids, mask, max_new_tokens, g)
    assert_same_tokens(out, ref)
    assert out.shape[1] == input_ids.shape[1] + max_new_tokens
    b = input_ids.shape[0]
    check_stats(stats, b, g, [max_new_tokens] * b, exact_count=(b == 1))
    note(f"acceptance {stats.acceptance_rate:.3f}, steps {stats.steps}")
    if draft_kind == "self":
        assert stats.acceptance_rate == 1.0 or stats.drafted == 0
        assert stats.accepted == stats.drafted
        assert all(r == 1.0 for r in stats.per_position_acceptance)
        # Every step emits g + 1 tokens until fewer remain, in every row alike.
        assert stats.steps == b * math.ceil(max_new_tokens / (g + 1))


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    draft_kind=st.sampled_from(DRAFT_KINDS),
    batch=prompts(),
    g=draft_lengths(),
    max_new_tokens=new_token_counts(2, 12),
)
def test_greedy_matches_target_with_eos(arch, data, draft_kind, batch, g, max_new_tokens):
    target, draft = tiny_pair(arch, draft_kind=draft_kind)
    input_ids, mask = batch
    prompt_length = input_ids.shape[1]
    # EOS ids the target really produces, so that rows stop early (and at different steps).
    continuation = greedy_reference(target, input_ids, mask, max_new_tokens)[:, prompt_length:]
    eos = data.draw(eos_choices(continuation.flatten().tolist(), absent=EOS_ID), label="eos_token_id")
    ref = greedy_reference(target, input_ids, mask, max_new_tokens, eos_token_id=eos)
    out, stats = speculative(target, draft, input_ids, mask, max_new_tokens, g, eos_token_id=eos)
    assert_same_tokens(out, ref)

    lengths = generated_lengths(out, prompt_length, eos)
    assert min(lengths) < max_new_tokens or any(
        t in ([eos] if isinstance(eos, int) else eos) for t in out[:, -1].tolist()
    ), "the drawn EOS never stopped a row: the test does not exercise early stopping"
    for row, length in enumerate(lengths):
        assert (out[row, prompt_length + length :] == PAD_ID).all(), f"row {row} is not padded after its EOS"
    check_stats(stats, input_ids.shape[0], g, lengths, exact_count=False)
    if draft_kind == "self":
        assert stats.accepted == stats.drafted


# Models on which decoding.enable was never called, for the custom_generate= path.
_plain_targets = {}


def _plain_target(arch):
    if arch not in _plain_targets:
        _plain_targets[arch] = fresh_model(arch)
    return _plain_targets[arch]


@pytest.mark.parametrize("arch", ARCHS)
@given(
    draft_kind=st.sampled_from(DRAFT_KINDS[:2]),
    batch=prompts(),
    g=draft_lengths(),
    max_new_tokens=new_token_counts(),
    with_eos=st.booleans(),
)
def test_custom_generate_path(arch, draft_kind, batch, g, max_new_tokens, with_eos):
    target = _plain_target(arch)
    assert not decoding.api.is_enabled(target)
    _, draft = tiny_pair(arch, draft_kind=draft_kind)
    input_ids, mask = batch
    kwargs = {}
    if with_eos:
        continuation = greedy_reference(target, input_ids, mask, max_new_tokens)
        kwargs["eos_token_id"] = int(continuation[0, -1])
    ref = greedy_reference(target, input_ids, mask, max_new_tokens, **kwargs)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
    with torch.no_grad():
        out = target.generate(
            input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            custom_generate=strategy, **kwargs,
        )
    assert_same_tokens(out, ref)
    lengths = generated_lengths(out, input_ids.shape[1], kwargs.get("eos_token_id"))
    check_stats(strategy.stats, input_ids.shape[0], g, lengths, exact_count=not with_eos and input_ids.shape[0] == 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_noisy_copy_accepts_long_runs(arch):
    """Fixed prompts: a noisy copy of the target gets long accepted runs, an independent draft almost none.

    (Properties of the seeded fixtures, checked so that the tests above really cover both regimes, and
    checked against the emitted-token count.)
    """
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 96, (8, 6), generator=generator)
    mask = torch.ones_like(input_ids)
    rates = {}
    for kind in ("independent", "noisy_copy"):
        target, draft = tiny_pair(arch, draft_kind=kind)
        out, stats = speculative(target, draft, input_ids, mask, 24, 4)
        assert_same_tokens(out, greedy_reference(target, input_ids, mask, 24))
        check_stats(stats, 8, 4, [24] * 8, exact_count=False)
        rates[kind] = stats
    assert rates["noisy_copy"].acceptance_rate >= 0.4
    assert rates["noisy_copy"].mean_accepted_length >= 2.5
    assert rates["independent"].acceptance_rate <= 0.1
