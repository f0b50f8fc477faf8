"""``decoding-bench --head``: a draft head in place of the draft model. A tiny float64 target saved to a folder with a
tiny head saved beside it: speculative cells with the target's own greedy outputs, prompt lookup beside them,
transformers' ``assistant_model=`` methods and cascades skipped with a note, and the head's ``c`` timed from its
drafting; ``--head`` alone on a pair without a shipped head, or with ``--draft``, is a one-line usage error."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from decoding.evals.bench import cli as bench
from decoding.evals.bench import report
from decoding.evals.bench.methods import generation_kwargs, make_methods
from decoding.evals.bench.variants import head_skips, parse_variants
from decoding.model_pairs.eagle import save_head
from decoding.model_pairs.registry import with_heads
from cli_checks import error_line
from models import save_llama, tiny_head, word_tokenizer


@pytest.fixture(scope="module")
def head_pair(tmp_path_factory):
    """A 4-layer float64 target without EOS (every row runs to the end; greedy outputs must equal the target's
    exactly), its head beside it, and a prompt file of three word prompts."""
    root = tmp_path_factory.mktemp("head-pair")
    target_dir = save_llama(root / "target", 4, 0, word_tokenizer(), eos_token_id=None, dtype=torch.float64)
    target = AutoModelForCausalLM.from_pretrained(target_dir)
    save_head(tiny_head(target), root / "head")
    prompts = root / "words.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"w{i}", "category": "words",
                                           "prompt": " ".join(f"w{(7 * i + k) % 60 + 3}" for k in range(9))}) + "\n"
                               for i in range(3)))
    return {"target": target_dir, "head": root / "head", "prompts": prompts, "model": target}


def test_a_head_replaces_the_draft_and_skips_what_cannot_use_it(head_pair, capsys):
    result = bench.run(["--target", str(head_pair["target"]), "--head", str(head_pair["head"]), "--quick",
                        "--prompt-set", str(head_pair["prompts"]), "--categories", "words",
                        "--prompts-per-category", "3", "--modes", "greedy", "--cost-repeats", "2",
                        "--variants", "lookup,hf-lookup,hf-dynamic,cascade:chow:0.3,lookup-first", "--device", "cpu",
                        "--quiet"])
    out = capsys.readouterr().out
    meta = result["meta"]
    assert meta["draft_head"] == str(head_pair["head"]) and "draft head" in meta["draft"]
    assert meta["arguments"]["assisted"] is False and "0.0M draft head" in out
    # Skipped, each with a one-line note in the report and the JSON.
    assert len(result["notes"]) == 3
    assert result["notes"][0].startswith("assisted g (transformers' assistant_model=) skipped, as with --no-assisted")
    assert result["notes"][1].startswith("hf-dynamic skipped") and result["notes"][2].startswith("cascade chow:0.3")
    assert all(f"note: {note}" in out for note in result["notes"])
    methods = {(c["batch_size"], c["name"]) for c in result["cells"]}
    assert methods == {(1, "target"), (1, "speculative g=2"), (1, "lookup g=2"), (1, "hf-lookup g=2"),
                       (1, "lookup-first g=2"), (2, "target"), (2, "speculative g=2"), (2, "lookup g=2"),
                       (2, "lookup-first g=2")}
    # Greedy outputs: the target's own, every row.
    assert len(result["checks"]) == 7 and all(check["matches_target"] for check in result["checks"])
    assert "check: batch 2, speculative g=2: greedy output equal to the target's (4/4 rows)" in out
    # c: the head's drafting per drafted position over one target forward, per g; lookup drafts for free.
    for batch, cost in result["costs"].items():
        c = cost["c_per_g"]["2"]
        seconds = cost["seconds"]
        assert 0 < c < 100 and cost["c"] == pytest.approx(c)  # one g: the pooled c is its c
        assert c == pytest.approx(seconds["head_position_g=2@generation"] / seconds["target_1"])
        assert cost["c_generation"] == pytest.approx(seconds["head_position@generation"]
                                                     / seconds["target_1@generation"])
        assert cost["prefill_draft"] > 0 and math.isfinite(cost["v"]["2"])
        cells = {c["name"]: c for c in result["cells"] if c["batch_size"] == int(batch)}
        assert cells["speculative g=2"]["c"] == pytest.approx(c) and cells["lookup g=2"]["c"] == 0.0
        assert cells["speculative g=2"]["ceiling"] > 0 and cells["speculative g=2"]["mean_accepted_length"] >= 1
    assert "c of the head: its drafting seconds per drafted position" in out


def test_the_head_notes_and_c_print_from_a_loaded_result():
    result = {"meta": {"draft": "tiny draft head", "draft_head": "/heads/tiny"},
              "costs": {"1": {"c_per_g": {"2": 0.25, "3": float("nan")}}}, "notes": ["hf-dynamic skipped: why"]}
    lines = report.head_lines(result)
    assert lines[0] == ("draft: tiny draft head (/heads/tiny), an EAGLE-3 head reading the target's hidden states, in "
                        "every library method")
    assert lines[1].endswith("by g, batch 1: g=2 0.250 g=3 not measurable")
    assert lines[2:] == ["note: hf-dynamic skipped: why", ""]
    assert report.head_lines({"meta": {"draft": "d"}}) == []  # a draft model: nothing


def test_methods_that_cannot_use_a_head_are_left_out_with_a_note(head_pair):
    assisted, kept, notes = head_skips(True, parse_variants("adaptive,hf-dynamic,lookup,cascade:diff:0.1,block"))
    assert not assisted and [v.kind for v in kept] == ["adaptive", "lookup", "block"]
    assert [n.split(" skipped")[0] for n in notes] == ["assisted g (transformers' assistant_model=)", "hf-dynamic",
                                                       "cascade diff:0.1"]
    assert head_skips(False, [])[2] == []  # --no-assisted: nothing to say
    # make_methods itself never builds them for a head, whatever it is asked.
    target = head_pair["model"]
    head = tiny_head(target)
    methods = make_methods(target, head, 1, [2], generation_kwargs("greedy", 4, 0, 1.0), True,
                           parse_variants("hf-dynamic,cascade:chow:0.3,block"))
    assert [m.name for m in methods] == ["target", "speculative g=2", "block g=2", "prefill"]


@pytest.mark.parametrize("argv, needle", [
    (["--head"], f"the pair 'embedded' has none; pairs with a draft head: {', '.join(with_heads())}"),
    (["--target", "llama-3.1-8b-instruct", "--head"], "the pair 'llama-3.1-8b-instruct' has none"),
    (["--target", "/no/such/folder", "--head"], "'/no/such/folder' (not a registered pair) has none"),
    (["--target", "smollm2-135m-instruct", "--draft", "x", "--head"], "give --draft or --head, not both"),
    (["--synthetic", "--head", "x"], "not with --synthetic"),
    (["--variants", "lookup,lookup-first"], "--variants lookup-first drafts with a draft head where lookup finds "
                                            "nothing: add --head"),
])
def test_head_usage_errors_are_one_line_before_any_model_loads(argv, needle, capsys):
    assert bench.main([*argv, "--quiet"]) == 2
    assert needle in error_line(capsys)
