"""The registry of known model pairs: contents, immutability, lookup errors, the embedded pair's location."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import decoding.model_pairs.registry as registry
from decoding.model_pairs.registry import ModelPair, UnknownPairError, embedded_path, from_name, names, pairs
from decoding.model_pairs.registry import ROLES

EXPECTED = {
    "embedded": None,
    "smollm2-135m-instruct": None,  # a packaged GGUF target and the shipped draft: tests/test_gguf_loading.py
    "llama-3.1-8b-instruct": ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
    "qwen2.5-7b-instruct": ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
    "qwen2.5-coder-7b": ("Qwen/Qwen2.5-Coder-7B", "Qwen/Qwen2.5-Coder-0.5B"),
    "opt-6.7b": ("facebook/opt-6.7b", "facebook/opt-125m"),
    "gpt2-xl": ("gpt2-xl", "gpt2"),
    "pythia-6.9b": ("EleutherAI/pythia-6.9b", "EleutherAI/pythia-160m"),
    "vicuna-7b": ("lmsys/vicuna-7b-v1.3", "double7/vicuna-68m"),
}


def test_known_pairs():
    assert set(names()) == set(EXPECTED)
    assert names()[0] == "embedded"
    assert [pair.name for pair in pairs()] == names()
    for name, ids in EXPECTED.items():
        pair = from_name(name)
        assert isinstance(pair, ModelPair) and pair.name == name
        if ids is not None:
            assert (pair.target, pair.draft) == ids
        assert pair.role in ROLES
        assert isinstance(pair.num_draft_tokens, int) and pair.num_draft_tokens >= 1
        assert pair.notes


def test_roles():
    assert from_name("gpt2-xl").role == "amateur"
    assert all(pair.role == "draft" for pair in pairs() if pair.name != "gpt2-xl")
    with pytest.raises(ValueError, match="role"):
        ModelPair("x", "a", "b", role="assistant")
    with pytest.raises(ValueError, match="num_draft_tokens"):
        ModelPair("x", "a", "b", num_draft_tokens=0)


def test_padded_vocab_noted():
    assert "padded" in from_name("qwen2.5-7b-instruct").notes.lower()


def test_frozen():
    pair = from_name("opt-6.7b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pair.draft = "facebook/opt-350m"
    assert from_name("opt-6.7b").draft == "facebook/opt-125m"
    hash(pair)  # frozen dataclasses are hashable


def test_lookup_is_case_insensitive():
    assert from_name("Vicuna-7B ") is from_name("vicuna-7b")


@pytest.mark.parametrize("bad", ["llama-9000", "", "facebook/opt-6.7b"])
def test_unknown_name_lists_known_names(bad):
    with pytest.raises(ValueError) as info:
        from_name(bad)
    assert isinstance(info.value, UnknownPairError)
    message = str(info.value)
    assert repr(bad) in message
    assert all(name in message for name in names())


def test_embedded_pair_points_inside_the_package():
    root = embedded_path()
    assert isinstance(root, Path)
    assert root == Path(registry.__file__).parent / "embedded"
    assert root.parts[-2:] == ("model_pairs", "embedded")
    pair = from_name("embedded")
    assert Path(pair.target) == root / "target"
    assert Path(pair.draft) == root / "draft"
    assert pair.role == "draft"
