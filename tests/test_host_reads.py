"""Counting host reads and operations (``decoding.evals.common.host_reads``, ``python -m decoding.evals.overhead``):
each kind of read is seen once per read, other operations are not reads, and a model forward with a cache reads
nothing; the speculative step's budget of host reads (``decoding.readout``) and its profiled phases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import decoding
from decoding import hf_compat
from decoding.evals import overhead
from decoding.evals.common.host_reads import OpCounter
from models import tiny_model, tiny_pair


def test_each_kind_of_host_read_is_counted_once():
    x = torch.arange(6)
    with OpCounter() as counter:
        x.sum().item()
        bool((x > 2).any())
        int(x.max())
        x[x > 2]
        (x > 2).nonzero()
        torch.masked_select(x, x > 3)
        x[torch.tensor([0, 2])]  # integer indexing: no read
        x * 2 + 1
    assert dict(counter.reads) == {"item": 3, "bool_index": 1, "nonzero": 1, "masked_select": 1}
    assert counter.host_reads == 6 and counter.ops > counter.host_reads


def test_one_token_forwards_with_a_cache_read_nothing():
    model = tiny_model("llama")
    cache = hf_compat.new_cache(model)
    with torch.no_grad():
        hf_compat.forward_with_cache(model, cache, input_ids=torch.tensor([[5, 9, 14]]), use_cache=True)
        with OpCounter() as counter:
            for token in (3, 7, 11, 4, 8):
                hf_compat.forward_with_cache(model, cache, input_ids=torch.tensor([[token]]), use_cache=True)
    assert counter.host_reads == 0 and counter.ops > 0


def test_the_overhead_command_reports_both_methods(capsys):
    assert overhead.main(["--batch-sizes", "1,2", "--new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("host reads/step" in line for line in lines)
    assert "target alone" in lines[0] and "speculative g=4" in lines[1]


# --- the speculative step's host reads (issue 28): one per steady-state step -------------------------------------

STEADY_STATE_BUDGET = 1  # host reads per step, once every row has started and while none finishes


def step_reads(model, strategy, ids, mask, **generate_kwargs) -> list[tuple[int, bool]]:
    """``(host reads, some row finished)`` of every step of one call, a step ending where the loop reads."""
    from decoding.run import Run

    marks, original = [], Run.drop_finished
    counter = OpCounter()

    def drop_finished(run, finished):
        survivors = original(run, finished)
        marks.append((counter.host_reads, survivors is not None))
        return survivors

    with pytest.MonkeyPatch.context() as patch, torch.no_grad(), counter:
        patch.setattr(Run, "drop_finished", drop_finished)
        model.generate(ids, attention_mask=mask, strategy=strategy, **generate_kwargs)
    reads = [marks[0][0]] + [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    return [(r, finished) for r, (_, finished) in zip(reads, marks)]


def steady(steps: list[tuple[int, bool]]) -> list[int]:
    """Reads of the steady-state steps: not the first two (the prompt, the draft's first read of it), and neither
    one where a row finished nor the one after (finished rows leave the batch)."""
    return [reads for i, (reads, finished) in enumerate(steps) if i >= 2 and not finished and not steps[i - 1][1]]


@settings(max_examples=12, deadline=None)
@given(data=st.data(), batch=st.sampled_from([1, 3, 8]), g=st.integers(1, 5),
       draft_kind=st.sampled_from(["self", "noisy_copy", "independent"]), do_sample=st.booleans(),
       backend=st.sampled_from(["auto", "torch"]), cache=st.sampled_from(["dynamic", "static"]))
def test_a_steady_state_speculative_step_makes_at_most_1_host_read(data, batch, g, draft_kind, do_sample, backend,
                                                                    cache):
    from decoding.kernels import ops
    from strategies import prompts

    target, draft = tiny_pair("llama", draft_kind=draft_kind)
    decoding.enable(target)
    ids, mask = data.draw(prompts(batch_size=batch))
    sampling = {"do_sample": True, "temperature": 0.8, "top_k": 20} if do_sample else {"do_sample": False}
    with ops.use_backend(backend):
        steps = step_reads(target, decoding.SpeculativeDecoding(draft, num_draft_tokens=g, cache=cache), ids, mask,
                           max_new_tokens=30, **sampling)
    assert len(steps) >= 3
    assert all(reads <= STEADY_STATE_BUDGET for reads in steady(steps)), steps
    # Where rows finish and leave, and the step after, 2 at most (the caches' new longest row is bounded, not read).
    assert all(reads <= 2 for reads, _ in steps[2:]), steps


@pytest.mark.parametrize("batch", [1, 4])
def test_with_a_static_cache_every_steady_state_forward_sees_the_same_shapes(batch):
    """cache='static': with a fixed batch and g, each steady-state step feeds the target the same input, position
    and mask shapes, and its cache the same key shape (what torch.compile / CUDA graphs capture): finished rows stay
    in the batch until half of it has finished. The draft model's forwards come in at most three shapes (reading
    one or two unread tokens, then one token at a time)."""
    target, draft = tiny_pair("llama", draft_kind="noisy_copy")
    decoding.enable(target)
    ids = torch.randint(3, 60, (batch, 5), generator=torch.Generator().manual_seed(batch))
    seen = {"target": [], "draft": []}

    def recorder(role):
        def hook(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            keys = cache.layers[0].keys.shape if cache.layers[0].is_initialized else None
            seen[role].append((tuple(kwargs["input_ids"].shape), tuple(kwargs["position_ids"].shape),
                               tuple(kwargs["attention_mask"].shape), tuple(keys) if keys else None))
        return hook

    handles = [target.register_forward_pre_hook(recorder("target"), with_kwargs=True),
               draft.register_forward_pre_hook(recorder("draft"), with_kwargs=True)]
    try:
        with torch.no_grad():
            out = target.generate(ids, max_new_tokens=40, do_sample=False,
                                  strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3, cache="static"))
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(out, target.generate(ids, max_new_tokens=40, do_sample=False))
    # After the prompt, while the whole batch is in (the last such step may draft fewer: max_new_tokens is near).
    full = [shapes for shapes in seen["target"][1:] if shapes[0][0] == batch][:-1]
    assert len(full) >= 8 and len(set(full)) == 1, seen["target"]
    assert full[0][0] == (batch, 4) and full[0][2][-1] == full[0][3][2], "the mask covers every static slot"
    draft_full = [shapes for shapes in seen["draft"][1:] if shapes[0][0] == batch][:-3]
    assert len(set(draft_full)) <= 3, seen["draft"]


STEADY_STATE_OPS = 160  # operations per step outside the models' forwards (issue 28: 346-378 before, half is 173)


class OutsideForwards(OpCounter):
    """An :class:`OpCounter` that does not count the operations inside the models' forwards (``depth`` > 0)."""

    depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types, args, kwargs)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("batch", [1, 8])
def test_a_steady_state_step_dispatches_at_most_160_operations_outside_the_forwards(batch, cache):
    from decoding.run import Run

    target, draft = tiny_pair("llama", draft_kind="noisy_copy")
    decoding.enable(target)
    counter, marks, original = OutsideForwards(), [], Run.drop_finished

    def enter(module, args):
        counter.depth += 1

    def leave(module, args, output):
        counter.depth -= 1

    def drop_finished(run, finished):
        survivors = original(run, finished)
        marks.append((counter.ops, survivors is not None))
        return survivors

    hooks = [hook for m in (target, draft) for hook in (m.register_forward_pre_hook(enter),
                                                          m.register_forward_hook(leave))]
    ids = torch.randint(3, 60, (batch, 6), generator=torch.Generator().manual_seed(0))
    try:
        with pytest.MonkeyPatch.context() as patch, torch.no_grad(), counter:
            patch.setattr(Run, "drop_finished", drop_finished)
            target.generate(ids, max_new_tokens=40, do_sample=False,
                            strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=4, cache=cache))
    finally:
        for hook in hooks:
            hook.remove()
    steps = [(b[0] - a[0], a[1] or b[1]) for a, b in zip(marks, marks[1:])]  # (ops, a row finished around it)
    # Steady: after the prompt's steps, before the last ones (where max_new_tokens shortens the drafts and the token
    # buffer may grow), no row finishing.
    steady = [ops for ops, finishing in steps[1:7] if not finishing]
    assert len(steady) >= 4 and max(steady) <= STEADY_STATE_OPS, steps


def test_a_feature_draft_step_makes_at_most_1_host_read():
    from models import tiny_head

    target = tiny_model("llama", num_layers=4)
    decoding.enable(target)
    ids = torch.randint(3, 60, (4, 6), generator=torch.Generator().manual_seed(0))
    steps = step_reads(target, decoding.SpeculativeDecoding(tiny_head(target), num_draft_tokens=3),
                       ids, torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    assert len(steady(steps)) >= 3 and all(reads <= STEADY_STATE_BUDGET for reads in steady(steps)), steps


def test_the_readout_reads_every_ask_in_one_transfer_and_then_runs_checks():
    from decoding.readout import Readout

    readout = Readout()
    a, b = readout.ask(torch.tensor([3, 1, 4])), readout.ask(torch.tensor(True))
    seen = []
    readout.ask(torch.tensor([[2, 7]]), then=seen.append)
    with OpCounter() as counter:
        assert b.value == [1] and a.value == [3, 1, 4] and seen == [[2, 7]]
    assert counter.host_reads == 1 and readout.reads == 1
    readout.read()  # nothing pending: no read
    assert readout.reads == 1

    def refuse(value):
        raise ValueError(f"bad {value}")
    late = readout.ask(torch.tensor(5))
    readout.ask(torch.tensor(9), then=refuse)
    with pytest.raises(ValueError, match="bad"):
        readout.read()
    assert late.value == [5] and readout.reads == 2


@pytest.mark.parametrize("length", [3, "auto"])
def test_a_profiled_call_splits_its_time_into_phases_and_decodes_the_same(length):
    import time

    target, draft = tiny_pair("llama", draft_kind="noisy_copy")
    decoding.enable(target)
    ids = torch.randint(3, 60, (3, 5), generator=torch.Generator().manual_seed(1))
    outputs, strategies = [], []
    for profile in (False, True):
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=length, profile=profile)
        started = time.perf_counter()
        with torch.no_grad():
            outputs.append(target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                           do_sample=False, strategy=strategy))
        wall = time.perf_counter() - started
        strategies.append(strategy)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    seconds = strategies[1].stats.seconds
    assert set(seconds) == {"draft", "target", "verify", "other"} and min(seconds.values()) >= 0
    assert 0 < sum(seconds.values()) <= wall and seconds["target"] > 0
    assert strategies[0].stats.seconds == {}


def test_the_token_buffer_grows_with_the_rows_not_with_what_a_step_could_write():
    """Steps that write 5 columns and keep 1: once the step's read has happened, the buffer's bound is the longest
    row, so 100 such steps (105 tokens a row) stay inside the first allocation instead of reserving 5 per step."""
    from decoding.readout import Readout
    from decoding.sequences import Sequences

    readout = Readout()
    sequences = Sequences(torch.ones(2, 5, dtype=torch.int64), max_length=10_000, slack=5, pad_token_id=0,
                          readout=readout)
    first_width, rows = sequences.tokens.shape[1], torch.arange(2)
    for _ in range(100):
        sequences.write_kept(rows, torch.full((2, 5), 7), torch.ones(2, dtype=torch.int64))
        sequences.commit(rows, torch.ones(2, dtype=torch.int64), 5, cleared=True)
        readout.read()  # the step's one read
    assert sequences.lengths.tolist() == [105, 105] and sequences.longest == 105
    assert sequences.tokens.shape[1] == first_width < 5 + 5 * 100
