"""Bad input raises a clear ``ValueError`` before any work.

Every model in these tests has its ``forward`` replaced by one that fails, so an error raised after any
forward pass (target, draft, or the encoder of an encoder-decoder model) fails the test; each test asserts
on a key phrase of the message.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    DynamicCache,
    T5Config,
    T5ForConditionalGeneration,
)

import decoding
from decoding import hf_compat
from decoding.validation import learned_position_limit
from models import (
    MAX_POSITIONS,
    PAD_ID,
    VOCAB,
    ForwardCalled,
    forbid_forward,
    fresh_model,
    tiny_config,
    tiny_model,
    tiny_pair,
)


@pytest.fixture
def pair():
    """A fresh (target, draft) pair whose forward passes fail; the target is ``decoding.enable``d."""
    target = forbid_forward(fresh_model("llama"))
    draft = forbid_forward(fresh_model("llama", seed=1000, num_layers=1))
    decoding.enable(target)
    return target, draft


PROMPT = torch.tensor([[5, 6, 7], [8, 9, 10]])


def generate(target, draft, input_ids=PROMPT, g=2, path="enable", **kwargs):
    strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
    kwargs.setdefault("max_new_tokens", 4)
    if path == "enable":
        return target.generate(input_ids, strategy=strategy, **kwargs)
    return target.generate(input_ids, custom_generate=strategy, **kwargs)


def test_the_forward_guard_works(pair):
    target, draft = pair
    with pytest.raises(ForwardCalled):
        generate(target, draft)


@pytest.mark.parametrize("g", [0, -1, 1.5, "4", None])
def test_num_draft_tokens(g):
    draft = fresh_model("llama", seed=1000, num_layers=1)
    with pytest.raises(ValueError, match="num_draft_tokens must be an int >= 1"):
        decoding.SpeculativeDecoding(draft, num_draft_tokens=g)


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_beam_search(pair, path):
    with pytest.raises(ValueError, match="beam search") as err:
        generate(*pair, path=path, num_beams=2)
    assert "num_beams=2" in str(err.value)


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_draft_on_another_device(path):
    target = forbid_forward(fresh_model("llama"))
    decoding.enable(target)
    draft = fresh_model("llama", seed=1000, num_layers=1).to("meta")
    with pytest.raises(ValueError, match="draft model is on meta but the target is on cpu") as err:
        generate(target, draft, path=path)
    assert ".to('cpu')" in str(err.value)


def _t5(forbid=True):
    config = T5Config(vocab_size=96, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                      decoder_start_token_id=PAD_ID, pad_token_id=PAD_ID, eos_token_id=2)
    model = T5ForConditionalGeneration(config).eval()
    return forbid_forward(model) if forbid else model


def _bart(forbid=True):
    config = BartConfig(vocab_size=96, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
                        pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2)
    model = BartForConditionalGeneration(config).eval()
    return forbid_forward(model) if forbid else model


@pytest.mark.parametrize("factory", [_t5, _bart], ids=["t5", "bart"])
def test_encoder_decoder_target(factory, pair):
    """With ``enable`` the check runs before transformers' setup, which would run the encoder."""
    _, draft = pair
    target = decoding.enable(factory())
    with pytest.raises(ValueError, match="target model is an encoder-decoder model"):
        generate(target, draft)


@pytest.mark.parametrize("factory", [_t5, _bart], ids=["t5", "bart"])
def test_encoder_decoder_target_through_custom_generate(factory, pair):
    """Through ``custom_generate`` transformers runs the encoder before calling the strategy (nothing to be
    done about that); the decoder never runs and the message is the same."""
    _, draft = pair
    target = factory(forbid=False)
    forbid_forward(target.get_decoder())
    with pytest.raises(ValueError, match="target model is an encoder-decoder model"):
        generate(target, draft, path="custom_generate")


@pytest.mark.parametrize("factory", [_t5, _bart], ids=["t5", "bart"])
def test_encoder_decoder_draft(factory, pair):
    target, _ = pair
    with pytest.raises(ValueError, match="draft model is an encoder-decoder model"):
        generate(target, factory())


def test_missing_pad_token_at_batch_2():
    target = forbid_forward(fresh_model("llama"))
    draft = forbid_forward(fresh_model("llama", seed=1000, num_layers=1))
    decoding.enable(target)
    target.generation_config.pad_token_id = None
    assert target.generation_config.eos_token_id is None
    with pytest.raises(ValueError, match="needs a pad token") as err:
        generate(target, draft)
    assert "pad_token_id" in str(err.value)


@pytest.mark.parametrize("path", ["enable", pytest.param("custom_generate", marks=pytest.mark.xfail(
    strict=True, raises=IndexError,
    reason="transformers 5.23 reads input_ids[:, -1] (right-padding check) before calling custom_generate"))])
def test_empty_prompt(pair, path):
    with pytest.raises(ValueError, match="empty prompt"):
        generate(*pair, input_ids=torch.zeros(2, 0, dtype=torch.int64), path=path)


def test_empty_prompt_without_pad_token_through_custom_generate():
    """Without a pad token transformers skips its padding check, and the strategy's own check answers."""
    target = forbid_forward(fresh_model("llama"))
    draft = forbid_forward(fresh_model("llama", seed=1000, num_layers=1))
    target.generation_config.pad_token_id = None
    with pytest.raises(ValueError, match="empty prompt"):
        generate(target, draft, input_ids=torch.zeros(1, 0, dtype=torch.int64), path="custom_generate")


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_a_row_of_padding_only(pair, path):
    mask = torch.tensor([[0, 0, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="empty prompt"):
        generate(*pair, attention_mask=mask, path=path)


@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_right_padded_prompt(pair, path):
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded") as err:
        generate(*pair, attention_mask=mask, path=path)
    assert "padding_side = 'left'" in str(err.value)


def test_inputs_embeds(pair):
    target, draft = pair
    embeds = torch.zeros(2, 3, target.config.hidden_size, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"cannot feed model inputs \['inputs_embeds'\]"):
        generate(target, draft, inputs_embeds=embeds)


@pytest.mark.parametrize("return_dict", [True, False])
@pytest.mark.parametrize("flag", ["output_attentions", "output_hidden_states"])
def test_output_attentions_and_hidden_states(pair, flag, return_dict):
    """The dedicated message, whether the flag reaches the strategy in the config or among the model inputs."""
    with pytest.raises(ValueError, match=f"{flag}=True is not supported"):
        generate(*pair, return_dict_in_generate=return_dict, **{flag: True})


def _short_config(arch: str, positions: int):
    """A one-layer config of ``arch`` whose learned position table holds ``positions`` entries."""
    config = tiny_config(arch, num_layers=1)
    setattr(config, "n_positions" if arch == "gpt2" else "max_position_embeddings", positions)
    return config


def _short_model(arch: str, positions: int):
    torch.manual_seed(0)
    return forbid_forward(AutoModelForCausalLM.from_config(_short_config(arch, positions)))


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
@pytest.mark.parametrize("role", ["draft", "amateur"])
def test_a_helper_with_fewer_learned_positions_than_the_call_reaches_is_refused(arch, role):
    """A GPT-2 draft with n_positions=32 and a 40-token prompt crashed with an IndexError in its position
    embedding; now a ValueError that names the limit comes before any forward (OPT's table has an offset of 2)."""
    target = forbid_forward(fresh_model(arch))
    helper = _short_model(arch, 32)
    decoding.enable(target)
    strategy = (decoding.SpeculativeDecoding(helper, num_draft_tokens=3) if role == "draft"
                else decoding.ContrastiveDecoding(helper))
    prompt = torch.randint(3, 90, (1, 40), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=rf"the {role} model learns absolute position embeddings for 32 positions"):
        target.generate(prompt, max_new_tokens=4, strategy=strategy)


@pytest.mark.parametrize("arch", ["gpt2", "opt"])
def test_a_helper_whose_positions_suffice_exactly_runs(arch):
    target, _ = tiny_pair(arch)
    helper = AutoModelForCausalLM.from_config(_short_config(arch, 16))
    decoding.enable(target)
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    out = target.generate(prompt, max_new_tokens=3, do_sample=False,
                          strategy=decoding.SpeculativeDecoding(helper, num_draft_tokens=3))
    assert out.shape == (1, 13)
    with pytest.raises(ValueError, match="at most 13 tokens in all"):
        target.generate(prompt, max_new_tokens=4, strategy=decoding.SpeculativeDecoding(helper, num_draft_tokens=3))


def test_rotary_helpers_have_no_learned_position_limit():
    assert learned_position_limit(tiny_model("llama")) is None
    assert learned_position_limit(tiny_model("gpt_neox")) is None
    assert learned_position_limit(tiny_model("gpt2")) == MAX_POSITIONS
    assert learned_position_limit(tiny_model("opt")) == MAX_POSITIONS


def test_prefix_allowed_tokens_fn(pair):
    with pytest.raises(ValueError, match="prefix_allowed_tokens_fn") as err:
        generate(*pair, prefix_allowed_tokens_fn=lambda batch_id, ids: [5, 6])
    assert "not supported" in str(err.value)


def test_prefilled_past_key_values():
    target = fresh_model("llama")
    cache = DynamicCache(config=target.config)
    with torch.no_grad():
        hf_compat.forward_with_cache(target, cache, input_ids=PROMPT, use_cache=True)
    forbid_forward(target)
    draft = forbid_forward(fresh_model("llama", seed=1000, num_layers=1))
    decoding.enable(target)
    with pytest.raises(ValueError, match="prefilled cache"):
        generate(target, draft, input_ids=torch.cat([PROMPT, PROMPT], dim=1), **{hf_compat.cache_argument(target): cache})


def test_vocab_mismatch_is_checked_before_any_work():
    target = forbid_forward(fresh_model("llama"))
    draft = forbid_forward(fresh_model("llama", vocab_size=400, seed=1000, num_layers=1))
    decoding.enable(target)
    with pytest.raises(ValueError, match="vocab"):
        generate(target, draft)


@pytest.mark.parametrize("settings, mode", [
    (dict(penalty_alpha=0.6, top_k=4), "contrastive_search"),
    (dict(dola_layers="high"), "dola_generation"),
    (dict(prompt_lookup_num_tokens=3), "assisted_generation"),
])
@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_settings_of_other_generation_modes_are_refused(pair, path, settings, mode):
    with pytest.raises(ValueError, match=f"'{mode}' mode"):
        generate(*pair, path=path, **settings)


@pytest.mark.parametrize("input_ids, error, needle", [
    (torch.zeros(0, 3, dtype=torch.int64), ValueError, "empty batch"),
    (torch.tensor([5, 6, 7]), ValueError, r"shape \[batch, length\]"),
    (torch.tensor([[5.0, 6.0]]), TypeError, "integer token ids"),
    (torch.tensor([[5, VOCAB]]), ValueError, f"token id {VOCAB}, outside the target's vocabulary"),
    (torch.tensor([[5, -3]]), ValueError, "token id -3, outside"),
], ids=["no-rows", "1-d", "float", "too-large", "negative"])
@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_malformed_input_ids(pair, path, input_ids, error, needle):
    if path == "custom_generate" and needle in ("empty batch", r"shape \[batch, length\]", "integer token ids"):
        pytest.skip("transformers' own setup fails first on this input without strategy= (its own error)")
    with pytest.raises(error, match=needle):
        generate(*pair, input_ids=input_ids, path=path)


@pytest.mark.parametrize("mask, needle", [
    (torch.ones(1, 3, dtype=torch.int64), "attention_mask has shape"),
    (torch.full((1, 4), 2), "only 0 .padding. and 1"),
], ids=["shape", "values"])
@pytest.mark.parametrize("path", ["enable", "custom_generate"])
def test_malformed_attention_mask(pair, path, mask, needle):
    if path == "custom_generate" and needle == "attention_mask has shape":
        pytest.skip("transformers' own setup fails first on this input without strategy= (its own error)")
    with pytest.raises(ValueError, match=needle):
        generate(*pair, input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=mask, path=path)


def test_input_ids_that_are_not_a_tensor(pair):
    with pytest.raises(TypeError, match="input_ids must be a tensor"):
        pair[0].generate([[5, 6, 7]], strategy=decoding.SpeculativeDecoding(pair[1]), max_new_tokens=2)


@pytest.mark.parametrize("threshold, ok", [(float("inf"), True), (0, True), (float("nan"), False), (-1, False),
                                          (True, False)])
def test_compact_threshold(threshold, ok):
    draft = fresh_model("llama", seed=1000, num_layers=1)
    if ok:
        assert decoding.SpeculativeDecoding(draft, compact_threshold=threshold).compact_threshold == threshold
    else:
        with pytest.raises(ValueError, match="compact_threshold must be a number >= 0"):
            decoding.SpeculativeDecoding(draft, compact_threshold=threshold)


def test_cache_kind():
    draft = fresh_model("llama", seed=1000, num_layers=1)
    assert decoding.SpeculativeDecoding(draft, cache="static").cache == "static"
    with pytest.raises(ValueError, match="cache must be 'dynamic' or 'static', got 'paged'"):
        decoding.SpeculativeDecoding(draft, cache="paged")


def test_a_static_cache_refuses_a_sliding_window_target_before_any_forward():
    from models import SLIDING_ARCHS, tiny_model

    target = tiny_model(SLIDING_ARCHS[0], num_layers=2)
    decoding.enable(target)
    strategy = decoding.SpeculativeDecoding(decoding.PromptLookup(), cache="static")
    with pytest.raises(ValueError, match="the target .* has sliding-window layers: use cache='dynamic'"):
        target.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, strategy=strategy)
