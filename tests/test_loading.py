"""``load_pair``: tiny Llama pairs saved to temporary directories with a locally built tokenizer (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from transformers import LlamaForCausalLM

import decoding
from decoding.model_pairs.loading import LoadedPair, ModelNotFoundError, load_pair
from decoding.model_pairs.registry import UnknownPairError, embedded_path, from_name
from decoding.model_pairs.loading import _registry_pair, resolve_dtype
from models import EOS_ID, WORD_VOCAB, save_llama, word_tokenizer

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    return {
        "target": save_llama(root / "target", 2, 0, word_tokenizer()),
        "draft": save_llama(root / "draft", 1, 1, word_tokenizer()),
        "draft_swapped": save_llama(root / "draft_swapped", 1, 1, word_tokenizer(swap=True)),
        "draft_no_tokenizer": save_llama(root / "draft_no_tokenizer", 1, 1),
        "draft_padded": save_llama(root / "draft_padded", 1, 1, word_tokenizer(), vocab_size=WORD_VOCAB + 64),
    }


@pytest.fixture(scope="module")
def loaded(dirs) -> LoadedPair:
    return load_pair(dirs["target"], dirs["draft"])


def test_loads_local_directories(loaded):
    assert isinstance(loaded, LoadedPair) and loaded.pair is None
    assert isinstance(loaded.target, LlamaForCausalLM) and loaded.target.config.num_hidden_layers == 2
    assert isinstance(loaded.draft, LlamaForCausalLM) and loaded.draft.config.num_hidden_layers == 1
    assert not loaded.target.training and not loaded.draft.training
    assert loaded.draft.device == loaded.target.device
    assert loaded.target.dtype == loaded.draft.dtype == torch.float32


def test_tokenizers_left_padded_with_eos_as_pad(loaded):
    for tokenizer in (loaded.tokenizer, loaded.draft_tokenizer):
        assert tokenizer.padding_side == "left"
        assert tokenizer.pad_token == "</s>" and tokenizer.pad_token_id == EOS_ID
    assert loaded.tokenizer is not loaded.draft_tokenizer
    assert loaded.target.generation_config.pad_token_id == EOS_ID
    batch = loaded.tokenizer(["w3 w4 w5 w6", "w7"], return_tensors="pt", padding=True)
    assert batch.input_ids[1].tolist()[:3] == [EOS_ID] * 3  # left padding


def test_loaded_pair_decodes_with_a_strategy(loaded):
    target, draft, tokenizer = loaded.target, loaded.draft, loaded.tokenizer
    decoding.enable(target)
    batch = tokenizer(["w3 w4 w5 w6", "w7 w8"], return_tensors="pt", padding=True)
    strategy = decoding.SpeculativeDecoding(draft, 3, tokenizers=(tokenizer, loaded.draft_tokenizer))
    kwargs = dict(attention_mask=batch.attention_mask, max_new_tokens=6, do_sample=False)
    out = target.generate(batch.input_ids, strategy=strategy, **kwargs)
    assert torch.equal(out, target.generate(batch.input_ids, **kwargs))


@pytest.mark.parametrize(
    "dtype, expected",
    [("bfloat16", torch.bfloat16), ("float16", torch.float16), (torch.bfloat16, torch.bfloat16),
     ("auto", torch.float32), ("float32", torch.float32)],
)
def test_dtype(dirs, dtype, expected):
    pair = load_pair(dirs["target"], dirs["draft"], dtype=dtype, draft_device="cpu")
    assert pair.target.dtype == pair.draft.dtype == expected
    assert pair.draft.device == torch.device("cpu")


def test_dtype_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(None) is None and resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3")


def test_mismatched_tokenizers_raise(dirs):
    with pytest.raises(ValueError, match="vocab"):
        load_pair(dirs["target"], dirs["draft_swapped"])
    pair = load_pair(dirs["target"], dirs["draft_swapped"], check_tokenizers=False)  # the caller's choice
    assert pair.draft_tokenizer.convert_ids_to_tokens(5) == "w6"


def test_padded_draft_vocab_is_allowed(dirs):
    pair = load_pair(dirs["target"], dirs["draft_padded"])
    assert pair.draft.config.vocab_size == WORD_VOCAB + 64


def test_draft_without_tokenizer_uses_the_targets(dirs):
    pair = load_pair(dirs["target"], dirs["draft_no_tokenizer"])
    assert pair.draft_tokenizer is pair.tokenizer


def test_unregistered_target_needs_a_draft(dirs):
    with pytest.raises(UnknownPairError, match="draft"):
        load_pair(dirs["target"])


def test_directory_without_weights(tmp_path, dirs):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelNotFoundError, match="no weights") as info:
        load_pair(dirs["target"], empty)
    assert str(empty) in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_pair(tmp_path / "missing" / "model", dirs["draft"])


@pytest.mark.parametrize("offline", ["env", "argument"])
def test_unavailable_hub_id_fails_fast_and_says_how_to_use_local_weights(monkeypatch, dirs, offline):
    if offline == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        kwargs = {}
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        kwargs = {"local_files_only": True}
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        load_pair(dirs["target"], "pairdecode-tests/no-such-draft", **kwargs)
    assert time.perf_counter() - start < 15
    message = str(info.value)
    assert isinstance(info.value, ModelNotFoundError)
    assert "pairdecode-tests/no-such-draft" in message and "--local-dir" in message and "offline" in message


def test_invalid_hub_id(dirs):
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor a valid hub id"):
        load_pair(dirs["target"], "not a hub id")


def test_registry_names_expand_to_their_ids():
    pair, target, draft = _registry_pair("Vicuna-7B", None)
    assert pair is from_name("vicuna-7b") and (target, draft) == (pair.target, pair.draft)
    assert _registry_pair("vicuna-7b", pair.draft)[0] is pair
    pair, target, draft = _registry_pair("vicuna-7b", "/models/other-draft")  # a replaced draft: no registry entry
    assert pair is None and (target, draft) == ("lmsys/vicuna-7b-v1.3", "/models/other-draft")
    assert _registry_pair("someone/model", "someone/draft") == (None, "someone/model", "someone/draft")


def test_both_quantization_flags_raise(dirs):
    with pytest.raises(ValueError, match="exclusive"):
        load_pair(dirs["target"], dirs["draft"], load_in_8bit=True, load_in_4bit=True)


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed; this checks the message when it is missing")
def test_quantization_without_bitsandbytes_says_what_to_install(dirs):
    with pytest.raises(ImportError, match=r"pairdecode\[quant\]"):
        load_pair(dirs["target"], dirs["draft"], load_in_8bit=True)


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed (extra `quant`); 8-bit loading untested")
def test_8bit_target_on_cpu(dirs):
    pair = load_pair(dirs["target"], dirs["draft"], load_in_8bit=True, device_map="cpu")
    assert "Linear8bitLt" in {type(module).__name__ for module in pair.target.modules()}
    assert pair.draft.device == pair.target.device
    batch = pair.tokenizer(["w3 w4"], return_tensors="pt")
    assert pair.target(**batch).logits.shape == (1, 2, WORD_VOCAB)


@pytest.mark.skipif(
    not (embedded_path() / "target" / "config.json").is_file(), reason="model_pairs/embedded/target is not trained yet"
)
def test_embedded_pair_loads():
    pair = load_pair("embedded")
    assert pair.pair is not None and pair.pair.name == "embedded"
    assert pair.draft.device == pair.target.device
    assert pair.tokenizer.padding_side == "left" and pair.tokenizer.pad_token is not None
