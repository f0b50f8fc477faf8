"""What a user hands ``generate`` beside the strategy is honoured on every route: stopping criteria of their own,
streamers at batch > 1, logits processors of their own classes (issue 25, items 1 to 3).

Every strategy here is set up to be the target alone (a contrastive beta of 0, a cascade that always defers, a
proxy-tuning pair whose tuned model is its base), so transformers' own greedy ``generate`` given the same
arguments is the oracle.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

import decoding
from laws import left_pad
from models import PAD_ID, greedy_reference, tiny_pair

PROMPTS = [[5, 9, 14], [3, 7, 11, 4, 8], [20, 21]]


def target_alone(draft) -> dict:
    return {
        "speculative": decoding.SpeculativeDecoding(draft, num_draft_tokens=3),
        "contrastive": decoding.ContrastiveDecoding(draft, beta=0.0),
        "speculative-contrastive": decoding.SpeculativeContrastiveDecoding(draft, beta=0.0, num_draft_tokens=3),
        "cascade": decoding.SpeculativeCascade(draft, rule="chow", threshold=0.0, num_draft_tokens=3),
        "proxy-tuning": decoding.ProxyTuning(base=draft, tuned=draft),
    }


ROUTES = list(target_alone(tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)[1]))


def generate(name, **kwargs):
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    decoding.enable(target)
    with torch.no_grad():
        out = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID,
                              strategy=target_alone(draft)[name], **kwargs)
    expected = greedy_reference(target, ids, mask, 12, pad_token_id=PAD_ID,
                                **{k: v for k, v in kwargs.items() if k != "streamer"})
    return out, expected


def a_token_rows_emit() -> int:
    """A token that some row of the plain greedy output emits midway, but not every row first."""
    target, _ = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    new = greedy_reference(target, ids, mask, 12, pad_token_id=PAD_ID)[:, ids.shape[1]:]
    return int(new[0, 4])


# 1. Stopping criteria of the user's own


@pytest.mark.parametrize("name", ROUTES)
def test_a_users_eos_criterion_stops_rows_as_transformers_does(name):
    stop = a_token_rows_emit()
    out, expected = generate(name, stopping_criteria=StoppingCriteriaList([EosTokenCriteria(stop)]))
    _, unstopped = generate(name)
    assert not torch.equal(expected, unstopped), "the criterion should stop a row early"
    assert torch.equal(out, expected)


@pytest.mark.parametrize("name", ROUTES)
def test_a_users_max_length_criterion_stops_rows_as_transformers_does(name):
    out, expected = generate(name, stopping_criteria=StoppingCriteriaList([MaxLengthCriteria(len(PROMPTS[1]) + 6)]))
    assert expected.shape[1] == len(PROMPTS[1]) + 6
    assert torch.equal(out, expected)


# 2. Streamers at batch > 1


class Recorder(BaseStreamer):
    def __init__(self):
        self.puts = []

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        pass


@pytest.mark.parametrize("name", ROUTES)
def test_a_streamer_gets_every_row_at_every_put_with_finished_rows_padded(name):
    """README: each ``put`` after the prompt is ``[batch, n]``; a finished row's entries are the pad id."""
    stop = a_token_rows_emit()
    recorder = Recorder()
    out, expected = generate(name, streamer=recorder, eos_token_id=stop)
    assert torch.equal(out, expected)
    prompt, *steps = recorder.puts
    assert prompt.shape == (len(PROMPTS), max(map(len, PROMPTS)))
    assert all(step.dim() == 2 and step.shape[0] == len(PROMPTS) for step in steps), [s.shape for s in steps]
    streamed = torch.cat(steps, dim=1)  # [batch, columns]: each row's tokens, then pads once it has finished
    new = out[:, prompt.shape[1]:]
    for row in range(len(PROMPTS)):
        tokens = streamed[row][streamed[row] != PAD_ID]
        assert tokens.tolist() == new[row][new[row] != PAD_ID].tolist()
    finished_early = (new == PAD_ID).any(dim=1)
    assert finished_early.any() and not finished_early.all(), "one row should finish before another"


# 3. Processors of the user's own classes


class ShiftedTemperature(TemperatureLogitsWarper):
    """A subclass of a score-only warper that reads ``input_ids``: it favours the last token's successor."""

    def __call__(self, input_ids, scores):
        scores = super().__call__(input_ids, scores)
        bonus = torch.zeros_like(scores)
        bonus.scatter_(1, ((input_ids[:, -1:] + 1) % scores.shape[1]), 50.0)
        return scores + bonus


@pytest.mark.parametrize("name", ROUTES)
def test_a_subclass_of_a_score_only_warper_sees_the_real_input_ids(name):
    processors = LogitsProcessorList([ShiftedTemperature(0.7)])
    out, expected = generate(name, logits_processor=processors)
    assert torch.equal(out, expected)
