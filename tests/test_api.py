"""The drop-in API: ``decoding.enable``, ``custom_generate=strategy``, transformers' return types, streamers,
``num_return_sequences`` and the acceptance statistics of the last call."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.streamers import BaseStreamer, TextStreamer
from transformers.generation.utils import GenerateDecoderOnlyOutput

import decoding
from char_tokenizer import char_tokenizer
from models import ARCHS, PAD_ID, VOCAB, fresh_model, greedy_reference, tiny_model, tiny_pair


def ragged_batch(seed=0, batch=4, width=6):
    """A left-padded prompt batch with rows of lengths width, width-2, ..., at least 1."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, width), generator=gen)
    lengths = torch.tensor([max(1, width - 2 * r) for r in range(batch)])
    mask = (torch.arange(width) >= (width - lengths)[:, None]).to(torch.int64)
    return input_ids.masked_fill(mask == 0, PAD_ID), mask


# ----------------------------------------------------------------------------------------------------------
# Without a strategy, generate is transformers' own


@pytest.mark.parametrize("arch", ARCHS)
def test_enabled_generate_without_strategy_is_plain_transformers(arch):
    plain, enabled = fresh_model(arch), fresh_model(arch)
    assert decoding.enable(enabled) is enabled
    input_ids, mask = ragged_batch()
    for kwargs in (dict(do_sample=False), dict(do_sample=False, strategy=None), dict(do_sample=True, top_k=20)):
        reference_kwargs = {k: v for k, v in kwargs.items() if k != "strategy"}
        torch.manual_seed(5)
        ref = plain.generate(input_ids, attention_mask=mask, max_new_tokens=8, **reference_kwargs)
        torch.manual_seed(5)
        out = enabled.generate(input_ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        assert torch.equal(out, ref), kwargs
    ref = plain.generate(input_ids, attention_mask=mask, max_new_tokens=5, return_dict_in_generate=True,
                         output_scores=True)
    out = enabled.generate(input_ids, attention_mask=mask, max_new_tokens=5, return_dict_in_generate=True,
                           output_scores=True)
    assert type(out) is type(ref) and torch.equal(out.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(out.scores, ref.scores))


def test_enable_twice_is_harmless():
    target = fresh_model("llama")
    _, draft = tiny_pair("llama", draft_kind="noisy_copy")
    decoding.enable(target)
    wrapped = target.generate
    assert decoding.enable(target) is target
    assert target.generate is wrapped, "a second enable must not wrap generate again"
    input_ids, mask = ragged_batch()
    ref = greedy_reference(target, input_ids, mask, 10)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    out = target.generate(input_ids, attention_mask=mask, max_new_tokens=10, do_sample=False, strategy=strategy)
    assert torch.equal(out, ref)


def test_strategy_argument_is_checked():
    target = tiny_model("llama")
    _, draft = tiny_pair("llama")
    decoding.enable(target)
    input_ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(TypeError, match="strategy must be"):
        target.generate(input_ids, max_new_tokens=2, strategy="speculative")
    strategy = decoding.SpeculativeDecoding(draft)
    with pytest.raises(ValueError, match="custom_generate"):
        target.generate(input_ids, max_new_tokens=2, strategy=strategy, custom_generate=strategy)
    with pytest.raises(ValueError, match="assistant_model"):
        target.generate(input_ids, max_new_tokens=2, strategy=strategy, assistant_model=draft)


@pytest.mark.parametrize("arch", ARCHS)
def test_custom_generate_without_enable(arch):
    target = fresh_model(arch)
    _, draft = tiny_pair(arch, draft_kind="noisy_copy")
    input_ids, mask = ragged_batch(seed=1)
    ref = greedy_reference(target, input_ids, mask, 9)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=4)
    out = target.generate(input_ids, attention_mask=mask, max_new_tokens=9, do_sample=False, custom_generate=strategy)
    assert not decoding.api.is_enabled(target)
    assert torch.equal(out, ref)
    assert strategy.stats.steps > 0


# ----------------------------------------------------------------------------------------------------------
# Return types


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_return_dict_scores_and_logits(arch):
    """``sequences`` equal the tensor result; scores and logits are per new token ``[B, V]``, their argmax is
    the emitted token and they match transformers' own where a row emitted a token (rows stop at EOS)."""
    target, draft = tiny_pair(arch, draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    input_ids, mask = ragged_batch(seed=2)
    prompt = input_ids.shape[1]
    eos = int(greedy_reference(target, input_ids, mask, 10)[0, prompt + 4])  # row 0 stops after 5 tokens
    common = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=eos)
    tensor = target.generate(input_ids, strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3), **common)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    out = target.generate(input_ids, strategy=strategy, return_dict_in_generate=True, output_scores=True,
                          output_logits=True, **common)
    ref = target.generate(input_ids, return_dict_in_generate=True, output_scores=True, output_logits=True, **common)
    assert isinstance(out, GenerateDecoderOnlyOutput)
    assert torch.equal(out.sequences, tensor)
    assert torch.equal(out.sequences, ref.sequences)
    new = out.sequences.shape[1] - prompt
    assert new < 10 or (out.sequences[0, prompt:] == PAD_ID).any(), "row 0 should have stopped early"
    assert isinstance(out.scores, tuple) and isinstance(out.logits, tuple)
    assert len(out.scores) == len(out.logits) == new
    for i in range(new):
        assert out.scores[i].shape == out.logits[i].shape == (input_ids.shape[0], VOCAB)
        for r in range(input_ids.shape[0]):
            generated = out.sequences[r, prompt:].tolist()
            emitted = eos not in generated[:i]  # the row had not stopped before token i
            if not emitted:
                continue
            token = int(out.sequences[r, prompt + i])
            assert int(out.scores[i][r].argmax()) == token
            assert int(out.logits[i][r].argmax()) == token
            torch.testing.assert_close(out.scores[i][r].float(), ref.scores[i][r].float(), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out.logits[i][r].float(), ref.logits[i][r].float(), atol=1e-4, rtol=1e-4)
    assert out.attentions is None and out.hidden_states is None


def test_return_dict_without_scores():
    target, draft = tiny_pair("qwen2", draft_kind="noisy_copy")
    decoding.enable(target)
    input_ids, mask = ragged_batch(seed=3)
    out = target.generate(input_ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                          return_dict_in_generate=True, strategy=decoding.SpeculativeDecoding(draft))
    assert isinstance(out, GenerateDecoderOnlyOutput)
    assert out.scores is None and out.logits is None
    assert torch.equal(out.sequences, greedy_reference(target, input_ids, mask, 6))


def test_num_return_sequences_with_sampling():
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    input_ids, mask = ragged_batch(seed=4, batch=2)
    torch.manual_seed(0)
    out = target.generate(input_ids, attention_mask=mask, max_new_tokens=8, do_sample=True, num_return_sequences=3,
                          strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3))
    assert out.shape == (6, input_ids.shape[1] + 8)
    for r in range(6):
        assert torch.equal(out[r, : input_ids.shape[1]], input_ids[r // 3])
    assert len({tuple(row) for row in out[:3, input_ids.shape[1] :].tolist()}) > 1, "3 identical samples"


# ----------------------------------------------------------------------------------------------------------
# Streamers


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts = []
        self.ended = 0

    def put(self, value):
        assert self.ended == 0, "put() after end()"
        self.puts.append(value.clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_streamer_receives_prompt_then_every_new_token_in_order(arch, path):
    target, draft = tiny_pair(arch, draft_kind="noisy_copy", noise=0.1)
    input_ids = torch.tensor([[5, 9, 14, 3]])
    ref = greedy_reference(target, input_ids, torch.ones_like(input_ids), 14)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=4)
    recorder = Recorder()
    if path == "enable":
        decoding.enable(target)
        out = target.generate(input_ids, max_new_tokens=14, do_sample=False, strategy=strategy, streamer=recorder)
    else:
        # transformers never hands streamer= to a custom_generate callable: it goes in as decoding_streamer=.
        out = tiny_model(arch).generate(input_ids, max_new_tokens=14, do_sample=False, custom_generate=strategy,
                                        decoding_streamer=recorder)
    assert torch.equal(out, ref)
    assert recorder.ended == 1
    assert torch.equal(recorder.puts[0].reshape(-1), input_ids[0]), "the first put() must be the prompt"
    assert len(recorder.puts) > 2, "new tokens should arrive over several puts"
    streamed = torch.cat([p.reshape(-1) for p in recorder.puts])
    assert streamed.tolist() == out[0].tolist()
    assert strategy.stats.accepted > 0 and len(recorder.puts) - 1 < 14, "some put() should carry several tokens"


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_text_streamer_prints_what_transformers_prints(path, capsys):
    tokenizer = char_tokenizer()
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    input_ids = torch.tensor([[20, 30, 40, 50]])
    target.generate(input_ids, max_new_tokens=12, do_sample=False, streamer=TextStreamer(tokenizer, skip_prompt=True))
    expected = capsys.readouterr().out
    assert len(expected.strip()) >= 10
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    streamer = TextStreamer(tokenizer, skip_prompt=True)
    if path == "enable":
        decoding.enable(target)
        out = target.generate(input_ids, max_new_tokens=12, do_sample=False, strategy=strategy, streamer=streamer)
    else:
        out = tiny_model("llama").generate(input_ids, max_new_tokens=12, do_sample=False, custom_generate=strategy,
                                           decoding_streamer=streamer)
    assert capsys.readouterr().out == expected
    assert expected.strip() == tokenizer.decode(out[0, 4:].tolist()).strip()


# ----------------------------------------------------------------------------------------------------------
# Statistics


@pytest.mark.parametrize("g", [1, 3, 5])
def test_stats_after_a_call(g):
    target, draft = tiny_pair("gpt2", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    input_ids, mask = ragged_batch(seed=6)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
    assert strategy.stats.steps == 0
    target.generate(input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
    stats = strategy.stats
    assert stats.steps > 0
    assert len(stats.per_position_acceptance) == g
    assert all(0.0 <= a <= 1.0 for a in stats.per_position_acceptance)
    assert 0 < stats.accepted <= stats.drafted
    assert stats.acceptance_rate == pytest.approx(stats.accepted / stats.drafted)
    assert 1.0 <= stats.mean_accepted_length <= g + 1
    assert stats.mean_accepted_length == pytest.approx(1 + stats.accepted / stats.steps)
    # A second call resets the statistics instead of accumulating them.
    first = (stats.steps, stats.drafted, stats.accepted)
    target.generate(input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
    assert (strategy.stats.steps, strategy.stats.drafted, strategy.stats.accepted) == first


def test_deepcopy_of_an_enabled_model_generates_with_the_copys_weights():
    """Regression: enable() once stored a closure over the model, so a deep copy's generate ran the original."""
    import copy

    model = fresh_model("llama")
    decoding.enable(model)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for param in clone.parameters():
            param.mul_(-1.0)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = fresh_model("llama")
    with torch.no_grad():
        for param in expected.parameters():
            param.mul_(-1.0)
        reference = expected.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(clone.generate(ids, max_new_tokens=6, do_sample=False), reference)
        assert not torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), reference)


def test_one_strategy_object_serves_two_threads_at_once():
    """A strategy holds no per-call state: concurrent calls give each its own output and its own statistics."""
    import threading

    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    batches = [ragged_batch(seed=s) for s in (1, 2)]

    def call(i):
        ids, mask = batches[i]
        return target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, strategy=strategy,
                               return_dict_in_generate=True)

    alone = [call(i) for i in range(2)]
    results = [None, None]
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result, reference in zip(results, alone):
        assert torch.equal(result.sequences, reference.sequences)
        assert result.stats == reference.stats and result.stats.steps > 0
    assert strategy.stats in (results[0].stats, results[1].stats)


def test_an_interrupted_call_leaves_the_strategy_usable():
    from transformers import LogitsProcessor, LogitsProcessorList

    class Interrupt(LogitsProcessor):
        def __init__(self):
            self.calls = 0

        def __call__(self, input_ids, scores):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return scores

    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    ids, mask = ragged_batch(seed=3)
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
    with pytest.raises(KeyboardInterrupt):
        target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy,
                        logits_processor=LogitsProcessorList([Interrupt()]))
    out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(target, ids, mask, 12))
    assert strategy.stats.steps > 0
