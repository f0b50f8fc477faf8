"""Models with sliding-window attention (Gemma 3, Mistral) in every role: their caches are full layers whose rows
are kept contiguous, since transformers measures the window in cache slots. Oracles: the model's logits over the
compact sequence, recomputed without a cache, and greedy decoding by hand (``laws.greedy_by_hand``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import DynamicCache

import decoding
from decoding import hf_compat
from decoding.ragged_cache import RaggedCache
from laws import cd_by_hand, greedy_by_hand, next_token_logits
from models import SLIDING_ARCHS, _noisy_copy, tiny_model
from strategies import draft_lengths, new_token_counts, prompts, seeds

ARCH = st.sampled_from(SLIDING_ARCHS)


def sliding_pair(arch: str):
    """A sliding-window target and a noisy copy of it as draft (accepts often, not always)."""
    target = tiny_model(arch, num_layers=2)
    return target, _noisy_copy(target, 0.1, 2000)


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
def test_sliding_models_get_full_layers_that_roll_back(arch):
    model = tiny_model(arch)
    assert hf_compat.uses_sliding_window(model) and not hf_compat.uses_sliding_window(tiny_model("llama"))
    laid_out = [type(layer).__name__ for layer in DynamicCache(config=model.config).layers]
    assert "DynamicSlidingWindowLayer" in laid_out  # what hf_compat.new_cache replaces
    cache = hf_compat.new_cache(model)
    assert hf_compat.rollback_unsupported_layers(cache) == []
    RaggedCache(model, 2, torch.device("cpu"))  # accepted


@given(arch=ARCH, seed=seeds(), data=st.data())
def test_holes_anywhere_give_the_logits_of_the_compact_sequence(arch, seed, data):
    """Feed blocks with holes (left, inside, trailing), roll back random suffixes: after every forward, each row's
    logits at its valid tokens equal the model's over its compact sequence (soon longer than the window, 3)."""
    model = tiny_model(arch)
    gen = torch.Generator().manual_seed(seed)
    batch = data.draw(st.integers(1, 3), label="batch")
    cache = RaggedCache(model, batch, torch.device("cpu"))
    rows: list[list[int]] = [[] for _ in range(batch)]
    for _ in range(data.draw(st.integers(2, 5), label="steps")):
        n = data.draw(st.integers(1, 4), label="n")
        tokens = torch.randint(3, 96, (batch, n), generator=gen)
        valid = (torch.rand(batch, n, generator=gen) < 0.7).to(torch.int64)
        valid[:, -1] = 1  # every row reads something (and the last column is scored)
        logits = cache.forward(tokens, valid, logits_to_keep=n)  # [b, n, V]
        for r in range(batch):
            fed = [int(t) for t, v in zip(tokens[r], valid[r]) if v]
            reference = next_token_logits(model, [rows[r] + fed[: i + 1] for i in range(len(fed))])
            torch.testing.assert_close(logits[r][valid[r].bool()], reference, rtol=1e-9, atol=1e-9)
            rows[r] += fed
        keep = torch.arange(n)[None] < torch.randint(0, n + 1, (batch, 1), generator=gen)
        cache.keep_last(keep)
        for r in range(batch):
            dropped = int(valid[r].sum() - (valid[r] * keep[r]).sum())
            rows[r] = rows[r][: len(rows[r]) - dropped]


@given(arch=ARCH, batch=prompts(max_length=6), g=draft_lengths(1, 4), max_new_tokens=new_token_counts(4, 12),
       draft_slides=st.booleans())
def test_speculative_greedy_equals_greedy_by_hand(arch, batch, g, max_new_tokens, draft_slides):
    target, draft = sliding_pair(arch)
    if not draft_slides:  # a full-attention draft for a sliding target
        draft = tiny_model("llama", num_layers=1, seed=1000)
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, compact_threshold=float("inf"))
    out = target.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                          strategy=strategy)
    assert torch.equal(out, greedy_by_hand({"target": target}, lambda s: s["target"], ids, mask, max_new_tokens))
    assert strategy.stats.drafted > 0


@given(arch=ARCH, batch=prompts(max_length=6), max_new_tokens=new_token_counts(4, 10))
def test_contrastive_and_speculative_contrastive_equal_the_formula_by_hand(arch, batch, max_new_tokens):
    expert, amateur = sliding_pair(arch)
    ids, mask = batch
    decoding.enable(expert)
    expected = cd_by_hand(expert, amateur, ids, mask, max_new_tokens)
    for strategy in (decoding.ContrastiveDecoding(amateur),
                     decoding.SpeculativeContrastiveDecoding(amateur, num_draft_tokens=3)):
        out = expert.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              strategy=strategy)
        assert torch.equal(out, expected), type(strategy).__name__
