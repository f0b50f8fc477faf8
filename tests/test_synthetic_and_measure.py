"""The synthetic damped pair, the measurement helpers and an end-to-end tiny run of the speedup benchmark."""

from __future__ import annotations

import json
import math

import pytest
import torch

from decoding.evals import speedup
from decoding.evals.common import measure
from decoding.evals.common.batches import left_pad
from decoding.model_pairs.synthetic import damped_pair
from decoding.model_pairs.synthetic import llama_intermediate_size

TINY = {"num_layers": 3, "hidden_size": 64, "vocab_size": 128}


def test_damped_pair_shapes_and_config():
    target, draft = damped_pair(**TINY, num_key_value_heads=2)
    assert target.config.num_hidden_layers == 3 and len(target.model.layers) == 3
    assert draft.config.num_hidden_layers == 1 and len(draft.model.layers) == 1
    for model in (target, draft):
        assert model.config.hidden_size == 64 and model.config.vocab_size == 128
        assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 1
        assert model.config.intermediate_size == llama_intermediate_size(64) == 192
        assert model.config.pad_token_id == 0 and model.generation_config.pad_token_id == 0
        assert model.generation_config.eos_token_id is None
        assert not model.training
    assert llama_intermediate_size(512) == 1376


def test_draft_shares_target_weights_exactly():
    target, draft = damped_pair(**TINY, damping=0.1, head_scale=5.0)
    pairs = [
        (target.model.embed_tokens, draft.model.embed_tokens),
        (target.model.layers[0], draft.model.layers[0]),
        (target.model.norm, draft.model.norm),
        (target.lm_head, draft.lm_head),
    ]
    for source, copy in pairs:
        source_state, copy_state = source.state_dict(), copy.state_dict()
        assert source_state.keys() == copy_state.keys()
        for name, tensor in source_state.items():
            assert torch.equal(tensor, copy_state[name]), name
            assert tensor.data_ptr() != copy_state[name].data_ptr()  # copies, not shared storage
    # The head is scaled and layers after the first are damped relative to the undamped first layer's scale.
    undamped, _ = damped_pair(**TINY, damping=1.0, head_scale=1.0)
    assert torch.allclose(target.lm_head.weight, 5.0 * undamped.lm_head.weight)
    assert torch.equal(target.model.layers[0].self_attn.o_proj.weight, undamped.model.layers[0].self_attn.o_proj.weight)
    for layer, reference in zip(target.model.layers[1:], undamped.model.layers[1:]):
        assert torch.allclose(layer.self_attn.o_proj.weight, 0.1 * reference.self_attn.o_proj.weight)
        assert torch.allclose(layer.mlp.down_proj.weight, 0.1 * reference.mlp.down_proj.weight)
        assert torch.equal(layer.mlp.up_proj.weight, reference.mlp.up_proj.weight)


def test_damping_zero_makes_the_draft_the_target():
    target, draft = damped_pair(**TINY, damping=0.0)
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(target(ids).logits, draft(ids).logits, atol=1e-5)


def test_damped_pair_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, _ = damped_pair(**TINY, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    second, _ = damped_pair(**TINY, seed=7)
    other, _ = damped_pair(**TINY, seed=8)
    for (name, a), b, c in zip(first.state_dict().items(), second.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)


def test_damped_pair_dtype():
    target, draft = damped_pair(**TINY, dtype=torch.bfloat16)
    assert target.lm_head.weight.dtype == draft.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16


def test_ceiling_hand_values():
    # a = 0.8, g = 4: expected tokens per step (1 - 0.8^5) / 0.2 = 3.3616.
    assert measure.ceiling(0.8, 4, 0.1, 1.0) == pytest.approx(0.67232 / (0.2 * 1.4))
    assert measure.ceiling(0.8, 4, 0.16, 1.73) == pytest.approx(0.67232 / (0.2 * (0.64 + 1.73)))
    # v defaults to 1: Leviathan et al.'s (1 - a^(g+1)) / ((1 - a)(g c + 1)).
    assert measure.ceiling(0.6, 3, 0.05) == pytest.approx((1 - 0.6**4) / (0.4 * 1.15))
    # a == 1: the limit (g + 1) / (g c + v), approached continuously.
    assert measure.ceiling(1.0, 4, 0.1, 1.5) == pytest.approx(5 / 1.9)
    assert measure.ceiling(1 - 1e-9, 4, 0.1, 1.5) == pytest.approx(5 / 1.9, rel=1e-6)
    # a == 0: one token per step for the price of g draft forwards and a verification.
    assert measure.ceiling(0.0, 4, 0.1, 1.5) == pytest.approx(1 / 1.9)
    assert measure.efficiency(1.2, 1.5) == pytest.approx(0.8)
    assert math.isnan(measure.efficiency(1.0, 0.0))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.75, 0.99, 1.0])
@pytest.mark.parametrize("g", [1, 4, 8])
def test_per_token_acceptance_inverts_tokens_per_step(alpha, g):
    tau = measure.ceiling(alpha, g, 0.0, 1.0)  # expected tokens per step at c = 0, v = 1
    assert measure.per_token_acceptance(tau, g) == pytest.approx(alpha, abs=1e-9)
    # vLLM's acceptance rate E[accepted] / g is lower than alpha: 0.75 at g = 4 gives about 0.51.
    if alpha == 0.75 and g == 4:
        assert (tau - 1) / g == pytest.approx(0.5127, abs=1e-4)


def test_cost_ratios_and_timers():
    target, draft = damped_pair(**TINY)
    costs = measure.cost_ratios(target, draft, batch_size=2, context_length=8, draft_lengths=(1, 3), repeats=3, warmup=1)
    assert costs["c"] > 0 and set(costs["v"]) == {1, 3} and all(v > 0 for v in costs["v"].values())
    assert set(costs["seconds"]) == {"draft_1", "target_1", "target_2", "target_4"}
    timer = measure.forward_timer(target, 1, 5, 2)
    assert timer() > 0 and timer() > 0  # the cache is cropped back between calls
    times = measure.time_calls(lambda: None, repeats=4, warmup=2)
    assert len(times) == 4 and min(times) >= 0
    ids = torch.ones(2, 7, dtype=torch.int64)
    assert measure.tokens_per_second(lambda: ids, prompt_length=3, repeats=2) > 0


def test_left_pad_and_prompts():
    prompts = speedup.make_prompts(3, 50, 2, 5, seed=1)
    assert [p.numel() for p in prompts] == [p.numel() for p in speedup.make_prompts(3, 50, 2, 5, seed=1)]
    assert all(2 <= p.numel() <= 5 and int(p.min()) >= 1 and int(p.max()) < 50 for p in prompts)
    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_speedup_main_tiny_end_to_end(tmp_path, capsys):
    path = tmp_path / "out" / "speedup.json"
    result = speedup.main([
        "--num-layers", "2", "--hidden-size", "32", "--vocab-size", "96", "--dtype", "float64",
        "--batch-sizes", "1,3", "--draft-lengths", "2", "--max-new-tokens", "5", "--prompts", "2",
        "--min-prompt-length", "3", "--max-prompt-length", "6", "--rounds", "1", "--cost-repeats", "2",
        "--quiet", "--json", str(path),
    ])
    written = json.loads(path.read_text())
    assert written.keys() == result.keys() == {"meta", "costs", "checks", "cells"}
    for key in ("date", "git_commit", "torch", "transformers", "device", "device_name", "arguments"):
        assert key in written["meta"]
    assert set(written["costs"]) == {"1", "3"} and set(written["costs"]["1"]["v"]) == {"2"}
    cells = {(c["batch_size"], c["method"]): c for c in written["cells"]}
    assert set(cells) == {(1, "target"), (1, "assisted"), (1, "speculative"), (3, "target"), (3, "speculative")}
    for cell in cells.values():
        assert cell["tokens_per_s"] > 0 and cell["speedup"] > 0
        assert cell["matches_target"] is True  # float64: greedy outputs must equal the target's exactly
    for key in ("acceptance_rate", "mean_accepted_length", "per_position_acceptance", "c", "v", "ceiling", "efficiency"):
        assert key in cells[(3, "speculative")] and key in cells[(1, "assisted")]
    spec = cells[(1, "speculative")]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and 1.0 <= spec["mean_accepted_length"] <= 3.0
    assert len(spec["per_position_acceptance"]) == 2
    assert spec["ceiling"] == pytest.approx(measure.ceiling(spec["alpha"], 2, spec["c"], spec["v"]))
    assert spec["ceiling"] == pytest.approx(spec["mean_accepted_length"] / (2 * spec["c"] + spec["v"]))
    assert "speculative g=2" in capsys.readouterr().out


def test_rotated_puts_every_item_at_every_place():
    items = ["a", "b", "c"]
    orders = [measure.rotated(items, shift) for shift in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert measure.rotated(items, 4) == orders[1] and measure.rotated(tuple(items), -1) == orders[2]
    assert all(sorted(order) == items for order in orders)
