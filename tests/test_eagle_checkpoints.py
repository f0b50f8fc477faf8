"""EAGLE-3 heads on disk (``decoding.model_pairs.eagle``): a head written in the published layout by hand (the
field's parameter names, no embedding table, ``d2t``/``t2d``) loads and drafts; save and load round-trip; the
field's name variants load; broken folders and an unreachable hub id fail with messages that say what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import decoding
from decoding.model_pairs.eagle import load_head, save_head
from decoding.model_pairs.loading import ModelNotFoundError
from decoding.proposers.eagle_head import Eagle3Head
from models import greedy_reference, tiny_head, tiny_model

# The published layout of a one-layer head of width H over a draft vocabulary of Vd ids (target vocabulary V,
# kv width K): every tensor a published EAGLE-3 checkpoint holds, and nothing else.
H, V, VD, HEADS, KV_HEADS, I = 32, 96, 40, 4, 2, 64
K = H // HEADS * KV_HEADS
PUBLISHED = {
    "fc.weight": (H, 3 * H),
    "midlayer.hidden_norm.weight": (H,),
    "midlayer.input_layernorm.weight": (H,),
    "midlayer.self_attn.q_proj.weight": (H, 2 * H),
    "midlayer.self_attn.k_proj.weight": (K, 2 * H),
    "midlayer.self_attn.v_proj.weight": (K, 2 * H),
    "midlayer.self_attn.o_proj.weight": (H, H),
    "midlayer.post_attention_layernorm.weight": (H,),
    "midlayer.mlp.gate_proj.weight": (I, H),
    "midlayer.mlp.up_proj.weight": (I, H),
    "midlayer.mlp.down_proj.weight": (H, I),
    "norm.weight": (H,),
    "lm_head.weight": (VD, H),
}


def target():
    return tiny_model("llama", vocab_size=V, num_layers=4).to(torch.float64)


def write_published(folder, prefix: str = "", layer: str = "midlayer.") -> dict:
    """A head folder as a published EAGLE-3 checkpoint is laid out (``prefix``/``layer``: the field's variants)."""
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=generator, dtype=torch.float64) * 0.3 for name, shape in PUBLISHED.items()}
    used = torch.arange(3, 3 + 2 * VD, 2)
    state["d2t"], state["t2d"] = used - torch.arange(VD), torch.zeros(V, dtype=torch.bool).index_fill_(0, used, True)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({prefix + name.replace("midlayer.", layer): tensor for name, tensor in state.items()},
              str(folder / "model.safetensors"))
    config = dict(architectures=["LlamaForCausalLMEagle3"], model_type="llama", hidden_act="silu", hidden_size=H,
                  intermediate_size=I, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, num_hidden_layers=1,
                  max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False, vocab_size=V,
                  draft_vocab_size=VD, torch_dtype="float64", eagle_aux_hidden_state_layer_ids=[2, 2, 1])
    (folder / "config.json").write_text(json.dumps(config))
    return state


@pytest.mark.parametrize(("prefix", "layer"), [("", "midlayer."), ("model.", "midlayer."), ("", "layers.0.")])
def test_a_head_in_the_published_layout_loads_and_drafts_exactly(tmp_path, prefix, layer):
    state = write_published(tmp_path / "head", prefix, layer)
    head = load_head(tmp_path / "head")
    assert isinstance(head, Eagle3Head) and head.target_layers == (2, 2, 1) and head.embed_tokens is None
    assert torch.equal(head.fc.weight, state["fc.weight"]) and torch.equal(head.d2t, state["d2t"])
    assert head.target_ids().tolist() == list(range(3, 3 + 2 * VD, 2))
    model = target()
    decoding.enable(model)
    ids = torch.tensor([[5, 9, 14, 20], [3, 7, 11, 4]])
    strategy = decoding.SpeculativeDecoding(head, num_draft_tokens=3)
    out = model.generate(ids, max_new_tokens=10, do_sample=False, strategy=strategy)
    assert torch.equal(out, greedy_reference(model, ids, torch.ones_like(ids), 10)) and strategy.stats.drafted > 0


def test_save_then_load_gives_the_same_head(tmp_path):
    model = target()
    head = tiny_head(model, 40)
    save_head(head, tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == ["LlamaForCausalLMEagle3"]
    loaded = load_head(tmp_path / "saved")
    assert loaded.state_dict().keys() == head.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), head.state_dict().values()))
    features, tokens = torch.randn(1, 5, 3 * H, dtype=torch.float64), torch.tensor([[4, 5, 6, 7, 8]])
    embeds = model.get_input_embeddings()(tokens)
    for a, b in ((head, loaded),):
        torch.testing.assert_close(a(input_ids=tokens, features=features, inputs_embeds=embeds, use_cache=False).logits,
                                   b(input_ids=tokens, features=features, inputs_embeds=embeds, use_cache=False).logits)


def test_a_head_over_the_whole_vocabulary_needs_no_map(tmp_path):
    state = write_published(tmp_path / "head")
    state.pop("d2t"), state.pop("t2d")
    state["lm_head.weight"] = torch.randn(V, H, dtype=torch.float64)
    save_file(state, str(tmp_path / "head" / "model.safetensors"))
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    (tmp_path / "head" / "config.json").write_text(json.dumps({**config, "draft_vocab_size": V}))
    assert load_head(tmp_path / "head").target_ids().tolist() == list(range(V))


def test_a_folder_that_is_not_a_head_says_what_is_wrong(tmp_path):
    state = write_published(tmp_path / "head")
    state.pop("midlayer.hidden_norm.weight")
    save_file(state, str(tmp_path / "head" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['midlayer.hidden_norm.weight'\]"):
        load_head(tmp_path / "head")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_head(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"vocab_size": V, "hidden_size": H}))
    with pytest.raises(ModelNotFoundError, match="has no weights"):
        load_head(tmp_path / "empty")


def test_an_unreachable_hub_id_says_how_to_point_at_local_files(monkeypatch, tmp_path):
    """Offline (huggingface_hub's own switch, read when a download is attempted: nothing is sent) and not cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="pass its path instead|pass its folder"):
        load_head("someone/eagle3-head-that-is-not-cached")
    with pytest.raises(ModelNotFoundError, match="not a folder, and not a hub id"):
        load_head("no such/place!")
