"""Draft and target vocabularies of different sizes.

- Sizes that differ by embedding padding (128 vs 160 rows, draft bigger or smaller) work: greedy output is the
  target's own, the draft never proposes an id outside the shared range (even when its extra rows would win
  every argmax) and the target may emit ids of its own padding rows that the draft has no embedding for.
- Sizes more than 128 rows apart raise a ValueError that says "vocab", unless tokenizers prove the shared
  ids mean the same tokens; tokenizers that disagree on a shared id raise for a same-vocabulary ``DraftModel``
  (``SpeculativeDecoding`` then drafts across tokenizers: tests/test_cross_tokenizer.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import decoding
from char_tokenizer import char_tokenizer
from models import greedy_reference, fresh_model, tiny_model, tiny_pair
from strategies import draft_lengths, prompts

SHARED, PADDED = 128, 160


def speculative(target, draft, input_ids, mask, max_new_tokens, g, tokenizers=None, **kwargs):
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, tokenizers=tokenizers)
    with torch.no_grad():
        out = target.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, strategy=strategy,
                              **kwargs)
    return out, strategy.stats


def resized_copy(arch: str, vocab_size: int, new_size: int, prefer_extra: bool):
    """The target ``tiny_model(arch, vocab_size)`` with its embedding and head resized to ``new_size`` rows.

    Ids below ``min(vocab_size, new_size)`` get exactly the target's logits. With ``prefer_extra`` the head
    gets a bias of +1000 on the extra rows, so that without the cut to the shared range every draft would be
    an extra id.
    """
    model = fresh_model(arch, vocab_size=vocab_size)
    model.resize_token_embeddings(new_size, mean_resizing=False)
    head = model.get_output_embeddings()
    linear = torch.nn.Linear(head.in_features, new_size, bias=True, dtype=head.weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.zero_()
        if prefer_extra:
            linear.bias[vocab_size:] = 1e3
    model.set_output_embeddings(linear)
    model.requires_grad_(False)
    return model


def record_target_inputs(target):
    """Record the largest token id the target's embedding receives; returns (list, hook handle)."""
    seen = []
    handle = target.get_input_embeddings().register_forward_pre_hook(lambda module, args: seen.append(int(args[0].max())))
    return seen, handle


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_bigger_draft_whose_extra_rows_win_never_proposes_them(arch):
    """Draft = target (128 ids) + 32 padding rows that would win every argmax: after the cut it is the
    target itself, so every greedy draft is accepted; sampling drafts stay in range too."""
    target = tiny_model(arch, vocab_size=SHARED)
    draft = resized_copy(arch, SHARED, PADDED, prefer_extra=True)
    input_ids = torch.randint(3, SHARED, (5, 6), generator=torch.Generator().manual_seed(1))
    input_ids[:2, :3] = 0
    mask = (input_ids != 0).to(torch.int64)
    with torch.no_grad():
        assert bool((draft(input_ids).logits.argmax(-1) >= SHARED).all()), "the extra rows must win uncut"
    seen, handle = record_target_inputs(target)
    try:
        out, stats = speculative(target, draft, input_ids, mask, 15, 4, do_sample=False)
        assert torch.equal(out, greedy_reference(target, input_ids, mask, 15))
        assert stats.accepted == stats.drafted > 0, "the cut draft is the target: every draft is accepted"
        torch.manual_seed(0)
        out, stats = speculative(target, draft, input_ids, mask, 15, 4, do_sample=True, temperature=1.5)
        assert bool((out < SHARED).all())
        assert 0 < stats.accepted <= stats.drafted
    finally:
        handle.remove()
    assert max(seen) < SHARED


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_smaller_draft_and_a_target_that_emits_its_padding_ids(arch):
    """Target 160 ids, draft = the target cut to 128: the target emits ids >= 128 (drawn from its padding
    range here), which the draft cannot embed; output is still the target's greedy."""
    target = tiny_model(arch, vocab_size=PADDED)
    draft = resized_copy(arch, PADDED, SHARED, prefer_extra=False)
    input_ids = torch.randint(3, SHARED, (6, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    ref = greedy_reference(target, input_ids, mask, 20)
    assert bool((ref[:, 5:] >= SHARED).any()), "the target should emit some ids of its padding range"
    out, stats = speculative(target, draft, input_ids, mask, 20, 3, do_sample=False)
    assert torch.equal(out, ref)
    assert 0 < stats.accepted < stats.drafted
    torch.manual_seed(0)
    out, _ = speculative(target, draft, input_ids, mask, 20, 3, do_sample=True)
    assert out.shape == ref.shape


@pytest.mark.parametrize(("target_size", "draft_size"), [(SHARED, PADDED), (PADDED, SHARED)])
@given(batch=prompts(vocab_size=SHARED), g=draft_lengths(1, 6), max_new_tokens=st.integers(1, 12),
       draft_kind=st.sampled_from(["independent", "resized_copy"]))
def test_padded_vocab_greedy_matches_target(target_size, draft_size, batch, g, max_new_tokens, draft_kind):
    if draft_kind == "independent":
        target, draft = tiny_pair("llama", vocab_size=target_size, draft_vocab_size=draft_size)
    else:
        target = tiny_model("llama", vocab_size=target_size)
        draft = _resized_copies.setdefault((target_size, draft_size), resized_copy("llama", target_size, draft_size,
                                                                                  prefer_extra=True))
    input_ids, mask = batch
    out, stats = speculative(target, draft, input_ids, mask, max_new_tokens, g, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, mask, max_new_tokens))
    assert 0 <= stats.accepted <= stats.drafted
    assert all(0.0 <= a <= 1.0 for a in stats.per_position_acceptance)


_resized_copies: dict = {}


# ----------------------------------------------------------------------------------------------------------
# Incompatible sizes and tokenizers


def test_sizes_128_apart_are_padding():
    target, draft = tiny_pair("llama", vocab_size=96, draft_vocab_size=96 + 128)
    input_ids = torch.tensor([[5, 6, 7]])
    out, _ = speculative(target, draft, input_ids, None, 6, 2, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, None, 6))


@pytest.mark.parametrize(("target_size", "draft_size"), [(96, 96 + 129), (96 + 129, 96), (96, 400)])
def test_sizes_far_apart_raise_without_tokenizers(target_size, draft_size):
    target, draft = tiny_pair("llama", vocab_size=target_size, draft_vocab_size=draft_size)
    with pytest.raises(ValueError, match="vocab") as err:
        speculative(target, draft, torch.tensor([[5, 6, 7]]), None, 4, 2, do_sample=False)
    message = str(err.value)
    assert str(target_size) in message and str(draft_size) in message
    assert "tokenizers=" in message, "the message should say what to do"


def test_far_apart_sizes_with_compatible_tokenizers_work():
    target, draft = tiny_pair("llama", vocab_size=96, draft_vocab_size=300)
    tokenizers = (char_tokenizer(96), char_tokenizer(300))
    input_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = (input_ids != 0).to(torch.int64)
    out, _ = speculative(target, draft, input_ids, mask, 8, 3, tokenizers=tokenizers, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, mask, 8))
    # Disagreement outside the shared ids does not matter.
    tokenizers = (char_tokenizer(96), char_tokenizer(300, swap=(200, 201)))
    out, _ = speculative(target, draft, input_ids, mask, 8, 3, tokenizers=tokenizers, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, mask, 8))


@pytest.mark.parametrize(("target_size", "draft_size"), [(96, 96), (96, 300), (160, 128)])
def test_tokenizers_that_disagree_on_a_shared_id(target_size, draft_size):
    """A same-vocabulary DraftModel refuses them; SpeculativeDecoding drafts across tokenizers instead."""
    target, draft = tiny_pair("llama", vocab_size=target_size, draft_vocab_size=draft_size)
    tokenizers = (char_tokenizer(target_size), char_tokenizer(draft_size, swap=(10, 11)))
    same_vocab = decoding.DraftModel(draft, tokenizers=tokenizers)
    decoding.enable(target)
    with pytest.raises(ValueError, match="vocab") as err:
        target.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False,
                        strategy=decoding.SpeculativeDecoding(same_vocab, num_draft_tokens=2))
    assert "10:" in str(err.value) and "11:" in str(err.value), "the message should name the differing ids"
    input_ids = torch.tensor([[5, 6, 7]])
    out, _ = speculative(target, draft, input_ids, None, 6, 2, tokenizers=tokenizers, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, None, 6))
