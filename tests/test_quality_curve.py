"""Speculative cascades in ``decoding-eval`` and the quality-against-speed curve
(``decoding.evals.quality.curve``): cascade specs, the paired NLL difference by hand, cascades whose law is known
(always deferring: the lossless strategy's very samples; never deferring: every draft accepted), and the join of
the two tools' JSON files."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest

from decoding.cascade import Cascade
from decoding.evals.quality import cli as quality
from decoding.evals.quality import curve
from decoding.evals.quality.scores import paired_nll_difference

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize("spec, rule, threshold", [("cascade:chow:0.3", "chow", 0.3), ("diff:-1", "diff", -1.0),
                                                   ("cascade:opt:2", "opt", 2.0)])
def test_cascade_specs_parse_and_print_back(spec, rule, threshold):
    cascade = Cascade.parse(spec)
    assert (cascade.rule, cascade.threshold) == (rule, threshold)
    assert Cascade.parse(cascade.name) == cascade


@pytest.mark.parametrize("spec, needle", [("cascade:best:0.3", "RULE one of chow, diff, opt"),
                                          ("cascade:chow", "use cascade:RULE:THRESHOLD"),
                                          ("cascade:chow:high", "THRESHOLD must be a finite number"),
                                          ("cascade:chow:nan", "THRESHOLD must be a finite number")])
def test_bad_cascade_specs_say_the_expected_form(spec, needle):
    with pytest.raises(ValueError, match=needle):
        Cascade.parse(spec)


def test_paired_nll_difference_by_hand():
    mean, se = paired_nll_difference([math.e, math.e ** 2, math.e ** 3, math.nan], [1.0, 1.0, 1.0, 2.0])
    assert mean == pytest.approx(2.0)  # diffs 1, 2, 3; the NaN pair is left out
    assert se == pytest.approx(1.0 / math.sqrt(3))  # sample std 1 over sqrt(3)
    assert all(math.isnan(x) for x in paired_nll_difference([2.0, math.nan], [1.0, 1.0]))


def _eval(tmp_path, methods: str, name="q.json") -> tuple[dict, list[dict]]:
    out, texts = tmp_path / name, tmp_path / f"{name}.jsonl"
    quality.main(["--synthetic", "--num-prompts", "6", "--max-new-tokens", "10", "--batch-size", "3", "--encoder", "none",
                  "--threads", "1", "--methods", methods, "--json", str(out), "--save-generations", str(texts), "--quiet"])
    return json.loads(out.read_text()), [json.loads(line) for line in texts.read_text().splitlines()]


def test_cascade_rows_with_a_known_law(tmp_path):
    """``chow:0`` always defers: the target's law, drawn with the same random numbers as the lossless strategy, so
    the very same text. ``chow:1`` never defers: each position's law is the draft's, so every draft is accepted."""
    result, lines = _eval(tmp_path, "sample,speculative_sample,cascade:chow:0,cascade:chow:1")
    texts = {}
    for line in lines:
        texts.setdefault(line["method"], []).append(line["continuation"])
    assert texts["cascade:chow:0"] == texts["speculative_sample"]
    rows = result["methods"]
    assert rows["cascade:chow:0"]["nll_vs_sample"] == rows["speculative_sample"]["nll_vs_sample"]
    assert math.isfinite(rows["speculative_sample"]["nll_vs_sample_se"])
    never = rows["cascade:chow:1"]["stats"]
    assert never["drafted"] > 0 and never["acceptance_rate"] == 1.0
    assert rows["speculative_sample"]["stats"]["acceptance_rate"] < 1.0
    assert "nll_vs_sample" not in rows["sample"] and result["config"]["temperature"] == 0.7


@pytest.mark.parametrize("argv, needle", [(["--methods", "cascade:best:1"], "RULE one of chow, diff, opt"),
                                          (["--temperature", "0"], "--temperature must be a positive")])
def test_bad_cascade_arguments_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.main(["--synthetic", *argv])
    assert exit_info.value.code == 2 and needle in capsys.readouterr().err


def _files(temperature=0.7, names=("target", "speculative g=4", "cascade chow:0.3 g=4")):
    quality_json = {"config": {"temperature": 0.7, "num_draft_tokens": 4, "pair": "p"}, "methods": {
        "sample": {"perplexity": 5.0, "per_prompt_perplexity": [4.0, 6.0]},
        "greedy": {"perplexity": 2.0},  # not sampled at the temperature: not on the curve
        "speculative_sample": {"nll_vs_sample": 0.01, "nll_vs_sample_se": 0.02},
        "cascade:chow:0.3": {"nll_vs_sample": 0.09, "nll_vs_sample_se": 0.03}}}
    speeds = dict(zip(("target", "speculative g=4", "cascade chow:0.3 g=4", "cascade diff:0.1 g=4"), (1.0, 0.6, 1.3, 1.5)))
    cells = [{"mode": "sample", "batch_size": 1, "name": n, "speedup": speeds[n], "mean_accepted_length": 2.0}
             for n in names]
    cells.append({"mode": "greedy", "batch_size": 1, "name": "target", "speedup": 9.0})
    bench_json = {"meta": {"arguments": {"temperature": temperature, "modes": ["greedy", "sample"]}}, "cells": cells}
    return quality_json, bench_json


def test_the_curve_joins_quality_and_speed_by_method():
    points = curve.join(*_files(), batch_size=1)
    assert [(p.method, p.speedup, p.nll, p.se) for p in points] == [
        ("sample", 1.0, 0.0, 0.0), ("speculative_sample", 0.6, 0.01, 0.02), ("cascade:chow:0.3", 1.3, 0.09, 0.03)]
    assert [p.within_noise for p in points[1:]] == [True, False]  # 0.09 > 2 * 0.03
    assert not curve.Point("cascade:chow:0.3", 1.0, None, None, None).within_noise  # too few prompts: null in JSON
    table = curve.markdown(points)
    assert "| cascade chow:0.3 | 1.30x | 2.00 | +0.090 ± 0.030 | no |" in table
    assert "| speculative | 0.60x | 2.00 | +0.010 ± 0.020 | yes |" in table


def test_runs_that_share_their_sample_row_join_and_untimed_cascades_are_named():
    first, bench = _files(names=("target", "speculative g=4", "cascade chow:0.3 g=4", "cascade diff:0.1 g=4"))
    second = copy.deepcopy(first)
    second["methods"] = {"sample": first["methods"]["sample"],
                         "cascade:diff:0.1": {"nll_vs_sample": 0.5, "nll_vs_sample_se": 0.1},
                         "cascade:opt:0.5": {"nll_vs_sample": 0.7, "nll_vs_sample_se": 0.1}}
    heard = []
    points = curve.join([first, second], bench, batch_size=1, log=heard.append)
    assert [p.method for p in points] == ["sample", "speculative_sample", "cascade:chow:0.3", "cascade:diff:0.1"]
    assert points[-1].speedup == 1.5 and points[-1].nll == 0.5
    assert heard == ["not timed by decoding-bench at batch size 1, left off the curve: cascade:opt:0.5"]
    second["methods"]["sample"] = {"per_prompt_perplexity": [4.0, 6.5]}
    with pytest.raises(ValueError, match="sampled different texts"):
        curve.join([first, second], bench, batch_size=1)


@pytest.mark.parametrize("files, needle", [(_files(temperature=1.0), "different temperatures"),
                                           (_files(names=("target", "speculative g=4")), "timed none of the cascades"),
                                           (_files(names=("target", "cascade chow:0.3 g=4")), "no 'speculative g=4'")])
def test_the_curve_refuses_files_that_do_not_match(files, needle):
    with pytest.raises(ValueError, match=needle):
        curve.join(*files, batch_size=1)


def test_the_curve_cli_writes_the_table_and_refuses_wrong_input(tmp_path, capsys):
    paths = [tmp_path / "q.json", tmp_path / "b.json"]
    for path, data in zip(paths, _files()):
        path.write_text(json.dumps(data))
    argv = ["--eval", str(paths[0]), "--bench", str(paths[1]), "--markdown", str(tmp_path / "t.md")]
    if HAS_MATPLOTLIB:
        argv += ["--plot", str(tmp_path / "c.png")]
    assert curve.main(argv) == 0
    assert (tmp_path / "t.md").read_text() == curve.markdown(curve.join(*_files(), batch_size=1))
    if HAS_MATPLOTLIB:
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curve.main(argv[:4] + ["--batch-size", "4"]) == 2
    assert "at batch size 4" in capsys.readouterr().err
    assert curve.main(["--eval", str(paths[1]), "--bench", str(paths[1])]) == 2  # a bench file given as --eval
    assert "--eval takes decoding-eval --json files" in capsys.readouterr().err
