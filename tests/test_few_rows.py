"""A model's linear layers over a few rows on a CPU, as ``W @ h^T`` (``decoding.few_rows``): the same product as
``F.linear`` to rounding, for every plain linear layer, only while a strategy's forward runs, safe when threads share
a model, and greedy output still equal to transformers' own."""

from __future__ import annotations

import copy
import functools
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

import decoding
from decoding.few_rows import MIN_BYTES, few_rows_layout, few_rows_linear, max_rows, swappable_layers
from laws import left_pad
from models import greedy_reference, save_llama, tiny_model, tiny_pair, word_tokenizer


@pytest.fixture(autouse=True)
def always(monkeypatch):
    """Tiny models' weights stay in cache, where ``auto`` leaves them to ``F.linear``: these tests swap anyway."""
    monkeypatch.setenv("DECODING_FEW_ROWS", "always")


@settings(max_examples=40, deadline=None)
@given(out_features=st.integers(1, 900), in_features=st.integers(1, 64), rows=st.integers(1, 10),
       bias=st.booleans(), transposed=st.booleans())
def test_it_is_the_same_product_as_f_linear(out_features, in_features, rows, bias, transposed):
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=bias).double()
    # transposed: rows laid out as the output of a swapped layer is (W @ h^T).T, as the next layer receives it
    x = torch.randn(in_features, rows, dtype=torch.float64).T if transposed else torch.randn(rows, in_features,
                                                                                            dtype=torch.float64)
    x = x.unsqueeze(0)  # [1, rows, in]
    torch.testing.assert_close(few_rows_linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize(("out_features", "in_features", "expected"), [(800, 48, 8), (300, 48, 6), (48, 48, 6),
                                                                        (48, 96, 4)])
def test_the_row_limit_follows_the_layers_shape(out_features, in_features, expected):
    assert max_rows(torch.nn.Linear(in_features, out_features)) == expected


def _linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def test_every_linear_layer_is_swapped_only_while_the_forward_runs():
    model = tiny_model("llama")
    layers = _linears(model)
    assert len(layers) > 7 and model.get_output_embeddings() in layers
    layout = swappable_layers(model)
    assert layout is swappable_layers(model) and set(layout.layers) == set(layers)  # made once per model
    with few_rows_layout(layout):
        assert all("forward" in vars(layer) for layer in layers)
        with few_rows_layout(swappable_layers(model)):  # nested, as threads overlap
            assert all("forward" in vars(layer) for layer in layers)
        assert all("forward" in vars(layer) for layer in layers)
    assert not any("forward" in vars(layer) for layer in layers)
    assert all(type(layer).forward is torch.nn.Linear.forward for layer in layers)


def test_a_layer_whose_forward_someone_replaced_is_left_alone():
    """accelerate's hooks (offloading, device maps) replace a layer's forward on the instance: the swap would
    bypass them, and undo them when it ends."""
    model = copy.deepcopy(tiny_model("llama"))
    hooked = model.get_output_embeddings()
    hooked.forward = hook = functools.partial(torch.nn.Linear.forward, hooked)
    layout = swappable_layers(model)
    assert hooked not in layout.layers and len(layout.layers) == len(_linears(model)) - 1
    later = model.model.layers[0].mlp.down_proj  # hooked after the layout was made
    later.forward = late_hook = functools.partial(torch.nn.Linear.forward, later)
    with few_rows_layout(layout):
        assert vars(hooked)["forward"] is hook and vars(later)["forward"] is late_hook
    assert vars(hooked)["forward"] is hook and vars(later)["forward"] is late_hook


def test_a_models_own_generate_runs_through_it_with_the_same_greedy_output():
    model = tiny_model("llama")
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    expected = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    seen = []
    real = few_rows_linear
    with pytest.MonkeyPatch.context() as patch, decoding.fast_cpu_linears(model):
        patch.setattr("decoding.few_rows.few_rows_linear",
                      lambda layer, x: seen.append(x.reshape(-1, x.shape[-1]).shape[0]) or real(layer, x))
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, expected) and 2 in seen  # one token for each of the two rows
    assert not any("forward" in vars(layer) for layer in _linears(model))


def test_speculative_forwards_go_through_it_and_keep_the_greedy_output():
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    seen = []
    real = few_rows_linear
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("decoding.few_rows.few_rows_linear",
                      lambda layer, x: seen.append((layer, x.reshape(-1, x.shape[-1]).shape[0])) or real(layer, x))
        out = target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                              strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=1))
    assert torch.equal(out, greedy_reference(target, ids, mask, 8))
    swapped = {layer for layer, n in seen if 2 <= n <= max_rows(layer)}  # verification: 2 rows x 2 positions
    assert set(_linears(target)) <= swapped and set(_linears(draft)) <= {layer for layer, _ in seen}
    assert not any("forward" in vars(layer) for layer in _linears(target) + _linears(draft))


def test_threads_sharing_a_model_each_get_the_targets_greedy_output():
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    prompts = [left_pad([[5 + t, 9, 14], [3, 7 + t, 11, 4, 8]]) for t in range(4)]
    expected = [greedy_reference(target, ids, mask, 16) for ids, mask in prompts]
    results, errors = [None] * 4, []

    def work(t):
        try:
            ids, mask = prompts[t]
            strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
            for _ in range(3):
                results[t] = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                             strategy=strategy)
        except Exception as error:  # noqa: BLE001 - reported to the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(torch.equal(r, e) for r, e in zip(results, expected))
    assert not any("forward" in vars(layer) for layer in _linears(target))


def test_the_environment_keeps_f_linear_or_refuses_a_bad_value(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setenv("DECODING_FEW_ROWS", "linear")
    assert swappable_layers(model) is None
    with few_rows_layout(swappable_layers(model)):
        assert not any("forward" in vars(layer) for layer in _linears(model))
    monkeypatch.setenv("DECODING_FEW_ROWS", "fast")
    with pytest.raises(ValueError, match="one of 'auto', 'linear', 'always', got 'fast'"):
        swappable_layers(model)


def test_auto_swaps_only_weights_that_outgrow_the_caches(monkeypatch):
    monkeypatch.setenv("DECODING_FEW_ROWS", "auto")
    assert swappable_layers(tiny_model("llama")) is None
    side = 2 ** 12  # one 4096 x 4096 float32 layer: 64 MiB
    big = torch.nn.Sequential(torch.nn.utils.skip_init(torch.nn.Linear, side, side, bias=False), torch.nn.ReLU())
    assert big[0].weight.nbytes == MIN_BYTES and swappable_layers(big).layers == (big[0],)
    small = torch.nn.utils.skip_init(torch.nn.Linear, side, side - 1, bias=False)
    assert swappable_layers(small) is None
    half = torch.nn.utils.skip_init(torch.nn.Linear, side, 2 * side, bias=False, dtype=torch.bfloat16)
    assert swappable_layers(half) is None  # bfloat16 runs other kernels: not measured, left to F.linear
    draft = tiny_model("llama")  # beside a target that big, a draft's weights are evicted every step: swapped
    assert swappable_layers(draft, beside=big).layers == tuple(_linears(draft))


def test_the_old_variable_still_works_with_a_warning(monkeypatch):
    monkeypatch.delenv("DECODING_FEW_ROWS")
    monkeypatch.setenv("DECODING_OUTPUT_LAYER", "linear")
    with pytest.warns(FutureWarning, match="DECODING_FEW_ROWS"):
        assert swappable_layers(tiny_model("llama")) is None


def test_the_verification_cost_command_reports_both_layouts(tmp_path, capsys):
    from decoding.evals import verification_cost

    folder = save_llama(tmp_path / "target", num_layers=2, seed=0, tokenizer=word_tokenizer())
    assert verification_cost.main(["--target", str(folder), "--cache", "8", "--tokens", "1,2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "linear layers W @ h^T: t(1)" in out and "linear layers F.linear: t(1)" in out and "v " in out
    assert " alone, 2 row(s): F.linear " in out

