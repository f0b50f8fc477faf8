"""The embedded pair's training script (``decoding.model_pairs.train``) and the shipped pair itself.

- The corpus split is a deterministic function of each file's relative path; held-out and training files are
  disjoint.
- A tiny end-to-end run (tokenizer, target, distilled draft, evaluation, model card) writes directories that
  ``from_pretrained`` loads, with one shared vocabulary.
- The shipped pair (``model_pairs/embedded``, when present): at most 64 MB, both models and their
  tokenizers load from their directories, the vocabularies match, and greedy speculative decoding on it
  equals the target's own greedy ``generate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import decoding
from decoding.model_pairs import corpus as corpus_mod
from decoding.model_pairs.registry import embedded_path
from decoding.model_pairs.train import cli as train_mod
from decoding.model_pairs.train.presets import PRESETS

EMBEDDED = embedded_path()
SIZE_LIMIT = 64 * 1024 * 1024


def test_held_out_split_is_deterministic_and_disjoint():
    files = corpus_mod.list_files()
    assert files == sorted(files) == corpus_mod.list_files()
    assert len(files) > 100, "the standard library should have many .py files"
    assert not any("site-packages" in f.split("/") for f in files)
    held = [f for f in files if corpus_mod.is_held_out(f)]
    train = [f for f in files if not corpus_mod.is_held_out(f)]
    assert held == [f for f in files if corpus_mod.is_held_out(f)]  # a pure function of the path
    assert set(held).isdisjoint(train) and len(held) + len(train) == len(files)
    assert 0.02 < len(held) / len(files) < 0.10
    # Stable values (the split must not change between Python versions or machines).
    assert corpus_mod.is_held_out("chunk.py") and corpus_mod.is_held_out("token.py")
    assert not corpus_mod.is_held_out("os.py") and not corpus_mod.is_held_out("typing.py")


def test_load_corpus_respects_the_split():
    loaded = corpus_mod.load_corpus(max_files=30)
    train_paths = [p for p, _ in loaded.train]
    assert train_paths and loaded.held_out_paths
    assert not any(corpus_mod.is_held_out(p) for p in train_paths)
    assert all(corpus_mod.is_held_out(p) for p in loaded.held_out_paths)
    assert set(train_paths).isdisjoint(loaded.held_out_paths)


def _assert_pair_loads(root: Path):
    target = AutoModelForCausalLM.from_pretrained(root / "target", dtype=torch.float32)
    draft = AutoModelForCausalLM.from_pretrained(root / "draft", dtype=torch.float32)
    target_tok = AutoTokenizer.from_pretrained(root / "target")
    draft_tok = AutoTokenizer.from_pretrained(root / "draft")
    assert target_tok.get_vocab() == draft_tok.get_vocab()
    assert target.config.vocab_size == draft.config.vocab_size == len(target_tok)
    assert target_tok.eos_token_id is not None and target_tok.pad_token_id is not None
    assert target.generation_config.eos_token_id == target_tok.eos_token_id
    assert target.generation_config.pad_token_id == target_tok.pad_token_id
    return target.eval(), draft.eval(), target_tok


def test_tiny_training_run_writes_loadable_pair(tmp_path):
    out = tmp_path / "pair"
    assert train_mod.main(["--out", str(out), "--preset", "tiny", "--device", "cpu", "--seed", "0"]) == 0
    target, draft, _ = _assert_pair_loads(out)
    assert sum(p.numel() for p in draft.parameters()) < sum(p.numel() for p in target.parameters())
    card = (out / "MODEL_CARD.md").read_text()
    held = corpus_mod.load_corpus(max_files=PRESETS["tiny"].max_files).held_out_paths
    assert held and all(f"`{path}`" in card for path in held)
    assert "acceptance rate" in card
    assert not (out / "tokenizer").exists()  # each model directory carries its own copy


@pytest.mark.skipif(not (EMBEDDED / "target").exists(), reason="no embedded pair shipped")
def test_embedded_pair_size_and_loading():
    total = sum(f.stat().st_size for f in EMBEDDED.rglob("*") if f.is_file())
    assert total <= SIZE_LIMIT, f"embedded pair is {total / 2**20:.1f} MiB, over 64 MiB"
    assert (EMBEDDED / "MODEL_CARD.md").exists()
    target, draft, tok = _assert_pair_loads(EMBEDDED)
    assert sum(p.numel() for p in target.parameters()) > 10 * 1e6
    assert sum(p.numel() for p in draft.parameters()) < sum(p.numel() for p in target.parameters()) / 5

    decoding.enable(target)
    for text in ["import os\n\n\ndef main(argv):\n    ", "class Stack:\n    def __init__(self):\n        self."]:
        ids = torch.tensor([tok(text)["input_ids"]])
        mask = torch.ones_like(ids)
        plain = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=4)
        spec = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, strategy=strategy)
        assert torch.equal(plain, spec)
        assert strategy.stats.steps > 0
