"""Speculative decoding with a draft of another tokenizer (:mod:`decoding.proposers.cross_tokenizer`).

The tokenizers are two BPE tokenizers built in memory (``tests/cross_tokenizers.py``): they order their tokens
differently, and each has pairs and triples the other lacks, so the same text is often split differently.

- Greedy output equals the target's own greedy ``generate`` in both modes (string-level and TLI), for random
  left-padded batches, draft lengths and two drafts (one built from the target's weights, one independent), with
  an EOS that really stops rows.
- A draft that is the target itself under other token ids has almost every draft accepted.
- TLI's proposal law is the draft's softmax restricted to the shared tokens, renormalized, at the target's ids
  (checked by hand), and one step's output law, by exact enumeration of the verification, is the target's.
- End to end, sampling in both modes passes chi-square tests against the target's exact law of three tokens.
- The draft's cache is reused: only the first forward reads the prompt, later ones read a few new tokens.
- Tokenizers that cannot work together fail before any forward pass with a clear error.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import decoding
from decoding.proposers import CrossTokenizerDraft
from cross_tokenizers import (DRAFT_PIECES, SMALL_DRAFT_PIECES, SMALL_TARGET_PIECES, TARGET_PIECES, bpe_tokenizer,
                                    draft_tokenizer, mapped_draft, target_tokenizer)
from laws import chi_square_pvalue, left_pad
from models import greedy_reference, tiny_model
from strategies import cross_tokenizer_modes, draft_lengths, new_token_counts, prompts

V_TARGET = len(TARGET_PIECES)


def drafts(kind: str):
    if kind == "independent":
        return tiny_model("llama", vocab_size=len(DRAFT_PIECES), seed=1000, num_layers=1)
    return mapped_draft(kind)


def speculative(target, draft, input_ids, mask, max_new_tokens, g, mode="auto", tokenizers=None, **kwargs):
    decoding.enable(target)
    tokenizers = tokenizers or (target_tokenizer(), draft_tokenizer())
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, tokenizers=tokenizers, cross_tokenizer=mode)
    assert isinstance(strategy.proposer, CrossTokenizerDraft)
    with torch.no_grad():
        out = target.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, strategy=strategy,
                              **kwargs)
    return out, strategy.stats


@given(mode=cross_tokenizer_modes(), batch=prompts(vocab_size=V_TARGET, batch_size=st.integers(1, 3)),
       g=draft_lengths(1, 5), max_new_tokens=new_token_counts(1, 14), kind=st.sampled_from(["different", "independent"]))
def test_greedy_output_is_the_targets(mode, batch, g, max_new_tokens, kind):
    target = tiny_model("llama", vocab_size=V_TARGET)
    input_ids, mask = batch
    out, stats = speculative(target, drafts(kind), input_ids, mask, max_new_tokens, g, mode, do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, mask, max_new_tokens))


@pytest.mark.parametrize("mode", ["string", "tli"])
def test_left_padding_and_eos(mode):
    target = tiny_model("llama", vocab_size=V_TARGET)
    input_ids, mask = left_pad([[5, 6, 7], [40, 41, 42, 43, 44, 45, 46, 47], [100, 9]])
    plain = greedy_reference(target, input_ids, mask, 16)
    eos = int(plain[1, input_ids.shape[1] + 3])  # row 1 stops at its 4th new token (others maybe earlier)
    reference = greedy_reference(target, input_ids, mask, 16, eos_token_id=eos)
    assert reference.shape[1] < plain.shape[1] or bool((reference == 0).any()), "the EOS must stop a row early"
    out, _ = speculative(target, mapped_draft(), input_ids, mask, 16, 3, mode, do_sample=False, eos_token_id=eos)
    assert torch.equal(out, reference)
    torch.manual_seed(0)
    sampled, _ = speculative(target, mapped_draft(), input_ids, mask, 16, 3, mode, do_sample=True, eos_token_id=eos)
    for row in sampled[:, input_ids.shape[1]:]:  # after an EOS only padding
        stops = (row == eos).nonzero()
        if stops.numel():
            assert bool((row[int(stops[0]) + 1:] == 0).all())


@pytest.mark.parametrize("mode", ["string", "tli"])
def test_the_target_under_other_ids_is_almost_always_accepted(mode):
    target = tiny_model("llama", vocab_size=V_TARGET)
    input_ids, mask = left_pad([[5, 6, 7, 8], [30, 31, 32]])
    tokenizers = (target_tokenizer(), draft_tokenizer("permuted"))
    out, stats = speculative(target, mapped_draft("permuted"), input_ids, mask, 24, 4, mode, tokenizers=tokenizers,
                             do_sample=False)
    assert torch.equal(out, greedy_reference(target, input_ids, mask, 24))
    assert stats.accepted >= 0.8 * stats.drafted, stats


def tli_law_by_hand(draft, prompt_text: str, temperature: float) -> torch.Tensor:
    """The draft's law at the next position restricted to the shared tokens ``# [V_target]`` (small pair), from
    the piece strings (independent of :mod:`decoding.token_maps`)."""
    context = draft_tokenizer("small").encode(prompt_text)
    with torch.no_grad():
        logits = draft(torch.tensor([context])).logits[0, -1].to(torch.float64) / temperature
    law = torch.zeros(len(SMALL_TARGET_PIECES), dtype=torch.float64)
    shared = [(SMALL_TARGET_PIECES.index(p), j) for j, p in enumerate(SMALL_DRAFT_PIECES)
              if p in SMALL_TARGET_PIECES and p not in ("[PAD]", "[BOS]")]  # "[EOS]" is paired with "[EOS]"
    weights = torch.softmax(logits[[j for _, j in shared]], dim=0)
    law[[t for t, _ in shared]] = weights
    return law


def test_tli_law_and_one_step_by_enumeration(monkeypatch):
    target = tiny_model("llama", vocab_size=len(SMALL_TARGET_PIECES))
    draft = mapped_draft("small", noise=0.3)
    prompt = [3, 4, 5, 6]  # "abcd": the draft reads "ab", "cd"
    recorded = {}
    real_verify = decoding.sampler.ProcessorSampler.verify

    def spy(self, rows, logits, draft_ids, draft_probs):
        recorded.setdefault("q", draft_probs)
        recorded.setdefault("p", torch.softmax(logits[:, 0].to(torch.float64) / 0.9, dim=-1))
        return real_verify(self, rows, logits, draft_ids, draft_probs)

    monkeypatch.setattr(decoding.sampler.ProcessorSampler, "verify", spy)
    tokenizers = (target_tokenizer(small=True), draft_tokenizer("small"))
    torch.manual_seed(0)
    speculative(target, draft, torch.tensor([prompt]), None, 2, 1, "tli", tokenizers=tokenizers, do_sample=True,
                temperature=0.9)
    q = recorded["q"][0, 0].to(torch.float64)  # [V]
    expected = tli_law_by_hand(draft, "abcd", 0.9)
    assert torch.allclose(q, expected, atol=1e-6), (q, expected)
    assert float(q[[0, 1]].sum()) == 0.0, "PAD and BOS are not shared"
    p = recorded["p"][0]
    # Enumerate the drafted token x: accepted with min(1, p/q), else one token of norm(max(p - q, 0)).
    accept = torch.where(q > 0, torch.minimum(torch.ones_like(p), p / q.clamp_min(1e-300)), torch.zeros_like(p))
    residual = (p - q).clamp_min(0)
    law = q * accept + (q * (1 - accept)).sum() * residual / residual.sum()
    assert torch.allclose(law, p, atol=1e-6)


ROWS_PER_PROMPT = 2500
SMALL_PROMPTS = ([3, 4, 5], [9, 8, 7, 6, 5])  # "abc", "ihgfe"


def small_law(model, prefixes: list[list[int]], temperature: float) -> torch.Tensor:
    ids, mask = left_pad(prefixes)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[:, -1].to(torch.float64)
    return torch.softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("mode", ["tli", "string"])
def test_sampling_follows_the_target_law(mode):
    target = tiny_model("llama", vocab_size=len(SMALL_TARGET_PIECES))
    draft = mapped_draft("small", noise=0.3)
    vocab, temperature = len(SMALL_TARGET_PIECES), 1.2
    tokenizers = (target_tokenizer(small=True), draft_tokenizer("small"))
    ids, mask = left_pad([SMALL_PROMPTS[r % 2] for r in range(2 * ROWS_PER_PROMPT)])
    torch.manual_seed(1234)
    out, stats = speculative(target, draft, ids, mask, 3, 2, mode, tokenizers=tokenizers, do_sample=True,
                             temperature=temperature)
    assert 0 < stats.accepted < stats.drafted
    tokens = out[:, ids.shape[1]:]
    for p, prompt in enumerate(SMALL_PROMPTS):
        rows = tokens[p::2]
        first = small_law(target, [prompt], temperature)[0]
        second = small_law(target, [prompt + [a] for a in range(vocab)], temperature)  # [a, b]
        pair = first[:, None] * second
        third = small_law(target, [prompt + [a, b] for a in range(vocab) for b in range(vocab)], temperature)
        third = (pair[:, :, None] * third.reshape(vocab, vocab, vocab)).sum(dim=(0, 1))
        observed_pair = torch.bincount(rows[:, 0] * vocab + rows[:, 1], minlength=vocab * vocab)
        results = {"first": chi_square_pvalue(torch.bincount(rows[:, 0], minlength=vocab), first),
                   "pair": chi_square_pvalue(observed_pair, pair),
                   "third": chi_square_pvalue(torch.bincount(rows[:, 2], minlength=vocab), third)}
        assert min(results.values()) > 1e-5, (prompt, results)
        draft_first = torch.zeros(vocab, dtype=torch.float64)  # negative control: the draft's own (TLI) law
        draft_first += tli_law_by_hand(draft, "".join(SMALL_TARGET_PIECES[i] for i in prompt), temperature)
        assert chi_square_pvalue(torch.bincount(rows[:, 0], minlength=vocab), draft_first) < 1e-9


def test_the_draft_reads_the_prompt_once():
    target = tiny_model("llama", vocab_size=V_TARGET)
    draft = mapped_draft()
    widths = []
    handle = draft.get_input_embeddings().register_forward_pre_hook(lambda m, args: widths.append(args[0].shape[1]))
    prompt = list(range(10, 40))  # 30 single characters
    try:
        out, stats = speculative(target, draft, torch.tensor([prompt]), None, 20, 3, "string", do_sample=False)
    finally:
        handle.remove()
    assert widths[0] == len(draft_tokenizer().encode(target_tokenizer().decode(prompt)))  # the prompt, once
    assert max(widths[1:]) <= 3 + 4, widths  # the tokens verified last step, re-tokenized, and the last one re-read
    assert stats.steps >= 3


# ---------------------------------------------------------------------------------------------------------------
# Validation


def test_tokenizers_with_no_shared_token_raise():
    target = tiny_model("llama", vocab_size=V_TARGET)
    disjoint = bpe_tokenizer(("[PAD]", "[BOS]", "[EOS]", "\u00e9", "\u00e8", "\u00e9\u00e8"))
    draft = tiny_model("llama", vocab_size=6, seed=3, num_layers=1)
    with pytest.raises(ValueError, match="share no token"):
        speculative(target, draft, torch.tensor([[5, 6]]), None, 4, 2, tokenizers=(target_tokenizer(), disjoint),
                    do_sample=False)


def test_objects_that_cannot_decode_are_refused():
    class EncodeOnly:
        def encode(self, text):
            return [1]

    with pytest.raises(TypeError, match="decode"):
        decoding.SpeculativeDecoding(drafts("different"), tokenizers=(target_tokenizer(), EncodeOnly()))
    with pytest.raises(ValueError, match="pair"):
        decoding.SpeculativeDecoding(drafts("different"), tokenizers=target_tokenizer())


def test_tokenizers_in_the_wrong_order_raise():
    target = tiny_model("llama", vocab_size=V_TARGET)
    draft = drafts("different")  # 133 ids: the target (128 rows) cannot hold the draft tokenizer's ids
    with pytest.raises(ValueError, match="in that order"):
        speculative(target, draft, torch.tensor([[5, 6]]), None, 4, 2, tokenizers=(draft_tokenizer(), target_tokenizer()),
                    do_sample=False)


def test_far_apart_vocabularies_without_tokenizers_raise():
    target = tiny_model("llama", vocab_size=V_TARGET)
    draft = tiny_model("llama", vocab_size=400, seed=1000, num_layers=1)
    decoding.enable(target)
    with pytest.raises(ValueError, match="tokenizers="):
        target.generate(torch.tensor([[5, 6]]), max_new_tokens=3, strategy=decoding.SpeculativeDecoding(draft))


def test_bad_mode_and_strategies_of_one_vocabulary_refuse():
    with pytest.raises(ValueError, match="cross_tokenizer"):
        decoding.SpeculativeDecoding(drafts("different"), cross_tokenizer="bytes")
    target = tiny_model("llama", vocab_size=V_TARGET)
    decoding.enable(target)
    cascade = decoding.SpeculativeCascade(drafts("different"), tokenizers=(target_tokenizer(), draft_tokenizer()))
    with pytest.raises(ValueError, match="vocab"):
        target.generate(torch.tensor([[5, 6]]), max_new_tokens=3, strategy=cascade, do_sample=False)
