"""``decoding-bench``'s overhead tools (issue 28): the ``overhead`` synthetic preset, ``--step-split`` (a profiled
twin's per-step phases, host reads and ops per step) and the ``static-target`` baseline (transformers' static
cache and compiled forward), on tiny pairs with few tokens."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from decoding.evals.bench import cli as bench
from decoding.evals.bench import report
from decoding.evals.bench.methods import compile_config, generation_kwargs, make_methods
from decoding.evals.bench.pair import SYNTHETIC_PRESETS, parse_synthetic
from decoding.evals.bench.progress import work_units
from decoding.evals.bench.records import Agreement, Cell
from decoding.evals.bench.step_split import PHASES, combine_splits, measure_split
from decoding.evals.common import pairs
from decoding.evals.common.batches import make_batches

# A tiny synthetic pair and grid: float64, so greedy outputs must equal the target's exactly.
TINY = ["--synthetic", "layers=2,hidden=32,vocab=96", "--dtype", "float64", "--max-prompt-tokens", "12",
        "--max-new-tokens", "8", "--rounds", "1", "--cost-repeats", "2", "--quiet", "--modes", "greedy",
        "--no-assisted", "--prompts-per-category", "1", "--categories", "code_completion,math"]


@pytest.fixture(scope="module")
def tiny():
    """A tiny synthetic pair (float64) and two left-padded batches of two prompts."""
    import decoding

    pair = pairs.synthetic({"num_layers": 2, "hidden_size": 32, "vocab_size": 96}, dtype=torch.float64)
    decoding.enable(pair.target)
    prompts = [torch.tensor(pair.encode(text)) for text in ("def add(a, b):", "x = 1 + 2 * y")]
    return pair, make_batches(prompts, 2, "cpu", pair.pad_token_id)


# ----------------------------------------------------------------------------------------------- preset


def test_overhead_preset_parses_and_later_items_override_it():
    settings = parse_synthetic("overhead")
    assert settings == {"num_layers": 2, "hidden_size": 64, "intermediate_size": 128, "vocab_size": 256,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "damping": 0.05, "head_scale": 20.0}
    assert parse_synthetic("overhead, layers=3")["num_layers"] == 3
    assert set(SYNTHETIC_PRESETS) == {"overhead"}
    with pytest.raises(ValueError, match=r"bad --synthetic item 'turbo'.*or first a preset \(overhead\)"):
        parse_synthetic("turbo")
    with pytest.raises(ValueError, match="bad --synthetic item 'overhead'"):
        parse_synthetic("layers=3,overhead")  # a preset only comes first


def test_overhead_preset_runs_on_one_thread_unless_told():
    from decoding.evals.bench.args import parse_args

    assert parse_args(["--synthetic", "overhead"]).threads == 1
    assert parse_args(["--synthetic", "overhead,layers=3", "--threads", "2"]).threads == 2
    assert parse_args(["--synthetic", "layers=2"]).threads is None


# ----------------------------------------------------------------------------------------------- step split


def _methods(pair, batch_size: int, mode: str = "greedy", variants=()):
    kwargs = generation_kwargs(mode, 12, pair.pad_token_id, 0.7)
    return make_methods(pair.target, pair.draft, batch_size, [3], kwargs, assisted=False, variants=variants), kwargs


@pytest.mark.parametrize("mode", ["greedy", "sample"])
def test_split_phases_are_non_negative_and_sum_to_about_the_call(tiny, mode):
    pair, batches = tiny
    methods, kwargs = _methods(pair, 2, mode)
    spec = next(m for m in methods if m.kind == "speculative")
    with torch.no_grad():
        spec.generate(batches[0].ids, batches[0].mask)  # warm
        split = measure_split(spec, pair.target, kwargs, batches[0], seed=0)
    phases = [split[f"{phase}_ms"] for phase in PHASES]
    assert all(x >= 0 and math.isfinite(x) for x in phases), split
    # The phases cover the strategy's loop; generate's own setup around it is the rest of the call.
    assert 0.5 * split["call_ms"] <= sum(phases) <= split["call_ms"] * 1.001, split
    assert split["batch_size"] == 2 and 1 <= split["steps"] <= 12
    assert math.isfinite(split["host_reads"]) and split["host_reads"] > 0 and split["ops"] > 10
    assert sum(split["reads"].values()) == pytest.approx(split["host_reads"])
    assert "steady_host_reads" in split and "steady_ops" in split  # NaN only if both calls took as many steps
    assert spec.strategy.profile is False  # the timed strategy is never profiled: a twin is


def test_target_alone_gets_time_reads_and_ops_per_token_and_others_none(tiny):
    pair, batches = tiny
    methods, kwargs = _methods(pair, 2)
    by_kind = {m.kind: m for m in methods}
    with torch.no_grad():
        split = measure_split(by_kind["target"], pair.target, kwargs, batches[0], seed=0)
        assert measure_split(by_kind["prefill"], pair.target, kwargs, batches[0], seed=0) is None
    assert split["steps"] == 12 and split["counted_steps"] == 12  # one step per new token, no EOS
    assert split["call_ms"] > 0 and split["host_reads"] >= 1 and split["ops"] > 10
    # transformers' loop reads at least once a token (its stopping check), also past the call's fixed reads.
    assert 1 <= split["steady_host_reads"] <= split["host_reads"] + 1 and split["steady_ops"] > 10
    assert not any(f"{phase}_ms" in split for phase in PHASES)


def test_splits_average_over_processes():
    parts = [{"steps": 4, "call_ms": 2.0, "host_reads": 1.0, "reads": {"item": 1.0}},
             None, {"steps": 6, "call_ms": 4.0, "host_reads": 3.0, "reads": {"tolist": 2.0, "item": 1.0}}]
    assert combine_splits(parts) == {"steps": 5, "call_ms": 3.0, "host_reads": 2.0,
                                      "reads": {"item": 1.0, "tolist": 1.0}}
    assert combine_splits([None, None]) is None


def test_cli_step_split_in_json_and_report(tmp_path, capsys):
    path = tmp_path / "split.json"
    assert bench.main([*TINY, "--batch-sizes", "2", "--draft-lengths", "2", "--variants", "lookup",
                       "--step-split", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "per-step split, greedy" in out and "reads/step" in out
    result = json.loads(path.read_text())
    assert result["meta"]["arguments"]["step_split"] is True
    cells = {c["name"]: c for c in result["cells"]}
    assert set(cells) == {"target", "speculative g=2", "lookup g=2"}
    for name in ("speculative g=2", "lookup g=2"):
        split = cells[name]["step_split"]
        assert {f"{p}_ms" for p in PHASES} | {"call_ms", "steps", "host_reads", "ops", "reads", "steady_host_reads",
                                              "steady_ops"} <= set(split)
        assert math.isfinite(split["host_reads"]) and all(split[f"{p}_ms"] >= 0 for p in PHASES)
    assert {"call_ms", "host_reads", "ops"} <= set(cells["target"]["step_split"])
    assert cells["speculative g=2"]["matches_target"] is True


def test_no_step_split_leaves_no_key(tmp_path):
    path = tmp_path / "plain.json"
    assert bench.main([*TINY, "--batch-sizes", "1", "--draft-lengths", "1", "--categories", "math",
                       "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert all("step_split" not in c and "speedup_vs_static" not in c for c in result["cells"])
    assert all(s["static_target_speedup"] is None for s in result["summary"])


def test_split_table_and_records():
    cell = Cell("greedy", 8, "speculative", "speculative g=4", 4, 100.0, [100.0], 64.0, 1.2, 130.0,
                1.3, Agreement(True, "8/8"), speedup_vs_static=0.8, decode_speedup_vs_static=0.9,
                step_split={"steps": 14, "call_ms": 2.0, "draft_ms": 1.0, "target_ms": 0.5, "verify_ms": 0.25,
                            "other_ms": float("nan"), "host_reads": 1.0, "ops": 900.0, "steady_host_reads": 0.5,
                            "steady_ops": 800.0})
    record = cell.to_dict()
    assert record["speedup_vs_static"] == 0.8 and record["step_split"]["steps"] == 14
    table = report.format_split([record, {"batch_size": 8, "name": "assisted g=4"}])
    lines = table.splitlines()
    assert len(lines) == 3 and re.split(r"\s{2,}", lines[0].strip()) == [
        "batch", "method", "steps", "ms/step", "draft", "target", "verify", "other", "reads/step", "ops/step",
        "steady reads", "steady ops"]
    assert lines[2].split() == ["8", "speculative", "g=4", "14", "2.000", "1.000", "0.500", "0.250", "-", "1.00",
                                "900", "0.50", "800"]
    assert report.format_split([{"batch_size": 1, "name": "target"}]) == ""
    summary = {"mode": "greedy", "batch_size": 8, "best_draft_length": 4, "speedup": 1.2, "decode_speedup": 1.3,
               "ceiling": 1.5, "efficiency": 0.87, "ceiling_with_prefill": None, "alpha": 0.9,
               "assisted_speedup": None, "target_forwards_per_token": None, "static_target_speedup": 0.8}
    assert report.summary_line(summary).endswith("; over the static target: 0.80x")


def test_progress_counts_one_split_per_method_and_block():
    plain = work_units(2, [1, 2], [3], ["greedy"], 1, assisted=False)
    assert work_units(2, [1, 2], [3], ["greedy"], 1, assisted=False, step_split=True) == plain + 2 * 3


# ----------------------------------------------------------------------------------------------- static target


def test_compile_config_per_device():
    cpu, cuda = compile_config("cpu"), compile_config("cuda")
    assert cpu.mode == "default" and cpu._compile_all_devices is True and cpu.dynamic is True
    assert cuda.mode == "reduce-overhead" and not cuda._compile_all_devices and cuda.dynamic is True


# torch's inductor imports deprecated torch.jit pieces while compiling: its warning, not ours.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_static_target_runs_on_cpu_beside_the_eager_target(tmp_path, capsys, monkeypatch):
    """The compiled static-cache target on a CPU (inductor; about 5-15 s to compile a 2-layer model here)."""
    from transformers import PreTrainedModel

    compiled = []
    original = PreTrainedModel.get_compiled_call
    monkeypatch.setattr(PreTrainedModel, "get_compiled_call",
                        lambda self, config: compiled.append(config) or original(self, config))
    path = tmp_path / "static.json"
    assert bench.main([*TINY, "--batch-sizes", "1", "--draft-lengths", "2", "--categories", "math",
                       "--max-new-tokens", "4", "--variants", "static-target", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "vs static" in out and "over the static target" in out
    result = json.loads(path.read_text())
    cells = {c["name"]: c for c in result["cells"]}
    assert [c["method"] for c in result["cells"]] == ["target", "speculative", "static-target"]
    static = cells["static target"]
    assert static["matches_target"] is True and static["speedup_vs_static"] == 1.0  # float64: the same tokens
    spec = cells["speculative g=2"]
    assert spec["speedup"] > 0 and spec["speedup_vs_static"] == pytest.approx(
        spec["tokens_per_s"] / static["tokens_per_s"])
    assert result["summary"][0]["static_target_speedup"] == pytest.approx(spec["speedup_vs_static"])
    assert "static target" in {c["name"] for c in result["checks"]}
    assert compiled and all(config.mode == "default" for config in compiled)  # generate's loop did compile
