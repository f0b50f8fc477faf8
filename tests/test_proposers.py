"""Proposers: prompt lookup against a brute-force oracle, rows that propose fewer drafts than ``g`` (the -1
convention) in every verification implementation, and losslessness end to end (greedy equality with the
target's own greedy output; the sampling law by chi-square against exact enumeration)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import decoding
from decoding.adaptive import AdaptiveLength, AdaptiveMemory, StepFacts
from decoding.adaptive import rule as adaptive
from decoding.adaptive.estimates import Acceptance, Rates, Seconds, confidence_bin
from decoding.adaptive.step import NoStopwatch
from decoding.kernels import ops as kernels
from decoding.kernels import cupy_backend, reference
from decoding.proposers.prompt_lookup import lookup
from kernel_emulator import Emulator
from laws import (
    ALPHA,
    NEW_TOKENS,
    PROMPTS,
    ROWS_PER_PROMPT,
    assert_follows_target_law,
    chi_square_pvalue,
    counts,
    exact_laws,
    left_pad,
    pvalues,
    speculative_samples,
)
from models import fresh_model, greedy_reference, tiny_pair
from strategies import draft_lengths, eos_choices, prompts, seeds


def lookup_by_hand(row: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """transformers' rule, row by row: the longest n-gram first, its earliest occurrence followed by a token."""
    for n in range(max_ngram, min_ngram - 1, -1):
        if len(row) <= n:
            continue
        for start in range(len(row) - n):
            if row[start : start + n] == row[-n:]:
                return row[start + n : start + n + k]
    return []


@given(data=st.data(), k=st.integers(1, 6), ngrams=st.sampled_from([(3, 1), (2, 2), (4, 2), (1, 1)]))
def test_lookup_equals_the_row_by_row_rule(data, k, ngrams):
    rows = data.draw(st.lists(st.lists(st.integers(3, 6), min_size=1, max_size=14), min_size=1, max_size=5))
    ids, mask = left_pad(rows)
    pads = (1 - mask).sum(dim=1)
    lengths = torch.full((len(rows),), ids.shape[1])
    out = lookup(ids, lengths, pads, torch.arange(len(rows)), k, *ngrams)
    for r, row in enumerate(rows):
        expected = lookup_by_hand(row, k, *ngrams)
        assert out[r].tolist() == expected + [-1] * (k - len(expected)), (row, expected)


# ------------------------------------------------------------------------------------------ -1: no draft there


def _rows_proposing_fewer(seed: int, batch=5, g=4, vocab=11):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, g + 1, vocab, generator=gen, dtype=torch.float64) * 2
    q = torch.softmax(torch.randn(batch, g, vocab, generator=gen, dtype=torch.float64), -1)
    drafts = torch.multinomial(q.reshape(-1, vocab), 1, generator=gen).reshape(batch, g)
    proposed = torch.randint(0, g + 1, (batch,), generator=gen)
    beyond = torch.arange(g) >= proposed[:, None]
    drafts = drafts.masked_fill(beyond, -1)
    q = q.masked_fill(beyond[..., None], 0.0)
    u = torch.rand(batch, g + 1, generator=gen, dtype=torch.float64)
    return logits, drafts, q, u, proposed


@pytest.mark.parametrize("seed", range(6))
def test_a_position_without_draft_is_rejected_and_emits_a_draw_from_p(seed):
    """The token emitted at a row's first position without a draft is exactly what a bonus draw from ``p``
    with the same uniform gives, in the processed-scores path and the fused path alike."""
    logits, drafts, q, u, proposed = _rows_proposing_fewer(seed)
    p = torch.softmax(logits, -1)
    ids, n = reference.verify_sampling(p, q, drafts, u[:, :-1], u[:, -1])
    assert (n <= proposed).all()
    fused_ids, fused_n = reference.verify(logits, drafts, q.float(), u)
    assert (fused_n <= proposed).all()
    rows = torch.arange(drafts.shape[0])
    for out, count, bonus in ((ids, n, reference.sample(p[rows, n], u[:, -1])),
                              (fused_ids, fused_n, reference.sample_logits(logits[rows, fused_n], u[:, -1])[0])):
        at_end = count == proposed  # every proposal accepted: the emitted token is a draw from p there
        assert torch.equal(out[rows, count][at_end], bonus[at_end])
    greedy_ids, greedy_n = reference.verify_greedy(logits, drafts)
    assert (greedy_n <= proposed).all()
    assert torch.equal(greedy_ids[rows, greedy_n], logits[rows, greedy_n].argmax(-1))


@pytest.mark.parametrize("seed", range(4))
def test_kernels_treat_a_position_without_draft_as_the_reference_does(poisoned, seed):
    logits, drafts, q, u, _ = _rows_proposing_fewer(seed)
    logits, q = logits.float(), q.float()
    emulator = Emulator(64, seed=seed)
    for kw in (dict(), dict(temperature=0.8, top_k=5, top_p=0.9)):
        got = cupy_backend.verify(logits, drafts, q, u, launcher=emulator, **kw)
        expected = reference.verify(logits, drafts, q, u, **kw)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    got = cupy_backend.verify(logits, drafts, launcher=emulator)
    expected = reference.verify(logits, drafts)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


# ------------------------------------------------------------------------------------------ end to end


def _repetitive(batch):
    """Prompts that repeat their own n-grams, so that prompt lookup finds matches."""
    ids, mask = batch
    ids = torch.cat([ids, ids[:, -3:], ids], dim=1)
    mask = torch.cat([mask, mask[:, -3:], mask], dim=1)
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@given(batch=prompts(), g=draft_lengths(1, 6), seed=seeds(), data=st.data())
def test_prompt_lookup_greedy_equals_the_targets_own_greedy(arch, batch, g, seed, data):
    target, _ = tiny_pair(arch, draft_kind="noisy_copy", noise=0.1)
    ids, mask = _repetitive(batch)
    plain = greedy_reference(target, ids, mask, 10)
    eos = data.draw(st.none() | eos_choices(plain[:, ids.shape[1]:].reshape(-1).tolist()))
    reference_out = greedy_reference(target, ids, mask, 10, eos_token_id=eos)
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(decoding.PromptLookup(max_ngram=3), num_draft_tokens=g)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos,
                          strategy=strategy)
    note(f"drafted {strategy.stats.drafted}, accepted {strategy.stats.accepted}")
    assert torch.equal(out, reference_out)
    assert strategy.stats.accepted <= strategy.stats.drafted


def test_prompt_lookup_proposes_and_gets_accepted_on_text_that_repeats():
    """A target whose attention outputs are zeroed predicts the next token from the current one alone, so its greedy
    text becomes periodic and every earlier occurrence of the last token is followed by what it will say next."""
    target = fresh_model("llama")
    for layer in target.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4]])
    reference_out = greedy_reference(target, ids, mask, 40)
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(decoding.PromptLookup(), num_draft_tokens=4)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, strategy=strategy)
    assert torch.equal(out, reference_out)
    assert strategy.stats.accepted > 0.5 * strategy.stats.drafted > 0


@pytest.mark.parametrize("backend", ["auto", "torch"], ids=["processors", "fused"])
def test_prompt_lookup_sampling_follows_the_target_law(backend):
    """Chi-square against exact enumeration, as tests/test_sampling_law.py does for a draft model."""
    target, _ = tiny_pair("gpt2", vocab_size=12, draft_kind="noisy_copy", noise=0.1)
    settings = dict(temperature=0.9, top_k=8)
    prompts_ = [p + p for p in PROMPTS]  # repeated: lookup proposes from the first half
    ids, mask = left_pad([prompts_[r % len(prompts_)] for r in range(ROWS_PER_PROMPT * len(prompts_))])
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(decoding.PromptLookup(max_ngram=2), num_draft_tokens=2)
    torch.manual_seed(7)
    with kernels.use_backend(backend), torch.no_grad():
        out = target.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=True, strategy=strategy,
                              **settings)
    tokens = out[:, ids.shape[1]:]
    assert 0 < strategy.stats.accepted < strategy.stats.drafted
    for p, prompt in enumerate(prompts_):
        rows = tokens[p :: len(prompts_)]
        result = pvalues(rows, exact_laws(target, prompt, settings))
        assert min(result.values()) > ALPHA, f"prompt {prompt}: chi-square p-values {result}"
        assert chi_square_pvalue(counts(rows)[0], torch.nn.functional.one_hot(torch.tensor(prompt[len(prompt) // 2]),
                                                                              12).double()) < 1e-9


# ------------------------------------------------------------------------------------------ adaptive length


class ScriptedLength:
    """A length policy that makes adaptive-looking choices from a seed: limits from 0 to 5 (0: a plain target
    step), rows dropping out at random positions, early stops; exactness must not depend on any of it."""

    reads_confidence = True

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def _draw(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))

    def limit(self) -> int:
        return self._draw(6)

    def chance(self, confidence, rows):
        return confidence

    def proposes(self, position, reach):
        return torch.rand(reach.shape, generator=self.gen) < 0.8

    def drafts_next(self, position, reach) -> bool:
        return self._draw(4) > 0

    def stopwatch(self) -> NoStopwatch:
        return NoStopwatch()

    def observe(self, facts) -> None:
        pass


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@given(batch=prompts(), seed=seeds(), contrastive=st.booleans())
def test_any_length_choices_keep_greedy_output_exact(arch, batch, seed, contrastive):
    target, draft = tiny_pair(arch, draft_kind="noisy_copy", noise=0.1)
    ids, mask = batch
    decoding.enable(target)
    if contrastive:
        reference_out = target.generate(ids, attention_mask=mask, max_new_tokens=10,
                                        strategy=decoding.ContrastiveDecoding(draft))
        strategy = decoding.SpeculativeContrastiveDecoding(draft, num_draft_tokens=5)
    else:
        reference_out = greedy_reference(target, ids, mask, 10)
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=5)
    strategy.length_policy = lambda run: ScriptedLength(seed)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, strategy=strategy)
    assert torch.equal(out, reference_out)


@pytest.mark.parametrize("backend", ["auto", "torch"], ids=["processors", "fused"])
def test_any_length_choices_keep_the_sampling_law(backend, monkeypatch):
    monkeypatch.setattr(decoding.SpeculativeDecoding, "length_policy", lambda self, run: ScriptedLength(11))
    target, draft = tiny_pair("gpt2", vocab_size=12, draft_kind="noisy_copy", noise=0.1)
    settings = dict(temperature=0.9, top_k=8)
    with kernels.use_backend(backend):
        tokens, stats = speculative_samples(target, draft, settings, seed=5)
    assert 0 < stats.accepted < stats.drafted
    assert_follows_target_law(tokens, target, settings)


def linear_costs(new_tokens: int) -> float:
    """A target forward over ``new_tokens`` tokens: 1 for one, 0.05 more per token."""
    return 1.0 + 0.05 * new_tokens


def matrix_vector_costs(new_tokens: int) -> float:
    """One token far cheaper than two (a CPU's matrix-vector path), more tokens nearly free."""
    return 1.0 if new_tokens == 1 else 1.8 + 0.02 * new_tokens


class LateStart(ScriptedLength):
    """No drafts for the first two steps, then 3 per step, every position proposed."""

    def __init__(self):
        self.steps = 0

    def limit(self) -> int:
        self.steps += 1
        return 0 if self.steps <= 2 else 3

    def proposes(self, position, reach):
        return None

    def drafts_next(self, position, reach) -> bool:
        return True


@given(batch=prompts(min_length=1, max_length=6))
def test_a_draft_that_starts_late_reads_the_padded_prompt_right(batch):
    """The target as its own draft accepts every draft iff it reads each row's real context: the left padding of a
    prompt first read after plain steps must be holes, not tokens."""
    target, draft = tiny_pair("llama", draft_kind="self")
    ids, mask = batch
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    strategy.length_policy = lambda run: LateStart()
    out = target.generate(ids, attention_mask=mask, max_new_tokens=9, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 9))
    assert strategy.stats.drafted > 0 and strategy.stats.accepted == strategy.stats.drafted


class ModeledCosts(AdaptiveLength):
    """The adaptive rule fed modeled instead of measured seconds (a draft forward costs ``draft_cost`` of a
    one-token target forward, a target forward ``target_cost(new_tokens)``), so that its decisions do not depend on
    the load."""

    draft_cost = 0.1
    rest_cost = 0.0
    target_cost = staticmethod(linear_costs)

    def observe(self, facts):
        self.proposed = getattr(self, "proposed", []) + [facts.proposal.lengths()]  # [b] per step
        super().observe(replace(facts, draft_seconds=self.draft_cost * facts.width,
                                target_seconds=self.target_cost(facts.new_tokens), rest_seconds=self.rest_cost))


def measured(length: AdaptiveLength, seconds: dict) -> None:
    """``length`` learns target forwards: ``seconds`` maps new tokens per row to the seconds of one forward."""
    for n, t in seconds.items():
        length.seconds = length.seconds.with_target(n, t)


def step_facts(proposal, accepted, new_tokens: int, **seconds) -> StepFacts:
    return StepFacts(proposal, accepted, new_tokens=new_tokens, rows=torch.arange(len(accepted)), **seconds)


def _warm_up(length) -> list[int]:
    """The warm-up as a proposer runs it, two rows: prompt, one draft (accepted in one row), none, one (accepted in
    both); returns the limits."""
    limits = []
    for step, accepted in enumerate([[0, 0], [1, 0], [0, 0], [1, 1]]):
        limits.append(length.limit())
        ids = torch.zeros(2, limits[-1], dtype=torch.int64)
        confidence = torch.full(ids.shape, 0.5)
        if limits[-1]:
            chance = length.chance(confidence[:, 0], torch.arange(2))
            assert length.proposes(1, chance) is None  # costs unknown: every row proposes
        proposal = decoding.proposers.Proposal(ids=ids, probs=None, confidence=confidence)
        length.observe(step_facts(proposal, torch.tensor(accepted).clamp_max(limits[-1]),
                                  new_tokens=0 if step == 0 else limits[-1] + 1))
    return limits


def test_adaptive_warm_up_measures_the_prompt_then_t2_t1_and_a_draft_forward():
    length = ModeledCosts(8, "cpu")
    assert _warm_up(length) == [0, 1, 0, 1]
    # The first drafting step also read the prompt: only the second one's draft time is kept.
    assert sorted(length.seconds.target) == [1, 2] and length.seconds.draft == pytest.approx(0.1)
    assert length.acceptance.rate == pytest.approx((0.9 * 1 + 2) / (0.9 * 2 + 2))  # decayed accepted / tested
    assert length.seconds.target_time(5) == length.seconds.target_time(2)  # flat beyond t(2) until more is measured
    # Rates: the plain step, 1 token in t(1) = 1.05; the second drafting step, 1.5 tokens expected (its bin's
    # chance, 1 of 2 tested, with 2 pseudo-tests at 1 of 2) in 0.1 + t(2) = 1.2.
    assert (length.rates.rate("plain"), length.rates.rate("draft")) == (pytest.approx(1 / 1.05),
                                                                        pytest.approx(1.5 / 1.2))


def test_a_call_starts_from_what_the_strategys_last_call_learned():
    memory = AdaptiveMemory()
    first = ModeledCosts(8, "cpu", memory=memory, batch_size=2)
    _warm_up(first)
    second = ModeledCosts(8, "cpu", memory=memory, batch_size=2)
    assert second.known() and not second.call.drafted_before  # no warm-up; its first draft still reads the prompt
    assert second.acceptance == first.acceptance and second.seconds == first.seconds
    assert second.limit() == 8  # acceptance 0.76 and drafts at a tenth of a target step: drafting pays at once
    with pytest.raises(TypeError):  # what a call carries over is immutable: no call can change another's
        second.seconds.target[1] = 99.0
    second.seconds = second.seconds.with_target(1, 99.0)
    assert ModeledCosts(8, "cpu", memory=memory, batch_size=2).seconds.target[1] == pytest.approx(1.05)
    other = ModeledCosts(8, "cpu", memory=memory, batch_size=3)  # seconds are per batch size, acceptance is not
    assert not other.known() and other.seconds == Seconds() and other.acceptance == first.acceptance
    assert AdaptiveLength(8, "cpu", memory=AdaptiveMemory()).acceptance.tested == 0  # an empty memory: a cold start


def _costed(acceptance: float, rest: float | None) -> AdaptiveLength:
    length = AdaptiveLength(8, "cpu")
    length.seconds = Seconds(draft=0.3, rest=rest).with_target(1, 1.0).with_target(2, 1.8)
    length.acceptance = Acceptance(accepted=acceptance * 10, tested=10.0)
    return length


def test_the_rest_of_a_step_counts_for_plain_steps_too():
    """A step also verifies, commits and keeps its caches (``R``): with R = 1 a target step costs 2, not 1, and
    three drafts at acceptance 0.7 pay ((1 + 0.7 + 0.49 + 0.34) / (1.8 + 0.9 + 1) = 0.68 > 1 / 2), which they do
    not without it (0.94 < 1)."""
    assert _costed(0.7, rest=None).limit() == 0
    assert _costed(0.7, rest=1.0).limit() == 8


def test_draft_seconds_are_kept_only_when_the_draft_is_at_most_one_step_behind():
    length = AdaptiveLength(8, "cpu")
    length.call.drafted_before, length.seconds = True, Seconds(draft=0.1)

    def step(drafts: int, seconds: float):
        ids = torch.zeros(1, drafts, dtype=torch.int64)
        proposal = decoding.proposers.Proposal(ids=ids, probs=None, confidence=None)
        length.observe(step_facts(proposal, torch.zeros(1, dtype=torch.int64), drafts + 1, draft_seconds=seconds,
                                  target_seconds=1.0))

    for _ in range(3):
        step(0, 0.0)
    step(1, 0.9)  # the draft's first forward read three missed tokens as well: not a draft forward's cost
    assert length.seconds.draft == 0.1
    step(0, 0.0)
    step(2, 0.4)  # one plain step behind: kept
    assert length.seconds.draft == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)


def test_a_drafts_chance_is_learned_by_confidence_bin_whatever_the_relation():
    """An under-confident draft (its drafts of confidence 0.3 always accepted) and an over-confident one (0.95:
    half of them): each bin learns its own rate; a bin never tested gets the overall rate, and one scale factor on
    the confidence (capped at 1) would give neither."""
    length = AdaptiveLength(8, "cpu")
    rows = torch.arange(2)
    assert torch.equal(length.chance(torch.tensor([0.3, 0.95]), rows), torch.ones(2))  # nothing tested yet
    for _ in range(40):  # rows: [0.3 accepted, 0.95 accepted], [0.3 accepted, 0.95 rejected]
        confidence = torch.tensor([[0.3, 0.95], [0.3, 0.95]])
        proposal = decoding.proposers.Proposal(ids=torch.zeros(2, 2, dtype=torch.int64), probs=None,
                                               confidence=confidence)
        length.learn(step_facts(proposal, torch.tensor([2, 1]), 3))
    overall = 3 / 4
    assert length.acceptance.rate == pytest.approx(overall)
    chances = length.chance(torch.tensor([0.3, 0.95, 0.6, 1.0]), torch.arange(4))
    assert chances.tolist() == pytest.approx([1.0, 0.5, overall, 0.5], abs=0.03)  # 1.0: the last bin, as 0.95


def test_a_rows_chances_follow_how_its_own_drafts_fare():
    """Three rows of a call drafting at equal confidence: row 0 always accepted, row 2 never, row 1 half the time.
    The bin's rate is the batch's; each row's chance is scaled by its accepted over its expected drafts (plus
    ROW_PRIOR of each), so that rows the draft does not know stop inflating the batch's expected gain. The rows are
    the call's original ones: after row 0 finishes, the rows left keep theirs."""
    length = AdaptiveLength(8, "cpu", batch_size=3)
    for step in range(60):
        accepted = torch.tensor([2, 2 * (step % 2), 0])
        proposal = decoding.proposers.Proposal(ids=torch.zeros(3, 2, dtype=torch.int64), probs=None,
                                               confidence=torch.full((3, 2), 0.5))
        length.learn(step_facts(proposal, accepted, 3))
    bin_rate = float(length.acceptance.chances("cpu")[confidence_bin(torch.tensor(0.5))])
    assert bin_rate == pytest.approx(length.acceptance.rate, abs=0.05)  # 3 accepted of 4.5 tested per step
    chances = length.chance(torch.full((3,), 0.5), torch.arange(3))
    # Row 0 accepts 2 where the bin expects 1.33 (ratio 1.5, the prior pulls it to ~1.44); row 2 none of ~0.67.
    assert 1.3 * bin_rate < chances[0] <= 1.0 and chances[2] < 0.3 * bin_rate
    assert 0.75 * bin_rate < chances[1] < 1.25 * bin_rate  # about the batch's rate
    assert torch.equal(length.chance(torch.full((2,), 0.5), torch.tensor([1, 2])), chances[1:])  # row 0 finished
    nothing = AdaptiveLength(8, "cpu", batch_size=3)
    assert torch.equal(nothing.chance(torch.full((3,), 0.5), torch.arange(3)), torch.ones(3))  # nothing learned
    alone = AdaptiveLength(8, "cpu", batch_size=1)  # one row: its bins already are its own record
    for _ in range(20):
        alone.learn(step_facts(decoding.proposers.Proposal(ids=torch.zeros(1, 2, dtype=torch.int64), probs=None,
                                                           confidence=torch.full((1, 2), 0.5)), torch.tensor([0]), 3))
    assert alone.rows is None
    assert alone.chance(torch.full((1,), 0.5), torch.arange(1)) == pytest.approx(alone.acceptance.rate, abs=0.1)


@given(st.data())
def test_finished_rows_staying_in_the_batch_teach_the_rule_nothing(data):
    """With ``cache="static"`` finished rows stay in the batch: what they drafted and had accepted must leave the
    estimates as if only the unfinished rows had stepped (an oracle: the same steps with those rows alone)."""
    batch = data.draw(st.integers(2, 5), label="batch")
    width = data.draw(st.integers(1, 4), label="width")
    finished = data.draw(st.sets(st.integers(0, batch - 1), min_size=1, max_size=batch - 1), label="finished")
    live = torch.tensor([r for r in range(batch) if r not in finished])
    with_finished, alone = AdaptiveLength(8, "cpu", batch_size=batch), AdaptiveLength(8, "cpu", batch_size=batch)
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    for _ in range(data.draw(st.integers(1, 4), label="steps")):
        ids = torch.randint(-1, 50, (batch, width), generator=generator)  # -1: a row proposed nothing there
        confidence = torch.rand(batch, width, generator=generator)
        accepted = torch.randint(0, width + 1, (batch,), generator=generator)
        proposal = decoding.proposers.Proposal(ids=ids, probs=None, confidence=confidence)
        with_finished.learn(replace(step_facts(proposal, accepted, width + 1), live=live))
        kept = decoding.proposers.Proposal(ids=ids[live], probs=None, confidence=confidence[live])
        alone.learn(StepFacts(kept, accepted[live], new_tokens=width + 1, rows=live))
    assert with_finished.acceptance == alone.acceptance
    assert (with_finished.rows is None) == (alone.rows is None)
    if alone.rows is not None:
        assert torch.equal(with_finished.rows.ratio, alone.rows.ratio)


def test_a_probe_drafts_for_a_few_steps_and_verifies_its_first_draft_whatever_it_costs():
    length = AdaptiveLength(8, "cpu", probe_every=2)
    measured(length, {1: 1.0, 2: 1.5, 3: 2.0})
    length.seconds = replace(length.seconds, draft=0.5)
    length.acceptance = Acceptance(accepted=0.0, tested=4.0)  # nothing accepted so far: drafting does not pay
    limits = [length.limit() for _ in range(3)]
    assert limits == [0, 0, 8] and length.proposes(1, torch.tensor([0.01, 0.0])) is None
    # The forced position counts in the step's estimate.
    assert (length.plan.expected, length.plan.verified) == (pytest.approx(1.005), 1)
    assert not bool(length.proposes(2, torch.tensor([0.01, 0.0])).any())  # beyond the first: as the model says
    for _ in range(adaptive.PROBE_STEPS - 1):  # the probe's further steps draft, their positions as the model says
        assert length.limit() == 8 and not bool(length.proposes(1, torch.tensor([0.01, 0.0])).any())
    assert length.limit() == 0
    assert length.schedule.probe_every == 4  # the wait doubles


def _stepper(length: AdaptiveLength):
    """``step(drafts, accepted, draft_seconds, target_seconds, rest, expected)``: ``length`` observes one step of a
    row; with ``expected``, the step verified all its drafts and expected that many tokens (as ``proposes`` sets
    them in a real step), without, its proposer never asked ``proposes``."""

    def step(drafts: int, accepted: int, draft_seconds: float, target_seconds: float, rest: float | None,
             expected: float | None = None):
        ids = torch.zeros(1, drafts, dtype=torch.int64)
        proposal = decoding.proposers.Proposal(ids=ids, probs=None, confidence=None)
        if expected is not None:
            length.plan.expected, length.plan.verified = expected, drafts
        length.observe(step_facts(proposal, torch.tensor([accepted]), drafts + 1, draft_seconds=draft_seconds,
                                  target_seconds=target_seconds, rest_seconds=rest))
        length.plan.expected, length.plan.verified = 1.0, 0  # as the next step's start leaves them

    return step


def test_a_probe_counts_the_tokens_it_got():
    """Its chances learned on a stretch the draft did badly, a probe that gets 3 tokens where 1.3 were expected
    counts 3: a probe measures what the estimates may have wrong. An ordinary drafting step counts 1.3."""
    rates = []
    for probe in (True, False):
        length = _costed(0.15, rest=None)
        length.call.drafted_before = True
        length.plan.measuring = probe
        _stepper(length)(2, 2, 0.3, 1.0, rest=0.0, expected=1.3)
        rates.append(length.rates.rate("draft"))
    assert rates == [pytest.approx(3 / 1.3), pytest.approx(1.3 / 1.3)]


def test_every_step_of_a_probe_measures():
    length = AdaptiveLength(8, "cpu", probe_every=1)
    measured(length, {1: 1.0, 2: 1.5, 3: 2.0})
    length.seconds = replace(length.seconds, draft=0.5)
    length.acceptance = Acceptance(accepted=0.0, tested=4.0)  # drafting does not pay
    length.rates = Rates(plain=(1.0, 1.0), draft=(0.9, 1.0))  # close enough for the probe to go on
    assert [(length.limit(), length.plan.measuring) for _ in range(5)] == [
        (0, False), (8, True), (8, True), (8, True), (0, False)]


def test_a_drafting_step_counts_the_tokens_it_got_where_its_proposer_never_asked_proposes():
    length = _costed(0.7, rest=None)
    length.call.drafted_before = True
    _stepper(length)(3, 2, 0.3, 1.0, rest=0.0)  # string-level cross-tokenizer drafts, for example
    assert length.rates.rate("draft") == pytest.approx(3 / 1.3)


def test_once_both_are_measured_the_realized_rates_decide_whether_a_step_drafts():
    length = _costed(0.8, rest=0.05)  # the cost model: three drafts pay (2.95 tokens in 2.75 s against 1 in 1.05)
    length.call.drafted_before = True
    step = _stepper(length)
    step(0, 0, 0.0, 1.0, rest=0.05)  # a plain step: 1 token in 1.0 s and the rest (0.05 s)
    assert (length.rates.rate("plain"), length.rates.rate("draft")) == (pytest.approx(1 / 1.05), None)
    assert length.limit() == 8  # no drafting rate yet: the cost model decides
    step(3, 3, 0.9, 1.9, rest=0.05, expected=2.0)  # 2 tokens expected (not the 4 got) in 2.85 s: slower
    assert length.rates.rate("draft") == pytest.approx(2.0 / 2.85)
    assert length.limit() == 0 and length.pays(length.acceptance.rate, forwards=0, drafting=True)  # rates rule


def test_a_probe_outweighs_the_drafting_steps_before_a_stretch_of_plain_ones():
    """Both rates decay with every step: after ten plain steps, the three steps of a probe (2 tokens in 0.6 s) decide
    against the slow drafting steps before them (1 token in 2 s), which the probe's steps among their undecayed
    sums would not."""
    length = _costed(0.7, rest=None)
    length.call.drafted_before, length.schedule.probe_every = True, 10
    step = _stepper(length)
    for _ in range(10):
        step(1, 0, 0.2, 1.8, rest=0.0)  # slow drafting steps
    assert length.rates.rate("draft") == pytest.approx(0.5)
    limits = []
    for _ in range(10 + adaptive.PROBE_STEPS):
        limits.append(length.limit())
        if limits[-1]:
            step(1, 1, 0.2, 0.4, rest=0.0, expected=2.0)
        else:
            step(0, 0, 0.0, 1.0, rest=0.0)
    assert limits == [0] * 10 + [8] * adaptive.PROBE_STEPS
    assert length.rates.rate("draft") > length.rates.rate("plain") == pytest.approx(1.0)
    assert length.limit() == 8 and length.schedule.probe_every == length.schedule.first_probe


def test_a_probe_ends_after_one_step_where_drafting_is_far_from_paying():
    length = _costed(0.0, rest=None)
    length.call.drafted_before, length.schedule.probe_every = True, 2
    step = _stepper(length)
    limits = []
    for _ in range(2 * (2 + 1) + 4):  # two probes, the second after a doubled wait of 4
        limits.append(length.limit())
        if limits[-1]:
            step(1, 0, 0.3, 1.8, rest=0.0)  # a probe step: 1 token in 2.1 s
        else:
            step(0, 0, 0.0, 1.0, rest=0.0)  # a plain step: 1 token in 1 s
    assert limits == [0, 0, 8, 0, 0, 0, 0, 8, 0, 0]


def test_after_plain_steps_drafting_must_beat_them_by_the_switch_margin():
    """Drafting at 1.03 times the plain steps' rate goes on while the draft is caught up, but does not resume after
    a plain step (its first forward would read what it missed, a cost the rates leave out)."""
    length = _costed(0.7, rest=None)
    length.call.drafted_before = True
    length.rates = Rates(plain=(1.0, 1.0), draft=(1.03, 1.0))
    assert length.limit() == 8  # the last step drafted: no margin
    length.call.plain_steps = 1
    assert adaptive.SWITCH > 1.03 and length.limit() == 0


def test_an_old_drafting_rate_waits_for_a_probe():
    """The machine's speed drifts: plain steps that slow down below a drafting rate measured long before must not
    switch to drafting on that old rate; the next probe measures drafting again, and from a fresh rate the rule
    drafts (here it pays) or not."""
    length = _costed(0.7, rest=None)
    length.call.drafted_before = True
    length.rates = Rates(plain=(1.0, 1.0), draft=(1.5, 1.0))
    length.schedule.undrafted = adaptive.FRESH  # still fresh: drafting pays
    assert length.limit() == 8 and length.schedule.undrafted == 0
    # Old: the target steps alone until the probe.
    length.schedule.undrafted, length.schedule.probe_every = adaptive.FRESH + 1, 6
    limits = [length.limit() for _ in range(6 + 1)]
    assert limits == [0] * 6 + [8]
    assert length.schedule.undrafted == 0 and length.limit() == 8  # the probe measured drafting: it pays, and goes on


def test_while_drafting_pays_one_step_in_refresh_every_is_plain():
    length = _costed(0.7, rest=None)
    length.rates = Rates(plain=(1.0, 1.0), draft=(3.0, 1.0))
    limits = [length.limit() for _ in range(2 * adaptive.REFRESH_EVERY)]
    plain = [i + 1 for i, limit in enumerate(limits) if limit == 0]
    assert plain == [adaptive.REFRESH_EVERY, 2 * adaptive.REFRESH_EVERY]


def test_one_token_stays_off_the_line_of_t_n():
    length = AdaptiveLength(8, "cpu")
    measured(length, {1: 1.0, 2: 1.84, 4: 1.88})
    assert length.seconds.target_time(1) == 1.0
    assert [round(length.seconds.target_time(n), 6) for n in (2, 3, 6)] == pytest.approx([1.84, 1.86, 1.92],
                                                                                          abs=2e-3)


def test_a_length_measured_once_at_a_bad_moment_does_not_bend_the_line():
    """t(n) is fitted through the forwards as measured, weighted by recency: a single slow forward over 8 tokens
    among forty over 3 and 5 moves the line by a fraction of what a fit through one value per length would
    (1.0 + 0.05 n is the truth)."""
    length = AdaptiveLength(8, "cpu")
    measured(length, {8: 3.0})  # slow
    for _ in range(20):
        measured(length, {3: 1.15, 5: 1.25})
    assert 1.4 < length.seconds.target_time(8) < 1.6  # a fit through one value per length: 2.83
    assert dict(length.seconds.target) == {3: pytest.approx(1.15), 5: pytest.approx(1.25), 8: 3.0}


@pytest.mark.parametrize(("damping", "draft_cost", "target_cost"), [
    (0.03, 0.1, linear_costs), (0.3, 1.0, linear_costs),
    # Verifying one draft token does not pay (0.8 * 1 < 0.1 + 0.84) but several do: the rule must look ahead.
    (0.03, 0.1, matrix_vector_costs)])
def test_auto_length_is_exact_and_stops_drafting_when_it_does_not_pay(damping, draft_cost, target_cost,
                                                                      monkeypatch):
    from decoding.model_pairs.synthetic import damped_pair

    monkeypatch.setattr(ModeledCosts, "draft_cost", draft_cost)
    monkeypatch.setattr(ModeledCosts, "target_cost", staticmethod(target_cost))
    policies = []
    monkeypatch.setattr(decoding.SpeculativeDecoding, "length_policy", lambda self, run: policies.append(
        ModeledCosts(self.max_draft_tokens, run.prompt_mask.device)) or policies[-1])
    target, draft = damped_pair(num_layers=3, hidden_size=64, vocab_size=256, damping=damping, seed=0,
                                dtype=torch.float64)
    decoding.enable(target)
    ids = torch.randint(10, 250, (2, 8), generator=torch.Generator().manual_seed(0))
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens="auto")
    out = target.generate(ids, max_new_tokens=40, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, torch.ones_like(ids), 40))
    if draft_cost == 1.0:  # a draft as slow as the target never pays: after the first probes, the target steps alone
        assert strategy.stats.drafted < 0.5 * strategy.stats.steps
    else:
        assert strategy.stats.accepted > strategy.stats.steps


def test_a_strategys_second_call_skips_the_warm_up_where_drafting_does_not_pay(monkeypatch):
    from decoding.model_pairs.synthetic import damped_pair

    monkeypatch.setattr(ModeledCosts, "draft_cost", 1.0)
    policies = []
    monkeypatch.setattr(decoding.SpeculativeDecoding, "length_policy", lambda self, run: policies.append(ModeledCosts(
        self.max_draft_tokens, run.prompt_mask.device, memory=self.adaptive_memory, batch_size=len(run.prompt_mask)))
        or policies[-1])
    target, draft = damped_pair(num_layers=3, hidden_size=64, vocab_size=256, damping=0.3, seed=0,
                                dtype=torch.float64)
    decoding.enable(target)
    ids = torch.randint(10, 250, (2, 8), generator=torch.Generator().manual_seed(0))
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens="auto")
    for _ in range(2):
        out = target.generate(ids, max_new_tokens=12, do_sample=False, strategy=strategy)
        assert torch.equal(out, greedy_reference(target, ids, torch.ones_like(ids), 12))
    first, second = ([int(lengths.max()) for lengths in policy.proposed] for policy in policies)
    assert first[1] > 0 and first[3] > 0  # the warm-up drafts at its second and fourth steps
    assert not any(second[:8])  # the second call starts plain: drafting did not pay (a probe may come later)
