"""The output layer of a few-row forward on a CPU, as ``W @ h^T`` (``decoding.output_layer``): the same product as
``F.linear`` to rounding, only while a strategy's forward runs, safe when threads share a model, and greedy output
still equal to transformers' own."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import decoding
from decoding.output_layer import MAX_ROWS, few_rows_layout, few_rows_linear, swappable_output_layer
from laws import left_pad
from models import greedy_reference, save_llama, tiny_model, tiny_pair, word_tokenizer


@pytest.mark.parametrize("rows", [1, 2, 5, MAX_ROWS, MAX_ROWS + 1])
@pytest.mark.parametrize("bias", [False, True])
def test_it_is_the_same_product_as_f_linear(rows, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 300, bias=bias).double()
    x = torch.randn(1, rows, 48, dtype=torch.float64)
    torch.testing.assert_close(few_rows_linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-12,
                               atol=1e-14)


def test_the_swap_lasts_only_as_long_as_the_forward():
    model = tiny_model("llama")
    layer = model.get_output_embeddings()
    calls = []
    real = few_rows_linear

    assert swappable_output_layer(model) is layer
    with few_rows_layout(layer):
        assert "forward" in vars(layer)
        with few_rows_layout(layer):  # nested, as threads overlap
            assert "forward" in vars(layer)
        assert "forward" in vars(layer)
    assert "forward" not in vars(layer) and type(layer).forward is torch.nn.Linear.forward
    target, draft = tiny_pair("llama", draft_kind="noisy_copy", noise=0.1)
    decoding.enable(target)
    ids, mask = left_pad([[5, 9, 14], [3, 7, 11, 4, 8]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("decoding.output_layer.few_rows_linear",
                      lambda layer, x: calls.append(x.reshape(-1, x.shape[-1]).shape[0]) or real(layer, x))
        out = target.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                              strategy=decoding.SpeculativeDecoding(draft, num_draft_tokens=3))
    assert torch.equal(out, greedy_reference(target, ids, mask, 8))
    assert any(2 <= n <= MAX_ROWS for n in calls), calls  # verification forwards went through it
    assert "forward" not in vars(target.get_output_embeddings())


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
    assert "forward" not in vars(target.get_output_embeddings())


def test_the_environment_keeps_f_linear_or_refuses_a_bad_value(monkeypatch):
    model = tiny_model("llama")
    monkeypatch.setenv("DECODING_OUTPUT_LAYER", "linear")
    assert swappable_output_layer(model) is None
    with few_rows_layout(swappable_output_layer(model)):
        assert "forward" not in vars(model.get_output_embeddings())
    monkeypatch.setenv("DECODING_OUTPUT_LAYER", "fast")
    with pytest.raises(ValueError, match="'auto' or 'linear'"):
        swappable_output_layer(model)


def test_the_verification_cost_command_reports_both_layouts(tmp_path, capsys):
    from decoding.evals import verification_cost

    folder = save_llama(tmp_path / "target", num_layers=2, seed=0, tokenizer=word_tokenizer())
    assert verification_cost.main(["--target", str(folder), "--cache", "8", "--tokens", "1,2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "output layer W @ h^T: t(1)" in out and "output layer F.linear: t(1)" in out and "v " in out
    assert "output layer alone, 2 row(s)" in out

