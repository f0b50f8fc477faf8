"""Prompt lookup first, a draft head elsewhere (``decoding.LookupFirst``): lossless whatever the head and wherever
the lookup matches (greedy output equal to the target's own, sampling law by chi-square against exact enumeration),
each row's drafts are its lookup's where it matched and its head's elsewhere, and a draft model is refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import decoding
from decoding.proposers import Proposal
from decoding.proposers import lookup_first
from decoding.proposers.prompt_lookup import lookup
from laws import assert_follows_target_law, left_pad, speculative_samples
from models import greedy_reference, tiny_head, tiny_model
from strategies import draft_lengths, prompts

LAYERS = 4


def target_and_head(vocab: int = 96, draft_vocab: int | None = 40):
    target = tiny_model("llama", vocab_size=vocab, num_layers=LAYERS).to(torch.float64)
    return target, tiny_head(target, draft_vocab)


class Spy:
    """Records every step's rows that copied and the merged drafts, checking each copied row's drafts against
    :func:`lookup` run independently on the same committed text."""

    def __init__(self, patch, min_ngram: int):
        self.copied = self.drafted = 0
        self.min_ngram, real = min_ngram, lookup_first.LookupFirstDrafter.propose

        def propose(drafter, run, sampler, k, length):
            rows = run.rows
            expected = lookup(run.sequences.tokens, run.sequences.lengths[rows], drafter.lookup.pads[rows], rows, k,
                              3, self.min_ngram)  # [b, k]
            proposal = real(drafter, run, sampler, k, length)
            matched = expected[:, 0] >= 0 if k else torch.zeros(rows.numel(), dtype=torch.bool)
            for row in matched.nonzero().flatten().tolist():
                got = proposal.ids[row]
                assert torch.equal(got[got >= 0], expected[row][expected[row] >= 0])
            self.copied += int(matched.sum())
            self.drafted += int(((proposal.ids >= 0).any(dim=1) & ~matched).sum())
            return proposal

        patch.setattr(lookup_first.LookupFirstDrafter, "propose", propose)


@settings(max_examples=25, deadline=None)
@given(batch=prompts(max_length=10), g=draft_lengths(1, 4), min_ngram=st.integers(1, 2),
       head_tokens=st.none() | st.integers(1, 3))
def test_greedy_output_is_the_targets_own_and_each_row_copies_only_where_lookup_matches(batch, g, min_ngram,
                                                                                      head_tokens):
    target, head = target_and_head()
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(decoding.LookupFirst(head, min_ngram=min_ngram, head_tokens=head_tokens),
                                            num_draft_tokens=g)
    with pytest.MonkeyPatch.context() as patch:
        Spy(patch, min_ngram)
        out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 12))


def test_rows_copy_where_their_text_repeats_and_the_head_drafts_elsewhere():
    target, head = target_and_head()
    ids, mask = left_pad([[5, 9, 14, 5, 9, 14, 5, 9], [3, 7, 11, 4, 8, 20, 21, 30]])
    decoding.enable(target)
    with pytest.MonkeyPatch.context() as patch:
        spy = Spy(patch, 2)
        out = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                              strategy=decoding.SpeculativeDecoding(decoding.LookupFirst(head), num_draft_tokens=3))
    assert torch.equal(out, greedy_reference(target, ids, mask, 16))
    assert spy.copied > 0 and spy.drafted > 0


@pytest.mark.parametrize("options", [dict(num_draft_tokens="auto"), dict(num_draft_tokens=3, verification="block")])
def test_auto_length_and_block_verification_stay_exact(options):
    target, head = target_and_head()
    ids, mask = left_pad([[5, 9, 14, 5, 9], [3, 7, 11, 4, 8], [20, 21]])
    decoding.enable(target)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          strategy=decoding.SpeculativeDecoding(decoding.LookupFirst(head, min_ngram=1), **options))
    assert torch.equal(out, greedy_reference(target, ids, mask, 12))


def test_sampling_follows_the_targets_law(monkeypatch):
    """Both sources draft (single repeated tokens match: ``min_ngram=1``); chi-square of the first token, the first
    pair and the third token against the target's exact law; the head's vocabulary is 5 of the 12 ids."""
    target, head = target_and_head(vocab=12, draft_vocab=5)
    spy = Spy(monkeypatch, 1)
    options = dict(temperature=0.9)
    tokens, stats = speculative_samples(target, decoding.LookupFirst(head, min_ngram=1), options, seed=7)
    assert stats.accepted > 0 and spy.copied > 100 and spy.drafted > 100
    assert_follows_target_law(tokens, target, options)


def test_merging_takes_each_rows_drafts_laws_and_confidence_from_its_source():
    copied = Proposal(ids=torch.tensor([[4, 5, -1], [-1, -1, -1]]),
                      probs=torch.nn.functional.one_hot(torch.tensor([[4, 5, 0], [0, 0, 0]]), 6).float()
                      * torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])[..., None])
    head_law = torch.softmax(torch.randn(2, 1, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    drafted = Proposal(ids=torch.tensor([[1], [2]]), probs=head_law, confidence=torch.tensor([[0.3], [0.6]]))
    merged = lookup_first.merge(copied, drafted, torch.tensor([True, False]), vocab=6)
    assert merged.ids.tolist() == [[4, 5, -1], [2, -1, -1]]
    assert torch.equal(merged.probs[0], copied.probs[0])
    assert torch.equal(merged.probs[1, 0], head_law[1, 0]) and not merged.probs[1, 1:].any()
    assert merged.confidence.tolist() == [[1.0, 1.0, 0.0], pytest.approx([0.6, 0.0, 0.0])]
    assert lookup_first.merge(copied, drafted, torch.tensor([True, False]), vocab=None).probs is None


def test_a_draft_model_or_a_bad_head_length_is_refused():
    target = tiny_model("llama", vocab_size=96, num_layers=2)
    with pytest.raises(TypeError, match="a draft model's cache keeps its own accepted drafts"):
        decoding.LookupFirst(target)
    with pytest.raises(ValueError, match="head_tokens"):
        decoding.LookupFirst(tiny_head(target), head_tokens=0)
