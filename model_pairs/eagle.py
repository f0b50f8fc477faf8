"""EAGLE-3 draft heads on disk, in the layout that published heads and SGLang's SpecForge use.

A head's folder holds ``config.json`` (a one-layer Llama config: ``architectures: ["LlamaForCausalLMEagle3"]``,
``draft_vocab_size``, optionally ``target_hidden_size``, ``eagle_aux_hidden_state_layer_ids``,
``norm_before_residual``) and its weights (``model.safetensors`` or ``pytorch_model.bin``): ``fc.weight``,
``midlayer.*`` (one decoder layer whose ``q/k/v_proj`` read ``2 H``), ``norm.weight``, ``lm_head.weight``, ``d2t``
(draft id -> target id offsets) and ``t2d`` (the target ids in the draft vocabulary); no ``embed_tokens``, which
is the target's, unless the head has another width. Also read: speculators-style ``layers.0.*`` names, a
``model.`` prefix, and heads over the whole vocabulary without ``d2t``/``t2d``.

>>> from decoding.model_pairs.eagle import load_head
>>> head = load_head("path/or/hub-id", dtype=torch.bfloat16, device="cuda")
>>> target.generate(..., strategy=decoding.SpeculativeDecoding(head, num_draft_tokens=4))
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from decoding.proposers.eagle_head import ARCHITECTURE, Eagle3Head

from .sources import ModelNotFoundError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_RENAMES = ((re.compile(r"^model\."), ""), (re.compile(r"^layers\.0\."), "midlayer."),
            (re.compile(r"^draft_id_to_target_id$"), "d2t"))


def save_head(head: Eagle3Head, folder: str | os.PathLike) -> Path:
    """Write ``head`` to ``folder`` (created) in the published layout; returns the folder."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    config = head.config.to_dict()
    config.update(architectures=[ARCHITECTURE], num_hidden_layers=1, draft_vocab_size=head.lm_head.out_features)
    folder.joinpath("config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def load_head(source: str | os.PathLike, *, dtype: torch.dtype | None = None, device=None,
              local_files_only: bool = False) -> Eagle3Head:
    """A head from a local folder or a hub id (downloaded when the hub is reachable and the files are not cached;
    ``local_files_only`` never downloads). ``dtype``: default the checkpoint's."""
    folder = _folder(source, local_files_only)
    config = _config(folder)
    state = _renamed(_weights(folder))
    vocab, draft_vocab = config.vocab_size, config.draft_vocab_size
    if "d2t" not in state and draft_vocab == vocab:  # a head over the whole vocabulary: the identity map
        state["d2t"] = torch.zeros(vocab, dtype=torch.int64)
        state["t2d"] = torch.ones(vocab, dtype=torch.bool)
    head = Eagle3Head(config).to(state["fc.weight"].dtype)  # the checkpoint's precision, kept while loading
    _check_names(head, state, folder)
    head.load_state_dict(state, strict=True)
    head = head.to(dtype=dtype) if dtype is not None else head  # floating tensors only: d2t and t2d keep theirs
    return head.to(device) if device is not None else head


def _folder(source, local_files_only: bool) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; a draft head is a folder with config.json and its weights")
    try:
        validate_repo_id(str(source))
    except HFValidationError:
        raise ModelNotFoundError(f"no draft head at {str(source)!r}: not a folder, and not a hub id") from None
    patterns = ["config.json", *WEIGHT_FILES]
    try:
        return Path(snapshot_download(str(source), allow_patterns=patterns, local_files_only=True))
    except OSError:  # not cached (huggingface_hub's LocalEntryNotFoundError): download below
        if local_files_only:
            raise ModelNotFoundError(f"the draft head {source!r} is not in the hub cache and local_files_only=True: "
                                     "download it on a machine with network access, or pass its folder") from None
    try:
        return Path(snapshot_download(str(source), allow_patterns=patterns))
    except OSError as error:  # offline, unknown repo, gated: huggingface_hub's errors are all OSErrors
        raise ModelNotFoundError(
            f"could not download the draft head {source!r} ({type(error).__name__}: {error}). Offline? Download its "
            "folder (config.json and model.safetensors) elsewhere and pass its path instead.") from None


def _config(folder: Path) -> LlamaConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{str(folder)!r} has no config.json: not a draft head folder")
    raw = json.loads(path.read_text())
    if raw.get("num_hidden_layers", 1) != 1:
        raise ValueError(f"{str(path)!r}: a draft head of {raw['num_hidden_layers']} layers; one is supported")
    raw.setdefault("draft_vocab_size", raw.get("vocab_size"))
    return LlamaConfig.from_dict(raw)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return load_file(str(path)) if name.endswith(".safetensors") else torch.load(path, weights_only=True)
    raise ModelNotFoundError(f"{str(folder)!r} has no weights: expected one of {WEIGHT_FILES}")


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names for the field's variants: a ``model.`` prefix, speculators' ``layers.0.``, vLLM's
    ``draft_id_to_target_id``; the target's embedding, where a checkpoint carries it, is dropped (the head reads the
    target's) unless the head has a table of its own."""
    out = {}
    for name, tensor in state.items():
        for pattern, replacement in _RENAMES:
            name = pattern.sub(replacement, name)
        out[name] = tensor
    return out


def _check_names(head: Eagle3Head, state: dict, folder: Path) -> None:
    expected = set(head.state_dict())
    if "embed_tokens.weight" in state and "embed_tokens.weight" not in expected:
        del state["embed_tokens.weight"]  # the target's own table, saved along: the head reads the target's
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{str(folder)!r} is not an EAGLE-3 head of this layout: missing {missing}, unexpected "
                         f"{unexpected}")
