"""Edge cases a demanding user hits: each either behaves as transformers does, or fails early with a message that
says what to do. Regression tests for the defects fuzzing found (issue 10)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import decoding
from decoding.kernels import ops as kernels
from decoding.sequences import Sequences
from char_tokenizer import char_tokenizer
from laws import left_pad
from models import EOS_ID, PAD_ID, fresh_model, greedy_reference, tiny_model, tiny_pair

PROMPTS = [[5, 9, 14], [3, 7, 11, 4, 8], [20, 21]]


def strategies(draft):
    return {
        "speculative": decoding.SpeculativeDecoding(draft, num_draft_tokens=3),
        "contrastive": decoding.ContrastiveDecoding(draft, beta=0.0),  # beta = 0: the expert alone
        "speculative-contrastive": decoding.SpeculativeContrastiveDecoding(draft, beta=0.0, num_draft_tokens=3),
        "proxy-tuning": decoding.ProxyTuning(base=draft, tuned=draft),  # tuned == base: the large model alone
    }


NAMES = list(strategies(tiny_model("llama", seed=1, num_layers=1)))


def run(name, target, draft, input_ids, mask, **kwargs):
    decoding.enable(target)
    kwargs.setdefault("max_new_tokens", 8)
    with torch.no_grad():
        return target.generate(input_ids, attention_mask=mask, strategy=strategies(draft)[name], **kwargs)


class Constant(LogitsProcessor):
    def __init__(self, value: float):
        self.value = value

    def __call__(self, input_ids, scores):
        return torch.full_like(scores, self.value)


# ------------------------------------------------------------------------------------------ sampling garbage


@pytest.mark.parametrize("value", [float("nan"), float("-inf")])
@pytest.mark.parametrize("name", NAMES)
def test_sampling_scores_with_nothing_to_sample_raise(name, value):
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    with pytest.raises(ValueError, match="cannot sample"):
        run(name, target, draft, ids, mask, do_sample=True, logits_processor=LogitsProcessorList([Constant(value)]))


@pytest.mark.parametrize("name", ["speculative", "contrastive", "speculative-contrastive"])
def test_nan_logits_raise_on_the_fused_route_too(name, monkeypatch):
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    target = copy.deepcopy(target)
    target.lm_head.weight.data[0, 0] = float("nan")  # every logit of every row becomes NaN
    ids, mask = left_pad(PROMPTS)
    with kernels.use_backend("torch"), pytest.raises(ValueError, match="cannot sample"):
        run(name, target, draft, ids, mask, do_sample=True, temperature=0.8, top_k=20)


@pytest.mark.parametrize("kwargs", [dict(beta=float("nan")), dict(beta=float("inf")), dict(alpha=float("nan")),
                                    dict(amateur_temperature=float("inf"))])
def test_non_finite_contrastive_settings_are_refused(kwargs):
    draft = tiny_model("llama", seed=1, num_layers=1)
    for strategy in (decoding.ContrastiveDecoding, decoding.SpeculativeContrastiveDecoding):
        with pytest.raises(ValueError, match="finite"):
            strategy(draft, **kwargs)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), "1.0", True])
def test_proxy_tuning_alpha_must_be_a_finite_number(alpha):
    draft = tiny_model("llama", seed=1, num_layers=1)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        decoding.ProxyTuning(base=draft, tuned=draft, alpha=alpha)


@pytest.mark.parametrize("make", [
    lambda: decoding.SpeculativeDecoding(None),
    lambda: decoding.SpeculativeContrastiveDecoding("gpt2"),
    lambda: decoding.ContrastiveDecoding(object()),
    lambda: decoding.ProxyTuning(base=tiny_model("llama"), tuned=None),
], ids=["sd-none", "scd-string", "cd-object", "pt-none"])
def test_a_helper_that_is_not_a_model_is_refused_at_construction(make):
    with pytest.raises(TypeError, match="must be a transformers model"):
        make()


@pytest.mark.parametrize("value", [True, 2.0, 0, "3"])
def test_num_draft_tokens_must_be_a_positive_int(value):
    with pytest.raises(ValueError, match="num_draft_tokens must be an int >= 1"):
        decoding.SpeculativeDecoding(tiny_model("llama", seed=1, num_layers=1), num_draft_tokens=value)


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("name", NAMES)
def test_int32_input_ids_give_transformers_output(name):
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    reference = greedy_reference(target, ids, mask, 8)
    out = run(name, target, draft, ids.to(torch.int32), mask.to(torch.int32), do_sample=False)
    assert out.dtype == torch.int64 and torch.equal(out, reference)


def test_huge_max_new_tokens_allocates_nothing_up_front():
    sequences = Sequences(torch.ones(2, 5, dtype=torch.int64), max_length=500_000_000, slack=5, pad_token_id=0)
    assert sequences.tokens.shape[1] < 1000
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    plain = greedy_reference(target, ids, mask, 6)
    stop = int(plain[0, ids.shape[1] + 3])  # row 0 emits it as its 4th token: an EOS id for this test
    reference = greedy_reference(target, ids, mask, 40, eos_token_id=stop)
    assert (reference != PAD_ID).sum(dim=1).max() < ids.shape[1] + 40, "every row must stop on the EOS early"
    decoding.enable(target)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=500_000_000, eos_token_id=stop,
                          strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3))
    assert torch.equal(out[:, : reference.shape[1]], reference)


# ------------------------------------------------------------------------------------------ processors with row state


@pytest.mark.parametrize("settings", [dict(encoder_repetition_penalty=1.5), dict(encoder_no_repeat_ngram_size=2),
                                      dict(repetition_penalty=1.3, encoder_no_repeat_ngram_size=2)])
@pytest.mark.parametrize("name", NAMES)
def test_processors_with_per_row_state_give_transformers_output(name, settings):
    """Batch of 3 left-padded rows of different lengths, rows finishing at different steps (an EOS id): the
    processors that hold one entry per batch row see only the active rows' entries."""
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    ids, mask = left_pad(PROMPTS)
    plain = greedy_reference(target, ids, mask, 3)
    # Each prompt repeated after its own greedy continuation: plain greedy decoding would repeat prompt n-grams.
    ids, mask = left_pad([p + plain[r, ids.shape[1]:].tolist() + p for r, p in enumerate(PROMPTS)])
    reference = greedy_reference(target, ids, mask, 10, eos_token_id=EOS_ID, **settings)
    plain = greedy_reference(target, ids, mask, 10, eos_token_id=EOS_ID)
    assert not torch.equal(reference, plain), "the setting must change the output for the test to mean anything"
    out = run(name, target, draft, ids, mask, do_sample=False, max_new_tokens=10, eos_token_id=EOS_ID, **settings)
    assert torch.equal(out, reference)


# ------------------------------------------------------------------------------------------ stop strings


def _stopping_string(target, tokenizer, ids, mask) -> str:
    """A two-token string from row 0's greedy continuation that stops it early under transformers."""
    plain = greedy_reference(target, ids, mask, 12)
    for cut in range(1, 9):
        stop = tokenizer.decode(plain[0, ids.shape[1] + cut : ids.shape[1] + cut + 2].tolist())
        if not torch.equal(greedy_reference(target, ids, mask, 12, stop_strings=[stop], tokenizer=tokenizer), plain):
            return stop
    raise AssertionError("no stop string in the continuation stops it: the test needs another prompt")


@pytest.mark.parametrize("where", ["generation_config", "model"])
def test_stop_strings_in_a_generation_config_with_tokenizer(where):
    tokenizer = char_tokenizer()
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    target = fresh_model("llama") if where == "model" else target
    ids, mask = left_pad(PROMPTS[:2])
    stop = _stopping_string(target, tokenizer, ids, mask)
    plain = greedy_reference(target, ids, mask, 12)
    config = copy.deepcopy(target.generation_config)
    # With an EOS id set, transformers pads a row that a stop string finished (as the strategies always do).
    config.update(stop_strings=[stop], max_new_tokens=12, do_sample=False, eos_token_id=EOS_ID)
    if where == "model":
        target.generation_config = config
        kwargs = {}
    else:
        kwargs = {"generation_config": config}
    reference = target.generate(ids, attention_mask=mask, tokenizer=tokenizer, **kwargs)
    assert not torch.equal(reference, plain)
    decoding.enable(target)
    out = target.generate(ids, attention_mask=mask, tokenizer=tokenizer,
                          strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3), **kwargs)
    assert torch.equal(out, reference)
    assert config.stop_strings == [stop], "the user's generation config must not be modified"


# ------------------------------------------------------------------------------------------ vocabularies


@pytest.mark.parametrize("name", NAMES)
def test_prompt_ids_beyond_a_scoring_helpers_vocabulary_are_refused(name):
    """A helper within 128 rows of embedding padding passes the compatibility check, but whose logits enter
    the score (an amateur, a proxy-tuning pair) cannot read a prompt id it has no row for. A draft can
    (speculative decoding stays exact whatever the draft reads)."""
    target = tiny_model("llama", vocab_size=96)
    helper = tiny_model("llama", vocab_size=64, seed=1000, num_layers=1)
    ids, mask = left_pad([[5, 90, 14], [3, 7, 11]])
    if name == "speculative":
        assert torch.equal(run(name, target, helper, ids, mask, do_sample=False),
                           greedy_reference(target, ids, mask, 8))
        return
    with pytest.raises(ValueError, match="beyond the .* vocabulary of 64 rows"):
        run(name, target, helper, ids, mask, do_sample=False)
