"""``decoding-bench``: prompt sets, bad input (one line on stderr, nonzero exit, no traceback), a tiny run on the
synthetic pair and on a tiny saved pair, and a data-parallel run over two CPU processes."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import decoding
from decoding.kernels import ops as kernels_ops
from decoding.evals.bench import args as bench_args
from decoding.evals.bench import cli as bench
from decoding.evals.bench import plot, report
from decoding.evals.bench import prompts as bench_prompts
from decoding.evals.common import measure
from decoding.evals.common.batches import make_batches
from cli_checks import error_line
from models import CHECKOUT_ENV as ENV, save_llama, word_tokenizer

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
# Subprocesses import the same checkout as this test, whatever the installed copy points at.

# A tiny synthetic pair and grid: float64, so greedy outputs must equal the target's exactly.
TINY = ["--synthetic", "layers=2,hidden=32,vocab=96", "--dtype", "float64", "--max-prompt-tokens", "12",
        "--max-new-tokens", "6", "--rounds", "1", "--cost-repeats", "2", "--quiet"]


# ----------------------------------------------------------------------------------------------- prompts


def test_shipped_prompt_files_parse_and_cover_every_category():
    files = sorted(bench_prompts.PROMPTS_DIR.glob("*.jsonl"))
    assert {f.stem for f in files} == set(bench_prompts.CATEGORIES)
    for file in files:
        for line in file.read_text().splitlines():
            record = json.loads(line)
            assert set(record) == {"id", "category", "prompt"} and record["category"] == file.stem
    prompts = bench_prompts.load_prompt_set()
    counts = {c: sum(p.category == c for p in prompts) for c in bench_prompts.CATEGORIES}
    assert all(6 <= n <= 12 for n in counts.values()), counts
    assert len({p.id for p in prompts}) == len(prompts)


def test_default_selection_is_dominated_by_code_and_interleaved():
    selected = bench_prompts.select_prompts(bench_prompts.load_prompt_set())
    code = [p for p in selected if p.category.startswith("code")]
    assert {p.category for p in selected} == set(bench_prompts.CATEGORIES)
    assert len(code) > len(selected) / 2 - 1 and len(code) == max(
        sum(p.category == c for p in selected) for c in bench_prompts.CATEGORIES) + 1
    assert selected[0].category != selected[1].category  # batches mix categories
    two = bench_prompts.select_prompts(bench_prompts.load_prompt_set(), ["math", "retrieval"], 2)
    assert [p.category for p in two] == ["math", "retrieval", "math", "retrieval"]
    with pytest.raises(ValueError, match="unknown category poetry"):
        bench_prompts.select_prompts(bench_prompts.load_prompt_set(), ["poetry"], 1)


def test_prompt_set_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "category": "x", "prompt": "p"}\n{"id": "b", "category": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object"):
        bench_prompts.load_prompt_set(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        bench_prompts.load_prompt_set(bad)


def test_prefill_ceiling_and_ratios():
    assert measure.prefill_ceiling(0.8, 4, 0.1, 1.6, 0.0, 0.0, 50) == pytest.approx(measure.ceiling(0.8, 4, 0.1, 1.6))
    assert measure.prefill_ceiling(0.8, 4, 0.1, 1.6, 8.0, 1.0, 1e9) == pytest.approx(measure.ceiling(0.8, 4, 0.1, 1.6))
    # 32 new tokens after an 8-forward prefill: (8 + 32) / (8 + 1 + 32 * 2 / 3.3616).
    assert measure.prefill_ceiling(0.8, 4, 0.1, 1.6, 8.0, 1.0, 32) == pytest.approx(40 / (9 + 64 / 3.3616))
    from decoding.model_pairs.synthetic import damped_pair

    target, draft = damped_pair(num_layers=2, hidden_size=32, vocab_size=96)
    ratios = measure.prefill_ratios(target, draft, 2, 9, repeats=2)
    assert ratios["target"] > 0 and ratios["draft"] > 0
    assert set(ratios["seconds"]) == {"target_prefill", "draft_prefill", "target_1"}


def test_decoding_rate_takes_the_prompt_encoding_off_each_round():
    from decoding.evals.bench.cells import _decode_rate

    method = {"tokens_per_round": [40, 40, 40], "seconds_per_round": [2.0, 3.0, 2.5]}
    prefill = {"tokens_per_round": [4, 4, 4], "seconds_per_round": [0.5, 1.0, 0.25]}
    # Per round: (40 - 4) / (2.0 - 0.5) = 24, 36 / 2.0 = 18, 36 / 2.25 = 16; the median round counts.
    assert _decode_rate(method, prefill) == pytest.approx(18.0)
    assert math.isnan(_decode_rate(method, None))
    noisy = {"tokens_per_round": [40], "seconds_per_round": [0.4]}
    assert math.isnan(_decode_rate(noisy, {"tokens_per_round": [4], "seconds_per_round": [0.5]}))


def test_batches_wrap_and_new_token_counts():
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    batches = make_batches(prompts, 3, "cpu", pad_token_id=0)
    assert len(batches) == 1 and batches[0].prompts == [0, 1, 0]
    assert batches[0].ids.tolist() == [[5, 6, 7], [0, 0, 8], [5, 6, 7]]
    out = torch.tensor([[1, 2, 9, 3, 3], [1, 2, 4, 5, 6]])
    assert measure.new_token_counts(out, 2, [3]) == [2, 3] and measure.new_token_counts(out, 2) == [3, 3]


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, needle", [
    (["--batch-sizes", "0"], "batch size 0 is out of range"),
    (["--batch-sizes", "1,100000"], "batch size 100000 is out of range"),
    (["--draft-lengths", "-1"], "draft length -1 is out of range"),
    (["--draft-lengths", "4,500"], "draft length 500 is out of range"),
    (["--draft-lengths", "two"], "comma-separated integers"),
    (["--max-new-tokens", "0"], "out of range"),
    (["--temperature", "0"], "out of range"),
    (["--modes", "beam"], "unknown mode 'beam'"),
    (["--synthetic", "depth=3"], "bad --synthetic item"),
    (["--load-in-4bit", "--load-in-8bit"], "not allowed with argument"),
    (["--variants", "adaptive,turbo"], "unknown variant 'turbo'; known variants: adaptive, block, lookup, "
                                       "lookup-first, hf-lookup, hf-dynamic, cascade:RULE:THRESHOLD"),
    (["--variants", "cascade:best:0.3"], "use cascade:RULE:THRESHOLD with RULE one of chow, diff, opt"),
    (["--variants", "cascade:chow:high"], "THRESHOLD must be a finite number"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_usage_errors_are_one_line_exit_2(argv, needle, capsys):
    assert bench.main(argv) == 2
    assert needle in error_line(capsys)


def test_plot_without_matplotlib_fails_before_running(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert bench.main([*TINY, "--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install 'pairdecode[eval]'" in error_line(capsys)
    assert not (tmp_path / "p.png").exists()


def test_unknown_pair_name_lists_known_names(capsys):
    assert bench.main(["--target", "no-such-pair", "--quiet"]) == 1
    line = error_line(capsys)
    assert "no-such-pair" in line and "embedded" in line


def test_bad_prompt_set_and_category(capsys, tmp_path):
    assert bench.main([*TINY, "--prompt-set", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in error_line(capsys)
    assert bench.main([*TINY, "--categories", "poetry"]) == 1
    assert "unknown category poetry" in error_line(capsys)


def test_missing_target_path_says_it_does_not_exist(capsys):
    assert bench.main(["--target", "does/not/exist", "--quiet"]) == 1
    line = error_line(capsys)
    assert "'does/not/exist' does not exist" in line and "draft=" not in line


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_unwritable_output_paths_fail_before_running(option, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "measure_share", lambda *a, **k: pytest.fail("the benchmark ran"))
    folder = tmp_path / "a-folder.png"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path in (folder, blocker / "under-a-file.png"):
        assert bench.main([*TINY, option, str(path)]) == 2
        assert f"{option} {path} cannot be written" in error_line(capsys)
    assert not (blocker / "under-a-file.png").exists() and blocker.read_text() == ""


def test_a_late_json_failure_keeps_the_results_and_says_where(tmp_path, capsys, monkeypatch):
    target = tmp_path / "out" / "bench.json"
    target.parent.mkdir()
    real_write = bench.files.write_json

    def failing(result, path):
        if Path(path) == target:
            raise OSError(28, "No space left on device")
        return real_write(result, path)

    monkeypatch.setattr(bench.files, "write_json", failing)
    argv = [*TINY, "--batch-sizes", "1", "--draft-lengths", "1", "--prompts-per-category", "1", "--categories",
            "math", "--modes", "greedy", "--no-assisted", "--json", str(target)]
    assert bench.main(argv) == 1
    line = error_line(capsys)
    assert "No space left on device" in line
    fallback = Path(line.rsplit("the results are in ", 1)[1])
    try:
        assert json.loads(fallback.read_text())["cells"]
    finally:
        fallback.unlink()


@pytest.mark.parametrize("spec, needle", [
    ("vocab=10000000000", "would hold 20,480,037,758,976 parameters, 81.9 TB in float32, more than the"),
    ("hidden=33", "hidden=33 is odd, but it splits into attention heads of an even size"),
    ("hidden=130", "hidden=130 does not split into heads=2 (the default) attention heads of an even size"),
    ("heads=3", "hidden=512 (the default) does not split into heads=3 attention heads of an even size"),
    ("kv_heads=3", "kv_heads=3 does not divide heads=8 (the default)"),
    ("damping=nan", "'damping=nan': expected a finite number from 0.0 to 1.0"),
    ("head_scale=inf", "'head_scale=inf': expected a finite number from 0.0 to 1000.0"),
    ("vocab=1", "'vocab=1': expected an integer >= 2"),
    ("layers=2000", "'layers=2000': expected an integer from 1 to 1024"),
    ("vocab=" + "9" * 30, "expected an integer >= 2 (and below 2**63)"),
])
def test_synthetic_spec_is_refused_before_any_model_is_built(spec, needle, capsys, monkeypatch):
    monkeypatch.setattr(bench.bench_pair.pairs, "synthetic", lambda *a, **k: pytest.fail("a model was built"))
    assert bench.main(["--synthetic", spec, "--device", "cpu", "--quiet"]) == 2
    assert needle in error_line(capsys)


def test_synthetic_size_estimate_is_exact_and_refuses_what_memory_cannot_hold(capsys, monkeypatch):
    from decoding.evals.bench import pair as bench_pair
    from decoding.evals.common import pairs

    settings = bench_pair.parse_synthetic("layers=3,hidden=64,heads=4,kv_heads=2,vocab=50,intermediate=40")
    built = pairs.synthetic(settings)
    count = sum(p.numel() for model in (built.target, built.draft) for p in model.parameters())
    assert bench_pair.synthetic_parameters(bench_pair.synthetic_shape(settings)) == count == 93_312
    monkeypatch.setattr(bench_pair, "_host_available", lambda: 700_000)  # bytes: float32 fits, float64 does not
    bench_pair.check_synthetic_size(settings, "float32", "cpu")
    assert bench.main(["--synthetic", "layers=3,hidden=64,heads=4,kv_heads=2,vocab=50,intermediate=40",
                       "--dtype", "float64", "--device", "cpu", "--quiet"]) == 2
    assert "would hold 93,312 parameters, 746.5 kB in float64, more than the 700.0 kB of memory available" in \
        error_line(capsys)


def test_synthetic_size_on_a_gpu_is_checked_against_its_memory(monkeypatch):
    from types import SimpleNamespace

    from decoding.evals.bench import pair as bench_pair

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: asked.append(index) or SimpleNamespace(total_memory=80 * 10**9))
    bench_pair.check_synthetic_size({"vocab_size": 128256, "hidden_size": 4096, "num_layers": 32}, "bfloat16", None)
    with pytest.raises(ValueError, match=r"--synthetic vocab=10000000000: .* 41.0 TB in bfloat16, more than the "
                                         r"80.0 GB of cuda:1: use a smaller vocab"):
        bench_pair.check_synthetic_size({"vocab_size": 10**10}, "bfloat16", "cuda:1")
    assert asked == [0, 1]


def test_summary_says_not_measurable_where_the_table_shows_a_dash():
    summary = {"mode": "greedy", "batch_size": 16, "best_draft_length": 2, "speedup": 0.9,
               "decode_speedup": float("nan"), "ceiling": 1.4, "efficiency": float("nan"), "ceiling_with_prefill": None,
               "alpha": 0.8, "assisted_speedup": None, "target_forwards_per_token": None}
    line = report.summary_line(summary)
    assert "(decoding not measurable)" in line and "efficiency not measurable" in line
    assert "nan" not in line.lower() and "0.90x" in line
    measured = report.summary_line({**summary, "decode_speedup": 1.25, "efficiency": 0.5})
    assert "(decoding 1.25x)" in measured and "efficiency 0.50" in measured


def test_a_binary_prompt_file_is_named(tmp_path, capsys):
    binary = tmp_path / "prompts.jsonl"
    binary.write_bytes(b'{"id": "a", "category": "x", "prompt": "p"}\n\x89PNG\r\n\x1a\n\x00\xff')
    assert bench.main([*TINY, "--prompt-set", str(binary)]) == 1
    assert f"{binary}:2: not UTF-8 text" in error_line(capsys)


@pytest.fixture(scope="module")
def saved_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    # float64 so that greedy outputs must equal the target's exactly; no EOS, so every row runs to the end.
    saved = dict(eos_token_id=None, dtype=torch.float64)
    target = save_llama(root / "target", 2, 0, word_tokenizer(), **saved)
    draft = save_llama(root / "draft", 1, 1, word_tokenizer(), **saved)
    # Another tokenizer: two words' ids swapped, and fewer words (transformers drafts across tokenizers only
    # when the vocabulary sizes differ).
    other = save_llama(root / "other", 1, 2, word_tokenizer(swap=True, size=48), vocab_size=48, **saved)
    empty = root / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text((target / "config.json").read_text())
    return {"target": target, "draft": draft, "other": other, "empty": empty}


def test_a_draft_with_another_tokenizer_is_a_cross_tokenizer_pair(saved_pair, tmp_path, capsys):
    """The "other" draft's tokenizer swaps two words' ids: decoding-bench drafts across tokenizers (ours batched,
    transformers' universal assisted generation at batch 1), every output the target's own."""
    prompts = tmp_path / "words.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"w{i}", "category": "words",
                                           "prompt": " ".join(f"w{(5 * i + k) % 8 + 3}" for k in range(9))}) + "\n"
                               for i in range(2)))
    common = ["--target", str(saved_pair["target"]), "--draft", str(saved_pair["other"]), "--prompt-set", str(prompts),
              "--prompts-per-category", "2", "--draft-lengths", "2", "--modes", "greedy", "--max-new-tokens", "5",
              "--rounds", "1", "--cost-repeats", "2", "--quiet", "--device", "cpu"]
    result = bench.run([*common, "--batch-sizes", "1,2", "--variants", "adaptive"])
    assert "another tokenizer" in result["meta"]["draft"]
    methods = {(c["batch_size"], c["method"]) for c in result["cells"]}
    assert {(1, "assisted"), (1, "speculative"), (2, "speculative"), (2, "adaptive")} <= methods
    assert all(check["matches_target"] for check in result["checks"])
    assert bench.main([*common, "--batch-sizes", "1", "--variants", "cascade:chow:0.5"]) == 2
    assert "another tokenizer" in error_line(capsys)


def test_local_path_without_weights(saved_pair, capsys):
    assert bench.main(["--target", str(saved_pair["empty"]), "--draft", str(saved_pair["draft"]), "--quiet"]) == 1
    assert "no weights" in error_line(capsys)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes(saved_pair, capsys):
    argv = ["--target", str(saved_pair["target"]), "--draft", str(saved_pair["draft"]), "--load-in-4bit", "--quiet"]
    assert bench.main(argv) == 1
    assert "bitsandbytes" in error_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_cupy_kernels_without_cupy_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(kernels_ops, "cupy_status", lambda: (False, "CuPy is not installed (test)"))
    assert bench.main(["--kernels", "cupy", *TINY]) == 2
    assert "--kernels cupy: CuPy is not installed (test)" in error_line(capsys)


def test_cuda_device_without_cuda(capsys):
    assert bench.main([*TINY, "--device", "cuda"]) == 2
    assert "CUDA is not available" in error_line(capsys)


def test_console_entry_point_exits_without_traceback():
    done = subprocess.run([sys.executable, "-m", "decoding.evals.bench", "--draft-lengths", "0"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "decoding-bench: error: argument --draft-lengths: draft length 0 is out of range: use 1 to "
        f"{bench_args.MAX_DRAFT_LENGTH} (see decoding-bench --help)"]


# ----------------------------------------------------------------------------------------------- runs


def test_tiny_synthetic_run_json_checks_and_plot(tmp_path, capsys):
    path, png = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    path.parent.mkdir()  # output folders are never created (a mistyped one is refused)
    argv = [*TINY, "--batch-sizes", "1,3", "--draft-lengths", "1,3", "--prompts-per-category", "1",
            "--categories", "code_completion,math,retrieval", "--json", str(path)]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(png)]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "speculative g=3" in out and "assisted g=1" in out and "check: batch 3, speculative g=3: greedy output equal" in out
    result = json.loads(path.read_text())
    assert set(result) == {"meta", "prompts", "costs", "checks", "cells", "summary"}
    for key in ("date", "git_commit", "torch", "transformers", "accelerate", "decoding", "device", "device_name",
                "num_processes", "target", "target_parameters", "draft_parameters", "arguments", "kernels", "cupy"):
        assert key in result["meta"], key
    assert result["meta"]["num_processes"] == 1
    assert result["meta"]["kernels"] == "auto" and set(result["meta"]["cupy"]) == {"available", "reason"}
    assert [p["category"] for p in result["prompts"]] == ["code_completion", "math", "retrieval"]
    assert all(p["tokens"] == 12 for p in result["prompts"])
    assert set(result["costs"]) == {"1", "3"} and set(result["costs"]["3"]["v"]) == {"1", "3"}
    cells = {(c["mode"], c["batch_size"], c["name"]): c for c in result["cells"]}
    expected = {(mode, 1, name) for mode in ("greedy", "sample")
                for name in ("target", "assisted g=1", "speculative g=1", "assisted g=3", "speculative g=3")}
    expected |= {(mode, 3, name) for mode in ("greedy", "sample") for name in ("target", "speculative g=1", "speculative g=3")}
    assert set(cells) == expected
    assert result["checks"] and all(check["matches_target"] for check in result["checks"])
    assert len(result["checks"]) == 6  # every greedy draft method at every batch size
    for (mode, batch, name), cell in cells.items():
        assert cell["tokens_per_s"] > 0 and cell["speedup"] > 0
        if name == "target":  # its sign depends on timing (prefill subtracted): check the arithmetic only
            cost = result["costs"][str(batch)]
            per_step = batch / cell["tokens_per_s"] / cost["seconds"]["target_1"]
            assert cell["forwards_per_token"] == pytest.approx(per_step - cost["prefill_target"] / 6)
            continue
        for key in ("acceptance_rate", "alpha", "mean_accepted_length", "per_position_acceptance", "c", "v",
                    "ceiling", "efficiency", "c_generation", "v_generation"):
            assert key in cell, (name, key)
        g = cell["num_draft_tokens"]
        assert len(cell["per_position_acceptance"]) == g and 1.0 <= cell["mean_accepted_length"] <= g + 1
        assert cell["ceiling"] == pytest.approx(measure.ceiling(cell["alpha"], g, cell["c"], cell["v"]))
        assert cell["efficiency"] == pytest.approx(cell["decode_speedup"] / cell["ceiling"], nan_ok=True)
        assert cell["ceiling_with_prefill"] > 0
        assert cell["efficiency_with_prefill"] == pytest.approx(cell["speedup"] / cell["ceiling_with_prefill"])
        if mode == "greedy":
            assert cell["matches_target"] is True
    assert set(cells[("greedy", 1, "speculative g=3")]["per_category"]) == {"code_completion", "math", "retrieval"}
    assert len(result["summary"]) == 4 and {s["mode"] for s in result["summary"]} == {"greedy", "sample"}
    if HAS_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_run_side_by_side_and_lossless_ones_match_the_target(tmp_path, capsys):
    path = tmp_path / "variants.json"
    argv = [*TINY, "--batch-sizes", "1,2", "--draft-lengths", "2", "--prompts-per-category", "1", "--categories",
            "code_completion,math", "--modes", "greedy", "--json", str(path),
            "--variants", "adaptive,block,lookup,cascade:chow:0.5,hf-lookup,fast-target"]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(tmp_path / "variants.png")]
    assert bench.main(argv) == 0
    assert "lossy: batch 1, cascade chow:0.5 g=2: greedy output equal to the target's on" in capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["meta"]["arguments"]["variants"] == ["adaptive", "block", "lookup", "cascade chow:0.5", "hf-lookup",
                                                       "fast-target"]
    cells = {(c["batch_size"], c["name"]): c for c in result["cells"]}
    lossless = ["speculative g=2", "block g=2", "lookup g=2", "adaptive", "fast target"]
    batch_1_only = ["assisted g=2", "hf-lookup g=2"]
    assert set(cells) == {(b, n) for b in (1, 2) for n in ["target", *lossless, "cascade chow:0.5 g=2"]} | {
        (1, n) for n in batch_1_only}
    assert [c["method"] for c in result["cells"] if c["batch_size"] == 1] == [
        "target", "assisted", "speculative", "block", "lookup", "cascade", "hf-lookup", "adaptive",
        "fast-target"]  # --variants order
    checked = {(c["batch_size"], c["name"]) for c in result["checks"]}
    assert all(c["matches_target"] for c in result["checks"]) and {(2, "adaptive"), (2, "fast target")} <= checked
    assert all(cells[b, n]["matches_target"] is True for b in (1, 2) for n in lossless)
    lossy = result["lossy_checks"]  # match rates, never failures
    assert [(c["batch_size"], c["name"], c["lossy"]) for c in lossy] == [(1, "cascade chow:0.5 g=2", True),
                                                                          (2, "cascade chow:0.5 g=2", True)]
    assert all("cascade" not in c["name"] for c in result["checks"]) and cells[1, "cascade chow:0.5 g=2"]["lossy"]
    assert "lossy" not in cells[1, "block g=2"]
    adaptive, lookup = cells[1, "adaptive"], cells[1, "lookup g=2"]
    assert adaptive["num_draft_tokens"] is None and adaptive["steps"] > 0 and adaptive["ceiling"] is None
    assert 1.0 <= adaptive["mean_accepted_length"] <= 9.0 and adaptive["c"] == result["costs"]["1"]["c"]
    assert lookup["c"] == 0.0 and lookup["ceiling"] == pytest.approx(
        measure.ceiling(lookup["alpha"], 2, 0.0, lookup["v"]))
    assert cells[1, "block g=2"]["steps"] > 0 and "acceptance_source" not in cells[1, "block g=2"]
    assert cells[1, "hf-lookup g=2"]["acceptance_source"].startswith("lookup")
    assert cells[1, "hf-lookup g=2"]["steps"] == lookup["steps"]
    fast, spec = cells[2, "fast target"], cells[2, "speculative g=2"]
    assert spec["speedup_vs_fast"] == pytest.approx(spec["tokens_per_s"] / fast["tokens_per_s"])
    assert all(s["fast_target_speedup"] is not None for s in result["summary"])


def test_hf_dynamic_uses_transformers_defaults_and_restores_the_draft_config():
    from decoding.evals.bench.methods import make_methods
    from decoding.evals.bench.variants import hf_dynamic_settings, parse_variants
    from decoding.model_pairs.synthetic import damped_pair

    settings = hf_dynamic_settings()
    assert settings["num_assistant_tokens"] >= 1 and 0 < settings["assistant_confidence_threshold"] < 1
    target, draft = damped_pair(num_layers=2, hidden_size=32, vocab_size=96)
    decoding.enable(target)
    before = {k: getattr(draft.generation_config, k, None) for k in settings}
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    methods = make_methods(target, draft, 1, [2], kwargs, variants=parse_variants("hf-dynamic,hf-lookup"))
    assert [m.name for m in methods] == ["target", "assisted g=2", "speculative g=2", "hf-lookup g=2", "hf-dynamic",
                                         "prefill"]
    ids = torch.tensor([[3, 4, 5, 3, 4]])
    expected = methods[0].generate(ids, torch.ones_like(ids))
    for method in methods[1:5]:
        assert torch.equal(method.generate(ids, torch.ones_like(ids)), expected), method.name
        assert {k: getattr(draft.generation_config, k, None) for k in settings} == before
    for method in methods[:5]:  # the warm-up's shorter call: generate's kwargs may be overridden per call
        assert torch.equal(method.generate(ids, torch.ones_like(ids), max_new_tokens=2), expected[:, :7]), method.name
    assert len(make_methods(target, draft, 2, [2], kwargs, variants=parse_variants("hf-dynamic,hf-lookup"))) == 3


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed (extra 'eval'): the plot is not tested")
def test_plot_from_cells(tmp_path):
    cells = [{"mode": mode, "batch_size": b, "method": kind, "num_draft_tokens": g, "speedup": 1.0 + 0.1 * g,
              "ceiling": 1.2 + 0.1 * g} for mode in ("greedy", "sample") for b in (1, 4) for g in (2, 3, 4)
             for kind in (("speculative", "assisted") if b == 1 else ("speculative",))]
    path = plot.plot_speedup(cells, tmp_path / "plot.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_tiny_saved_pair_through_the_loader(saved_pair, tmp_path, capsys):
    prompts = tmp_path / "words.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"w{i}", "category": "words",
                                           "prompt": " ".join(f"w{(7 * i + k) % 60 + 3}" for k in range(9))}) + "\n"
                               for i in range(3)))
    result = bench.run(["--target", str(saved_pair["target"]), "--draft", str(saved_pair["draft"]),
                        "--prompt-set", str(prompts), "--prompts-per-category", "3", "--batch-sizes", "1,2",
                        "--draft-lengths", "2", "--modes", "greedy", "--max-new-tokens", "5", "--rounds", "1",
                        "--cost-repeats", "2", "--quiet", "--device", "cpu"])
    assert result["meta"]["dtype"] == "float64" and result["meta"]["target"] == str(saved_pair["target"])
    assert [p["tokens"] for p in result["prompts"]] == [9, 9, 9]  # 9 words, no BOS in this tokenizer
    assert all(check["matches_target"] for check in result["checks"]) and len(result["checks"]) == 3
    assert "speculative g=2" in capsys.readouterr().out


def test_plain_table_without_rich():
    cells = [{"mode": "sample", "batch_size": 1, "method": "target", "name": "target", "num_draft_tokens": None,
              "tokens_per_s": 10.0, "speedup": 1.0, "matches_target": None, "rows_matching_target": "sampled"}]
    table = report.format_table(cells)
    assert "= target" not in table and "10.0" in table and "1.00x" in table


# ----------------------------------------------------------------------------------------------- data parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_split_prompts_and_report_once(tmp_path):
    """``accelerate launch`` with two processes on the CPU: prompts split, results gathered, one report."""
    path = tmp_path / "dp.json"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "decoding.evals.bench", *TINY, "--device", "cpu",
               "--batch-sizes", "1,2", "--draft-lengths", "2", "--prompts-per-category", "1",
               "--categories", "code_completion,code_explanation,math", "--step-split", "--json", str(path)]
    env = {**ENV, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("check: batch 1, speculative g=2") == 1  # only the main process reports
    result = json.loads(path.read_text())
    assert result["meta"]["num_processes"] == 2 and len(result["meta"]["device_names"]) == 2
    assert len(result["prompts"]) == 3
    assert all(check["matches_target"] for check in result["checks"])
    spec = next(c for c in result["cells"] if c["mode"] == "greedy" and c["batch_size"] == 1
                and c["method"] == "speculative")
    assert spec["rows_matching_target"] == "3/3"  # rows of both processes, gathered
    assert set(spec["per_category"]) == {"code_completion", "code_explanation", "math"}
    # batch 2: process 0 has 2 prompts (one batch), process 1 has 1 (one batch, wrapped): 4 rows in all.
    batch2 = next(c for c in result["cells"] if c["mode"] == "greedy" and c["batch_size"] == 2
                  and c["method"] == "target")
    assert batch2["new_tokens_per_round"] == 4 * 6
    # --step-split: each process splits its own first batch; the figures are means over processes.
    assert spec["step_split"]["batch_size"] == 1 and math.isfinite(spec["step_split"]["host_reads"])
    assert batch2["step_split"]["steps"] == 6 and batch2["step_split"]["host_reads"] >= 1


def test_generation_costs_time_the_forwards_of_real_calls():
    from decoding.evals.bench.generation_costs import forward_log, generation_cost_ratios

    from models import tiny_pair

    target, draft = tiny_pair("llama", draft_kind="noisy_copy")
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    log = []
    with torch.no_grad(), forward_log(target, log):
        target.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    # transformers' own loop: the prompt encoding, then one single-token forward per further new token.
    assert [(rows, n) for rows, n, _ in log] == [(2, 4)] + [(2, 1)] * 4 and all(s > 0 for *_, s in log)
    costs = generation_cost_ratios(target, draft, [(ids, mask), (ids[:, 1:], mask[:, 1:])], {"max_new_tokens": 12, "do_sample": False,
                                                             "pad_token_id": 0}, [1, 3])
    assert costs["c"] > 0 and all(costs["v"][g] > 0 for g in (1, 3))
    assert costs["c"] == pytest.approx(costs["seconds"]["draft_1"] / costs["seconds"]["target_1"])
    assert costs["v"][3] == pytest.approx(costs["seconds"]["target_4"] / costs["seconds"]["target_1"])
    assert not target._forward_hooks and not target._forward_pre_hooks  # hooks removed
    none = generation_cost_ratios(target, draft, [(ids, mask)], {"max_new_tokens": 1, "do_sample": False,
                                                            "pad_token_id": 0}, [3])
    assert none["c"] is None and none["v"] == {3: None}


def test_the_warm_up_call_is_made_by_the_very_methods_timed(monkeypatch):
    """A strategy that learns across calls (``num_draft_tokens="auto"``) must be timed warm: the untimed warm-up
    call goes through the same method (and strategy) as the timed rounds, with fewer new tokens."""
    from decoding.evals.bench import grid
    from decoding.evals.bench.prompts import load_prompt_set, select_prompts, tokenize_prompts
    from decoding.evals.bench.variants import parse_variants
    from decoding.evals.common import pairs

    pair = pairs.synthetic({"num_layers": 2, "hidden_size": 32, "vocab_size": 96}, seed=0, dtype=torch.float64,
                           device="cpu")
    prompts = tokenize_prompts(pair, select_prompts(load_prompt_set(), ["math"], 2), 12)
    calls = []  # (method name, id of its strategy, overrides)
    new_tokens = []  # (method name, new tokens of the call)

    make_methods = grid.make_methods

    def logged(*args, **kwargs):
        methods = make_methods(*args, **kwargs)
        for method in methods:
            method.generate = _logging(method.generate, method, calls, new_tokens)
        return methods

    monkeypatch.setattr(grid, "make_methods", logged)
    grid.measure_share(pair, prompts, batch_sizes=[1], draft_lengths=[2], max_new_tokens=6, rounds=2,
                       cost_repeats=2, variants=parse_variants("adaptive"), warmup_tokens=3)
    names = {name for name, _, _ in calls}
    assert {"target", "speculative g=2", "adaptive"} <= names
    for name in names:
        mine = [(strategy, overrides) for n, strategy, overrides in calls if n == name]
        assert mine[0][1] == {"max_new_tokens": 3}  # the warm-up first, shorter
        assert [o for _, o in mine[1:]] == [{}] * 2 * len(prompts)  # then every batch in each of 2 rounds
        assert len({strategy for strategy, _ in mine}) == 1  # one method, one strategy throughout
    # The synthetic pair has no EOS: every call makes its full count, and the one-token prefill stays one token.
    assert {n for name, n in new_tokens if name == "prefill"} == {1}
    assert [n for name, n in new_tokens if name == "target"] == [3] + [6] * 2 * len(prompts)


def _logging(generate, method, calls, new_tokens=None):
    def wrapped(ids, mask, **overrides):
        calls.append((method.name, id(method.strategy), overrides))
        output = generate(ids, mask, **overrides)
        if new_tokens is not None:
            new_tokens.append((method.name, output.shape[1] - ids.shape[1]))
        return output

    return wrapped


def test_static_cache_variants_match_the_target_and_compile_only_during_their_calls(monkeypatch):
    """``--variants static,static-compiled``: greedy output equal to the target's; the compiled one routes both
    models' forwards through torch.compile during its own calls only (here dynamo with the eager backend: inductor
    takes minutes on a CPU; the GPU script runs inductor)."""
    import functools

    from decoding.evals.bench import variants as bench_variants
    from decoding.evals.bench.methods import make_methods
    from decoding.model_pairs.synthetic import damped_pair

    monkeypatch.setattr(bench_variants, "compiled_forwards",
                        functools.partial(bench_variants.compiled_forwards, backend="eager"))
    target, draft = damped_pair(num_layers=2, hidden_size=32, vocab_size=96)
    decoding.enable(target)
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    methods = {m.name: m for m in make_methods(target, draft, 2, [2], kwargs,
                                               variants=bench_variants.parse_variants("static,static-compiled"))}
    assert {"static g=2", "static-compiled g=2"} <= set(methods)
    ids = torch.tensor([[3, 4, 5, 3, 4], [7, 8, 9, 10, 11]])
    expected = methods["target"].generate(ids, torch.ones_like(ids))
    seen, limit = [], torch._dynamo.config.recompile_limit
    for name in ("static g=2", "static-compiled g=2", "static-compiled g=2"):
        counter = torch._dynamo.utils.counters["stats"]["calls_captured"]
        assert torch.equal(methods[name].generate(ids, torch.ones_like(ids)), expected), name
        seen.append(torch._dynamo.utils.counters["stats"]["calls_captured"] - counter)
    assert seen[0] == 0 and seen[1] > 0 and seen[2] == 0, seen  # compiled once: the second call recompiles nothing
    assert torch._dynamo.config.recompile_limit == limit, "dynamo's limit is raised during the compiled calls only"
    assert "forward" not in vars(target) and "forward" not in vars(draft), "the compiled forwards are put back"
