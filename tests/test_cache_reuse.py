"""KV-cache reuse gives the same tokens as recomputing without it.

- End to end: the strategy's greedy output (target and draft caches kept across steps, rejected slots rolled
  back or left as holes) equals the target's greedy ``generate`` with ``use_cache=False`` (every step
  recomputes the whole sequence), for batches > 1 where rows accept different numbers of drafts.
- Compaction is invisible: ``compact_threshold=0.0`` (compact whenever there is a hole) and a huge threshold
  (never compact) give identical tokens and identical acceptance statistics.
- Unit: :class:`decoding.ragged_cache.RaggedCache` fed a left-padded batch, then rounds of appended tokens of
  which some become holes (``keep_last``), with or without ``compact()`` and ``select_rows()``, gives the
  next-token logits of a fresh, cache-free forward of each row's compact sequence (float64, atol 1e-10); with a
  dynamic cache, and with a static one whose capacity is drawn small enough to force compaction and growth.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import decoding
from decoding.ragged_cache import RaggedCache
from models import ARCHS, EOS_ID, VOCAB, greedy_reference, tiny_model, tiny_pair
from strategies import batch_sizes, draft_lengths, eos_choices, new_token_counts, prompts

NEVER = 1e9  # a compact_threshold no hole count can exceed


def run_strategy(target, draft, input_ids, mask, max_new_tokens, g, compact_threshold, cache="dynamic", **kwargs):
    """Greedy speculative generate; returns ``(output, stats, number of RaggedCache.compact calls)``."""
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g, compact_threshold=compact_threshold,
                                            cache=cache)
    with mock.patch.object(RaggedCache, "compact", autospec=True, side_effect=RaggedCache.compact) as spy:
        with torch.no_grad():
            out = target.generate(
                input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                strategy=strategy, **kwargs,
            )
    return out, strategy.stats, spy.call_count


def assert_same_tokens(out, ref):
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    bad = (out != ref).any(dim=1).nonzero().flatten().tolist()
    assert not bad, f"rows {bad} differ:\n{out[bad]}\nreference:\n{ref[bad]}"


def stats_tuple(stats):
    return stats.steps, stats.drafted, stats.accepted, list(stats.position_steps), list(stats.position_accepted)


@pytest.mark.parametrize("arch", ARCHS)
@given(
    data=st.data(),
    draft_kind=st.sampled_from(["noisy_copy", "independent"]),
    batch=prompts(batch_size=batch_sizes(2, 8)),
    g=draft_lengths(),
    max_new_tokens=new_token_counts(2, 12),
    with_eos=st.booleans(),
)
def test_cache_reuse_matches_full_recomputation(arch, data, draft_kind, batch, g, max_new_tokens, with_eos):
    target, draft = tiny_pair(arch, draft_kind=draft_kind)
    input_ids, mask = batch
    kwargs = {}
    if with_eos:
        continuation = greedy_reference(target, input_ids, mask, max_new_tokens)[:, input_ids.shape[1] :]
        kwargs["eos_token_id"] = data.draw(eos_choices(continuation.flatten().tolist(), absent=EOS_ID), label="eos")
    recomputed = greedy_reference(target, input_ids, mask, max_new_tokens, use_cache=False, **kwargs)
    threshold = data.draw(st.sampled_from([0.0, 0.25, NEVER]), label="compact_threshold")
    cache = data.draw(st.sampled_from(["dynamic", "static"]), label="cache")
    out, _, compactions = run_strategy(target, draft, input_ids, mask, max_new_tokens, g, threshold, cache, **kwargs)
    note(f"compactions: {compactions}")
    assert_same_tokens(out, recomputed)
    if threshold == NEVER and cache == "dynamic":  # a static cache compacts when it would overflow
        assert compactions == 0


@pytest.mark.parametrize("arch", ARCHS)
@given(
    batch=prompts(batch_size=batch_sizes(2, 8)),
    g=draft_lengths(2, 8),
    max_new_tokens=new_token_counts(4, 16),
)
def test_compaction_is_invisible(arch, batch, g, max_new_tokens):
    """Compacting at every hole and never compacting give the same tokens and the same statistics."""
    target, draft = tiny_pair(arch, draft_kind="noisy_copy")
    input_ids, mask = batch
    always, always_stats, always_count = run_strategy(target, draft, input_ids, mask, max_new_tokens, g, 0.0)
    never, never_stats, never_count = run_strategy(target, draft, input_ids, mask, max_new_tokens, g, NEVER)
    note(f"compactions with threshold 0: {always_count}")
    assert never_count == 0
    assert_same_tokens(always, never)
    assert_same_tokens(always, greedy_reference(target, input_ids, mask, max_new_tokens))
    assert stats_tuple(always_stats) == stats_tuple(never_stats)


@pytest.mark.parametrize("arch", ARCHS)
def test_holes_appear_and_are_compacted(arch):
    """Fixed batch where rows accept different numbers of drafts: holes do appear, compaction runs, and the
    output is still the target's greedy output (so the property tests above really exercise holes)."""
    target, draft = tiny_pair(arch, draft_kind="noisy_copy")
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (6, 7), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[0, :4] = 0
    mask[3, :2] = 0
    input_ids[mask == 0] = 0
    ref = greedy_reference(target, input_ids, mask, 20, use_cache=False)
    always, _, always_count = run_strategy(target, draft, input_ids, mask, 20, 4, 0.0)
    never, _, never_count = run_strategy(target, draft, input_ids, mask, 20, 4, NEVER)
    assert always_count > 0, "no hole ever appeared: the fixture does not exercise compaction"
    assert never_count == 0
    assert_same_tokens(always, ref)
    assert_same_tokens(never, ref)


# ----------------------------------------------------------------------------------------------------------
# RaggedCache unit test


def fresh_next_logits(model, rows: list[list[int]]) -> torch.Tensor:
    """Last-position logits of each row's sequence, each run alone, without padding or cache. ``# [b, V]``."""
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([row])).logits[0, -1] for row in rows])


def check_cache_invariants(cache: RaggedCache, sequences):
    assert cache.mask.shape[0] == len(sequences)
    assert cache.num_valid.tolist() == [len(s) for s in sequences]
    assert cache.mask.sum(dim=1).tolist() == cache.num_valid.tolist()
    assert cache.cache.get_seq_length() == cache.mask.shape[1]


@st.composite
def cache_rounds(draw, batch_size):
    """Rounds of ``(tokens [b, n], valid [b, n], keep [b, n], compact, select)`` to apply to a cache."""
    rounds = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 5))
        tokens = torch.tensor(
            draw(st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=n, max_size=n), min_size=batch_size,
                          max_size=batch_size))
        )
        # As the strategy feeds windows: a row's invalid slots come first, its last slot is always real.
        leading = draw(st.lists(st.integers(0, n - 1), min_size=batch_size, max_size=batch_size))
        valid = (torch.arange(n)[None, :] >= torch.tensor(leading)[:, None]).to(torch.int64)
        if draw(st.booleans()):  # every slot real, said as None (the cache then knows its tail is full)
            valid = None
        # Each row keeps a prefix of the slots just fed (accepted drafts), never a later slot without the
        # earlier ones: a slot's position is baked into its key (RoPE) or input (learned positions).
        kept = draw(st.lists(st.integers(0, n), min_size=batch_size, max_size=batch_size))
        keep = torch.arange(n)[None, :] < torch.tensor(kept)[:, None]
        compact = draw(st.booleans())
        select = None
        if batch_size > 1 and draw(st.booleans()):
            select = sorted(draw(st.sets(st.integers(0, batch_size - 1), min_size=1, max_size=batch_size)))
            batch_size = len(select)
        rounds.append((tokens, valid, keep, compact, select))
    return rounds


@pytest.mark.parametrize("arch", ARCHS)
@given(data=st.data(), batch=prompts(batch_size=batch_sizes(1, 6)))
def test_ragged_cache_matches_fresh_forward(arch, data, batch):
    model = tiny_model(arch)
    input_ids, mask = batch
    sequences = [row[m.bool()].tolist() for row, m in zip(input_ids, mask)]
    capacity = data.draw(st.one_of(st.none(), st.integers(input_ids.shape[1], input_ids.shape[1] + 24)),
                         label="static capacity")
    cache = RaggedCache(model, input_ids.shape[0], torch.device("cpu"), capacity=capacity)
    with torch.no_grad():
        logits = cache.forward(input_ids, mask, logits_to_keep=1)[:, -1]
    torch.testing.assert_close(logits, fresh_next_logits(model, sequences), rtol=0, atol=1e-10)
    check_cache_invariants(cache, sequences)

    for tokens, valid, keep, compact, select in data.draw(cache_rounds(input_ids.shape[0]), label="rounds"):
        with torch.no_grad():
            logits = cache.forward(tokens, valid, logits_to_keep=1)[:, -1]
        valid = torch.ones_like(tokens) if valid is None else valid
        sequences = [s + t[v.bool()].tolist() for s, t, v in zip(sequences, tokens, valid)]
        torch.testing.assert_close(logits, fresh_next_logits(model, sequences), rtol=0, atol=1e-10)
        check_cache_invariants(cache, sequences)

        # Slots that are not kept become holes (the caller's rejected drafts).
        cache.keep_last(keep)
        sequences = [
            s[: len(s) - int(v.sum())] + t[v.bool() & k].tolist() for s, t, v, k in zip(sequences, tokens, valid, keep)
        ]
        check_cache_invariants(cache, sequences)
        if select is not None:
            cache.select_rows(torch.tensor(select))
            sequences = [sequences[i] for i in select]
            assert cache.holes(at_least=True) <= cache.holes()  # a bound known without a read, never more
            check_cache_invariants(cache, sequences)
        if compact:
            cache.compact()
            check_cache_invariants(cache, sequences)
            width = max(len(s) for s in sequences)
            assert cache.mask.shape[1] == width and cache.holes() == 0
            # Every row's valid slots are contiguous at the right end.
            expected = (torch.arange(width)[None, :] >= (width - cache.num_valid)[:, None]).to(torch.int64)
            assert torch.equal(cache.mask, expected)

    # The next token after all of that: one real token per row.
    last = torch.tensor(data.draw(st.lists(st.integers(3, VOCAB - 1), min_size=len(sequences),
                                           max_size=len(sequences)), label="last"))[:, None]
    with torch.no_grad():
        logits = cache.forward(last, torch.ones_like(last), logits_to_keep=1)[:, -1]
    sequences = [s + [int(t)] for s, t in zip(sequences, last)]
    torch.testing.assert_close(logits, fresh_next_logits(model, sequences), rtol=0, atol=1e-10)
    check_cache_invariants(cache, sequences)


@pytest.mark.parametrize("capacity", [None, 16])
@pytest.mark.parametrize("arch", ARCHS)
def test_ragged_cache_compact_after_holes_fixed(arch, capacity):
    """A fixed case with holes in the middle of rows (left pads, then rejected slots, then kept ones) and at the
    end of the longest row: next-token logits with the holes in place, and after
    ``compact()``, equal a fresh forward of the compact sequences."""
    model = tiny_model(arch)
    input_ids = torch.tensor([[0, 0, 0, 11, 12], [21, 22, 23, 24, 25], [0, 31, 32, 33, 34]])
    mask = (input_ids != 0).to(torch.int64)
    cache = RaggedCache(model, 3, torch.device("cpu"), capacity=capacity)
    with torch.no_grad():
        cache.forward(input_ids, mask, logits_to_keep=1)
        cache.forward(torch.tensor([[41, 42, 43]] * 3), torch.ones(3, 3, dtype=torch.int64), logits_to_keep=1)
    # Row 0 keeps 41, row 1 keeps 41 42 43, row 2 keeps nothing.
    cache.keep_last(torch.tensor([[True, False, False], [True, True, True], [False, False, False]]))
    sequences = [[11, 12, 41], [21, 22, 23, 24, 25, 41, 42, 43], [31, 32, 33, 34]]
    check_cache_invariants(cache, sequences)
    assert cache.mask.shape[1] == 8 and cache.holes() == 0
    with torch.no_grad():
        cache.forward(torch.tensor([[44, 45], [44, 45], [44, 45]]), torch.ones(3, 2, dtype=torch.int64), 1)
    # Row 1 rejects both: its two slots become holes, but row 0 keeps one, so one column stays.
    cache.keep_last(torch.tensor([[True, False], [False, False], [True, True]]))
    sequences = [[11, 12, 41, 44], [21, 22, 23, 24, 25, 41, 42, 43], [31, 32, 33, 34, 44, 45]]
    check_cache_invariants(cache, sequences)
    assert cache.mask.shape[1] == 10 and cache.holes() == 2
    nxt = torch.tensor([[50], [51], [52]])
    expected = fresh_next_logits(model, [s + [int(t)] for s, t in zip(sequences, nxt)])
    for step in ("holes", "compact"):
        if step == "compact":
            cache.compact()
            check_cache_invariants(cache, sequences)
            assert cache.holes() == 0 and cache.mask.shape[1] == 8
        with torch.no_grad():
            logits = cache.forward(nxt, torch.ones_like(nxt), logits_to_keep=1)[:, -1]
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
        cache.keep_last(torch.zeros(3, 1, dtype=torch.bool))  # roll the probe token back (a plain crop)
        check_cache_invariants(cache, sequences)


def test_the_hole_check_is_skipped_only_after_single_valid_tokens():
    """``compact_if_holes_exceed`` reads the holes back (a host sync) only when they may have grown: after a step
    that appended one valid token per row and nothing else, holes are as many as at the last check and the slots
    more, so the check is skipped; after a rollback it runs, and compacts."""
    model = tiny_model("llama")
    cache = RaggedCache(model, 2, torch.device("cpu"))
    with torch.no_grad(), mock.patch.object(RaggedCache, "holes", autospec=True, side_effect=RaggedCache.holes) as spy:
        cache.forward(torch.tensor([[0, 11, 12], [21, 22, 23]]), torch.tensor([[0, 1, 1], [1, 1, 1]]), 1)
        cache.compact_if_holes_exceed(0.0)  # checked: a left pad is not a hole compaction frees
        assert spy.call_count == 1 and cache.mask.shape[1] == 3
        cache.forward(torch.tensor([[13, 14], [24, 25]]), torch.ones(2, 2, dtype=torch.int64), 1)
        cache.keep_last(torch.tensor([[True, False], [False, False]]))  # row 1's slot 4 is now a hole
        cache.forward(torch.tensor([[15], [26]]), torch.ones(2, 1, dtype=torch.int64), 1)
        cache.compact_if_holes_exceed(1.0)  # checked: 1 hole in 5 slots, kept
        assert spy.call_count == 2 and cache.mask.shape[1] == 5 and cache.holes() == 1
        spy.reset_mock()
        for token in (16, 17):  # single valid tokens: not checked (at 0.0 a check would compact)
            cache.forward(torch.tensor([[token], [token + 11]]), torch.ones(2, 1, dtype=torch.int64), 1)
            cache.compact_if_holes_exceed(0.0)
        assert spy.call_count == 0 and cache.mask.shape[1] == 7
        cache.keep_last(torch.tensor([[True], [True]]))  # a rollback, even one keeping everything: checked
        cache.compact_if_holes_exceed(0.0)
        assert spy.call_count == 1 and cache.mask.shape[1] == 6 and cache.holes() == 0
    check_cache_invariants(cache, [[11, 12, 13, 15, 16, 17], [21, 22, 23, 26, 27, 28]])


@pytest.mark.parametrize("padded", [False, True])
def test_a_prompt_is_read_without_packing_and_without_a_mask_when_unpadded(padded):
    """The first forward (a prompt: nothing cached) runs transformers' own attention, with no mask at all when no
    slot is a hole (causal attention then needs none: SDPA's fastest path) and the 4D mask otherwise; later
    forwards get the 4D mask and packed grouped queries. The logits equal a fresh forward's either way."""
    model = tiny_model("llama")  # float64, 4 query heads over 2 key/value heads
    assert decoding.hf_compat.packs_grouped_queries(model)
    tokens = torch.tensor([[5, 11, 12, 13], [21, 22, 23, 24]])
    valid = torch.tensor([[0 if padded else 1, 1, 1, 1], [1, 1, 1, 1]])
    seen = []
    real_forward, real_packed = decoding.hf_compat.forward_with_cache, decoding.hf_compat.packed_grouped_queries

    def forward(model, cache, **inputs):
        seen.append([inputs["attention_mask"]])
        return real_forward(model, cache, **inputs)

    cache = RaggedCache(model, 2, torch.device("cpu"))
    with torch.no_grad(), mock.patch.object(decoding.hf_compat, "forward_with_cache", forward), \
            mock.patch.object(decoding.hf_compat, "packed_grouped_queries", side_effect=real_packed) as spy:
        first = cache.forward(tokens, valid, 1)
        assert spy.call_count == 0  # no packing over a prompt
        second = cache.forward(torch.tensor([[14, 15], [25, 26]]), torch.ones(2, 2, dtype=torch.int64), 1)
        assert spy.call_count == 1
    assert (seen[0][0] is None) != padded and seen[1][0] is not None and seen[1][0].dim() == 4
    if padded:
        assert seen[0][0].dim() == 4
    for row, sequence in enumerate([[11, 12, 13] if padded else [5, 11, 12, 13], [21, 22, 23, 24]]):
        with torch.no_grad():
            fresh = model(torch.tensor([sequence + [14 + 11 * row, 15 + 11 * row]])).logits
        torch.testing.assert_close(first[row, -1], fresh[0, len(sequence) - 1], rtol=0, atol=1e-10)
        torch.testing.assert_close(second[row, -1], fresh[0, -1], rtol=0, atol=1e-10)
