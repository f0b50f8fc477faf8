"""One test per function of :mod:`decoding.hf_compat`, named after it: each pins one private or version-dependent
transformers detail the library relies on, so that a transformers release that changes it fails here, by name."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig, LlamaForCausalLM, MistralConfig
from transformers.generation import logits_process as lp

from decoding import hf_compat
from laws import left_pad
from models import PAD_ID, fresh_model, tiny_model

IDS = torch.tensor([[5, 9, 14, 3, 7, 11]])


def _capture_call(model, **generate_kwargs) -> dict:
    """What ``generate`` hands a ``custom_generate`` callable."""
    seen = {}

    def callable_(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None, **kwargs):
        seen.update(kwargs, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                    generation_config=generation_config)
        return input_ids

    model.generate(custom_generate=callable_, **generate_kwargs)
    return seen


def _filled_cache(model, ids=IDS) -> DynamicCache:
    cache = hf_compat.new_cache(model)
    with torch.no_grad():
        hf_compat.forward_with_cache(model, cache, input_ids=ids, use_cache=True)
    return cache


def test_cache_argument():
    model = tiny_model("llama")
    name = hf_compat.cache_argument(model)
    assert name in hf_compat.CACHE_ARGUMENTS
    cache = hf_compat.new_cache(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right name never warns
        with torch.no_grad():
            model(input_ids=IDS, use_cache=True, **{name: cache})
    assert cache.get_seq_length() == IDS.shape[1], "the cache passed under that name must be the one filled"


def test_forward_with_cache():
    model = tiny_model("gpt2")
    cache = _filled_cache(model, IDS[:, :4])
    with torch.no_grad():
        step = hf_compat.forward_with_cache(model, cache, input_ids=IDS[:, 4:], use_cache=True).logits
        full = model(input_ids=IDS).logits
    assert cache.get_seq_length() == IDS.shape[1]
    torch.testing.assert_close(step, full[:, 4:])


def test_generate_cache():
    model = tiny_model("llama")
    seen = _capture_call(model, input_ids=IDS, max_new_tokens=2)
    assert isinstance(hf_compat.generate_cache(seen), DynamicCache)
    cache = DynamicCache(config=model.config)
    for name in hf_compat.CACHE_ARGUMENTS:
        assert hf_compat.generate_cache({name: cache, "attention_mask": None}) is cache
    assert hf_compat.generate_cache({"attention_mask": None}) is None


def test_pad_token_tensor():
    seen = _capture_call(tiny_model("llama"), input_ids=IDS, max_new_tokens=2, pad_token_id=7)
    assert torch.equal(hf_compat.pad_token_tensor(seen["generation_config"]).reshape(-1), torch.tensor([7]))


def test_the_stopping_criteria_handed_over_carry_the_eos_ids_and_max_length():
    """Stopping reads EOS ids and the max length from the criteria ``generate`` hands over (public classes), not
    from the generation config, so a user's ``EosTokenCriteria`` or ``MaxLengthCriteria`` counts."""
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

    seen = _capture_call(tiny_model("llama"), input_ids=IDS, max_new_tokens=2, eos_token_id=[2, 9])
    eos = [c for c in seen["stopping_criteria"] if isinstance(c, EosTokenCriteria)]
    assert [c.eos_token_id.reshape(-1).tolist() for c in eos] == [[2, 9]]
    lengths = [c.max_length for c in seen["stopping_criteria"] if isinstance(c, MaxLengthCriteria)]
    assert lengths == [IDS.shape[1] + 2]


def test_supports_logits_to_keep():
    model = tiny_model("llama")
    assert hf_compat.supports_logits_to_keep(model)
    with torch.no_grad():
        assert model(input_ids=IDS, logits_to_keep=2).logits.shape[1] == 2


def test_from_config():
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = hf_compat.from_config(LlamaForCausalLM, config, torch.float64)
    assert type(model) is LlamaForCausalLM and model.dtype == torch.float64 and model.config.vocab_size == 40


def test_new_cache():
    model = tiny_model("qwen2", num_layers=3)
    cache = hf_compat.new_cache(model)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 0
    assert len(cache.layers) == 3


def test_rollback_unsupported_layers():
    assert hf_compat.rollback_unsupported_layers(hf_compat.new_cache(tiny_model("llama"))) == []
    config = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=4)
    sliding = AutoModelForCausalLM.from_config(config)
    found = hf_compat.rollback_unsupported_layers(DynamicCache(config=sliding.config))
    assert len(found) == 2 and all("Sliding" in name for name in found)
    # new_cache lays out full layers instead (tests/test_sliding_window.py checks the logits stay exact).
    assert hf_compat.rollback_unsupported_layers(hf_compat.new_cache(sliding)) == []
    assert hf_compat.uses_sliding_window(sliding)


def test_crop_cache():
    model = tiny_model("llama")
    cache = _filled_cache(model)
    reference = _filled_cache(model, IDS[:, :4])
    hf_compat.crop_cache(cache, 2)
    assert cache.get_seq_length() == 4
    for layer, expected in zip(cache.layers, reference.layers):
        torch.testing.assert_close(layer.keys, expected.keys)
        torch.testing.assert_close(layer.values, expected.values)
    hf_compat.crop_cache(cache, 0)
    assert cache.get_seq_length() == 4


def test_select_cache_rows():
    model = tiny_model("llama")
    batch = torch.tensor([[5, 9, 14], [3, 7, 11], [20, 21, 22]])
    cache = _filled_cache(model, batch)
    alone = _filled_cache(model, batch[[2, 0]])
    hf_compat.select_cache_rows(cache, torch.tensor([2, 0]))
    for layer, expected in zip(cache.layers, alone.layers):
        torch.testing.assert_close(layer.keys, expected.keys)


def test_gather_cache_slots():
    model = tiny_model("llama")
    cache = _filled_cache(model, torch.tensor([[5, 9, 14, 3], [3, 7, 11, 4]]))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    order = torch.tensor([[3, 1], [0, 2]])
    hf_compat.gather_cache_slots(cache, order)
    for layer, (keys, values) in zip(cache.layers, before):
        assert layer.keys.shape[2] == 2
        for row in range(2):
            assert torch.equal(layer.keys[row], keys[row][:, order[row]])
            assert torch.equal(layer.values[row], values[row][:, order[row]])


def test_warper_parameters():
    inf = float("inf")
    assert hf_compat.warper_parameters(lp.TemperatureLogitsWarper(0.7)) == ("temperature", 0.7, -inf, 1)
    assert hf_compat.warper_parameters(lp.TopKLogitsWarper(3, min_tokens_to_keep=5)) == ("top_k", 5, -inf, 1)
    assert hf_compat.warper_parameters(lp.TopKLogitsWarper(8, filter_value=-1e4)) == ("top_k", 8, -1e4, 1)
    assert hf_compat.warper_parameters(lp.TopPLogitsWarper(0.9, min_tokens_to_keep=2)) == ("top_p", 0.9, -inf, 2)
    assert hf_compat.warper_parameters(lp.MinPLogitsWarper(0.1)) is None
    # What generate builds from a sampling config is what the function reads.
    seen = _capture_call(tiny_model("llama"), input_ids=IDS, max_new_tokens=2, do_sample=True, temperature=0.5,
                         top_k=7, top_p=0.8)
    found = [hf_compat.warper_parameters(p) for p in seen["logits_processor"]]
    assert found == [("temperature", 0.5, -inf, 1), ("top_k", 7, -inf, 1), ("top_p", 0.8, -inf, 1)]


def test_per_row_state():
    model = fresh_model("llama")
    model.generation_config.pad_token_id = PAD_ID
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    seen = _capture_call(model, input_ids=ids, attention_mask=mask, max_new_tokens=2, repetition_penalty=1.5)
    (penalty,) = [p for p in seen["logits_processor"] if isinstance(p, lp.RepetitionPenaltyLogitsProcessor)]
    state = hf_compat.per_row_state(penalty)
    if isinstance(getattr(penalty, "prompt_ignore_length", None), torch.Tensor):  # transformers >= 5.23
        assert list(state) == ["prompt_ignore_length"]
        assert state["prompt_ignore_length"].reshape(-1).tolist() == [2, 0]
    else:
        assert state == {}
    assert hf_compat.per_row_state(lp.TemperatureLogitsWarper(0.7)) == {}


def test_generate_with_strategy():
    seen = {}

    def strategy(model, input_ids, logits_processor=None, stopping_criteria=None, generation_config=None,
                 decoding_streamer=None, **kwargs):
        seen["streamer"] = decoding_streamer
        return input_ids

    marker = object()
    model = tiny_model("llama")
    out = hf_compat.generate_with_strategy(model.generate, strategy, marker, IDS, max_new_tokens=2)
    assert seen["streamer"] is marker and torch.equal(out, IDS)


def test_rope_theta():
    """transformers 5 keeps the rotary base in ``rope_parameters``; older configs in ``rope_theta``."""
    assert hf_compat.rope_theta(LlamaConfig.from_dict({"rope_theta": 1e6, "hidden_size": 32})) == 1e6
    assert hf_compat.rope_theta(LlamaConfig(hidden_size=32)) == 10000.0
    legacy = type("Config", (), {"rope_theta": 5e5})()
    assert hf_compat.rope_theta(legacy) == 5e5
    scaled = LlamaConfig.from_dict({"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "hidden_size": 32})
    with pytest.raises(ValueError, match="not supported"):
        hf_compat.rope_theta(scaled)



@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "opt", "gpt_neox"])
@pytest.mark.parametrize("n", [1, 3])
def test_prepared_mask(arch, implementation, n):
    """The 4D mask of ``n`` new tokens is passed through unread and attends exactly where transformers' own mask
    from the 2D one does (holes among the cached slots and among the new ones)."""
    from decoding.evals.common.host_reads import OpCounter

    model = fresh_model(arch)
    model.config._attn_implementation = implementation
    model.eval()
    ids = torch.tensor([[5, 9, 14, 3], [6, 8, 2, 12]])
    prompt_mask = torch.ones_like(ids)  # (eager attention in float64 turns a padded query row into NaN)
    new = torch.tensor([[4, 10, 13], [7, 3, 9]])[:, :n]
    mask = torch.cat([prompt_mask, torch.ones(2, n, dtype=torch.int64)], dim=1)
    mask[0, 2] = 0  # a hole, as a rejected draft leaves
    if n > 1:
        mask[1, -1] = 0  # a new slot that is a hole (a row that proposed fewer drafts)
    positions = (mask.cumsum(dim=1) - 1).clamp_min(0)[:, -n:]
    outputs = []
    for prepared in (False, True):
        cache = hf_compat.new_cache(model)
        with torch.no_grad():
            hf_compat.forward_with_cache(model, cache, input_ids=ids, attention_mask=prompt_mask, use_cache=True)
            step_mask = hf_compat.prepared_mask(model, mask, n) if prepared else mask
            with OpCounter() as counter:
                logits = hf_compat.forward_with_cache(model, cache, input_ids=new, attention_mask=step_mask,
                                                      position_ids=positions, use_cache=True).logits
        outputs.append(logits)
        if prepared:
            assert step_mask.shape == (2, 1, n, ids.shape[1] + n) and counter.host_reads == 0
    torch.testing.assert_close(outputs[1][mask[:, -n:].bool()], outputs[0][mask[:, -n:].bool()])


@given(batch=st.integers(1, 3), kv_heads=st.integers(1, 3), groups=st.integers(1, 4), n=st.integers(1, 6),
       cached=st.integers(0, 9), seed=st.integers(0, 2**16))
def test_packed_sdpa_attention(batch, kv_heads, groups, n, cached, seed):
    """Packing the query heads of a key/value group into one head's rows gives transformers' own sdpa attention
    (which repeats every key and value per query head) for any mask of holes, without copying keys or values."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    gen = torch.Generator().manual_seed(seed)
    heads, width = kv_heads * groups, cached + n
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = groups, True, False
    query = torch.randn(batch, n, heads, 8, generator=gen, dtype=torch.float64).transpose(1, 2)  # as layers give it
    key, value = (torch.randn(batch, kv_heads, width, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.rand(batch, width, generator=gen) < 0.7
    mask[:, -n:] = True  # every new token reads itself
    prepared = hf_compat.prepared_mask(SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa")),
                                       mask.long(), n)
    expected, _ = sdpa_attention_forward(module, query, key, value, prepared, scaling=0.3)
    got, _ = hf_compat.packed_sdpa_attention(module, query, key, value, prepared, scaling=0.3)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.shape == (batch, n, heads, 8)


def test_packed_grouped_queries():
    """A model with grouped-query sdpa attention runs :func:`hf_compat.packed_sdpa_attention` inside the context
    (registered in transformers' AttentionInterface, switched by the private ``_attn_implementation_internal``) and
    its own attention again after, even when the forward raises; meanwhile ``attention_implementation`` still
    gives the user's (tests/test_output_layer.py runs threads that share a model)."""
    from unittest import mock

    model = fresh_model("llama")
    model.config._attn_implementation = "sdpa"
    assert hf_compat.packs_grouped_queries(model) and not hf_compat.packs_grouped_queries(fresh_model("gpt2"))
    ids = torch.tensor([[5, 9, 14, 3]])
    with mock.patch.object(hf_compat, "packed_sdpa_attention", wraps=hf_compat.packed_sdpa_attention) as spy:
        hf_compat._register_packed_sdpa.cache_clear()  # register the spy
        try:
            with torch.no_grad(), hf_compat.packed_grouped_queries(model):
                model(ids, attention_mask=hf_compat.prepared_mask(model, torch.ones_like(ids), 4))
                # What another thread sees meanwhile: the user's implementation, and 4D masks for it.
                assert model.config._attn_implementation == hf_compat.PACKED_SDPA
                assert hf_compat.attention_implementation(model) == "sdpa"
                assert hf_compat.prepared_mask(model, torch.ones_like(ids), 4).dim() == 4
            assert spy.call_count == model.config.num_hidden_layers
            with pytest.raises(RuntimeError), hf_compat.packed_grouped_queries(model):
                raise RuntimeError("a forward that fails")
        finally:
            hf_compat._register_packed_sdpa.cache_clear()
            hf_compat._register_packed_sdpa()
    assert model.config._attn_implementation == "sdpa"


def test_new_static_cache():
    """A static cache: preallocated StaticLayers written at their device counter, which crop_cache moves back
    (``StaticLayer.cumulative_length``), gather_cache_slots and select_cache_rows rewrite in place, and
    grow_static_cache enlarges keeping every slot; each equals the same operation on a DynamicCache."""
    model = fresh_model("llama")
    static, dynamic = hf_compat.new_static_cache(model, 12), hf_compat.new_cache(model)
    assert hf_compat.is_static(static) and not hf_compat.is_static(dynamic)
    ids = torch.tensor([[5, 9, 14, 3, 7], [6, 8, 2, 12, 4], [1, 2, 3, 4, 5]])

    def keys(cache, width):
        return cache.layers[1].keys[:, :, :width]

    with torch.no_grad():
        for cache in (static, dynamic):
            hf_compat.forward_with_cache(model, cache, input_ids=ids, use_cache=True)
            hf_compat.crop_cache(cache, 2)
            hf_compat.gather_cache_slots(cache, torch.tensor([[0, 2], [1, 2], [2, 0]]))
            hf_compat.select_cache_rows(cache, torch.tensor([2, 0]))
    assert static.layers[0].cumulative_length.item() == 2 and static.layers[0].keys.shape[:3] == (2, 2, 12)
    torch.testing.assert_close(keys(static, 2), keys(dynamic, 2), rtol=0, atol=0)
    hf_compat.grow_static_cache(static, 20)
    assert static.layers[1].keys.shape[2] == 20 and static.layers[1].max_cache_len == 20
    torch.testing.assert_close(keys(static, 2), keys(dynamic, 2), rtol=0, atol=0)


def test_check_static_cache():
    """A static cache is refused, with what to do, for a model with sliding-window layers or an attention
    implementation whose mask is not built here."""
    config = MistralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, sliding_window=4)
    with pytest.raises(ValueError, match="sliding-window layers: use cache='dynamic'"):
        hf_compat.check_static_cache(AutoModelForCausalLM.from_config(config), "target")
    model = fresh_model("llama")
    hf_compat.check_static_cache(model, "target")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="needs sdpa or eager attention; the draft .* uses 'flex_attention'"):
        hf_compat.check_static_cache(model, "draft")
