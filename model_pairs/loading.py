"""Loading a target/draft pair: one thin layer over ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained``.

:func:`load_pair` takes a registry name (:mod:`decoding.model_pairs.registry`) or any hub id / local directory
for the target, and a hub id / local directory for the draft::

    >>> from decoding.model_pairs.loading import load_pair
    >>> pair = load_pair("embedded")                                   # shipped with the package, no download
    >>> pair = load_pair("qwen2.5-7b-instruct", dtype="bfloat16", device_map="auto")
    >>> pair = load_pair("/models/llama-8b", "/models/llama-1b", load_in_4bit=True)
    >>> pair = load_pair("smollm2-135m-instruct")    # a GGUF inside a pip package, converted once to the cache
    >>> pair = load_pair("/models/model.Q4_K_M.gguf", "/models/draft")
    >>> pair = load_pair("smollm2-135m-instruct", head=True)  # the shipped EAGLE-3 head as the draft

A ``.gguf`` file (or a registry pair whose target is a GGUF shipped in a Python package) is converted once to a
transformers folder in the pairdecode cache and loaded from there (:mod:`decoding.model_pairs.gguf`: where the
cache is, how to override it, the install commands shown when ``gguf`` or the package is missing).

Offline use: local directories never touch the network. A hub id is looked up in the local hub cache first; the
network is tried only when it is not cached and neither ``local_files_only=True`` nor ``HF_HUB_OFFLINE=1`` says
otherwise (on a machine without network, the hub's retries take about 25 s before failing: set
``HF_HUB_OFFLINE=1`` to fail at once). A model that cannot be found raises :class:`ModelNotFoundError` (both an
``OSError`` and a ``ValueError``) naming the id and how to point at local weights instead.

Local directories are what ``save_pretrained`` writes: ``config.json``, weights (``*.safetensors`` or ``*.bin``)
and, for the target, the tokenizer files; a draft directory without tokenizer files uses the target's tokenizer.

Before any weights are loaded, the configs and tokenizers are loaded and compared, so that a tokenizer mismatch
or a missing draft is reported without first reading gigabytes of target weights.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from decoding.vocab import check_vocab_compatibility

from .gguf import check_gguf, convert_gguf
from .registry import ModelPair, UnknownPairError, from_name, names, with_heads
from .sources import ModelNotFoundError, Source, find_source, from_pretrained, hub_offline, looks_like_path

__all__ = ["LoadedPair", "ModelNotFoundError", "load_pair", "resolve_dtype"]

_DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


@dataclass
class LoadedPair:
    """What :func:`load_pair` returns.

    Attributes:
        target: the large model, in eval mode.
        draft: the small model (draft or amateur), in eval mode, on the target's input device by default; with
            ``load_pair(..., head=...)``, the draft head (an :class:`~decoding.proposers.eagle_head.Eagle3Head`,
            in the target's dtype), which ``SpeculativeDecoding`` takes like any draft.
        tokenizer: the target's tokenizer (left padding, with a pad token).
        draft_tokenizer: the draft's tokenizer (the same object as ``tokenizer`` when the draft has none of its
            own or both come from the same place).
        pair: the registry entry when the pair came from the registry unchanged, else ``None``.
    """

    target: PreTrainedModel
    draft: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    draft_tokenizer: PreTrainedTokenizerBase
    pair: ModelPair | None = None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``None``, ``"auto"`` or a ``torch.dtype`` from a dtype or a name ("float32", "bf16", "torch.float16", ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key in _DTYPES:
            return _DTYPES[key]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)} or a torch.dtype.")


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (decoder-only batches), and the EOS token as pad token when there is no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _set_pad_id(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``generation_config`` the tokenizer's pad id when it has none (batched generation needs one)."""
    config = getattr(model, "generation_config", None)
    if config is not None and config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id


def _quantization_config(load_in_8bit: bool, load_in_4bit: bool, dtype) -> Any:
    """A ``BitsAndBytesConfig`` for the target, or ``None``; needs the ``quant`` extra (bitsandbytes)."""
    if load_in_8bit and load_in_4bit:
        raise ValueError("load_in_8bit and load_in_4bit are exclusive: choose one.")
    if not (load_in_8bit or load_in_4bit):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        bits = 8 if load_in_8bit else 4
        raise ImportError(f'{bits}-bit loading needs bitsandbytes: pip install "pairdecode[quant]"')
    from transformers import BitsAndBytesConfig

    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    if isinstance(dtype, torch.dtype):
        compute = dtype
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        compute = torch.bfloat16
    else:
        compute = torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)


def _is_gguf_file(spec) -> bool:
    text = None if spec is None else os.fspath(spec)
    return text is not None and text.lower().endswith(".gguf") and Path(text).expanduser().is_file()


def _gguf_folder(spec, cache_dir):
    """A ``.gguf`` file converted to its cached transformers folder; anything else passed through."""
    if _is_gguf_file(spec):
        return str(convert_gguf(spec, cache_dir))
    return spec


def _is_registered(target) -> bool:
    return isinstance(target, str) and target.strip().lower() in names()


def _head_spec(target, head) -> str | None:
    """The folder or hub id of the draft head asked for by ``head=`` (``None`` when none is asked for): ``True``
    means the registry pair's own head; :class:`ValueError` naming the pairs that have one when there is none."""
    if head is None or head is False:
        return None
    if head is True:
        pair = from_name(target) if _is_registered(target) else None
        if pair is None or not pair.head:
            which = f"the pair {pair.name!r}" if pair is not None else f"{os.fspath(target)!r} (not a registered pair)"
            raise ValueError(
                f"head=True asks for the registered draft head of the pair, but {which} has none; pairs with a "
                f"draft head: {', '.join(with_heads()) or 'none'}. Or pass head= the folder or hub id of an EAGLE-3 "
                "head trained on this target (decoding.model_pairs.eagle)."
            )
        if not Path(pair.head).is_dir() and looks_like_path(pair.head):
            raise ModelNotFoundError(
                f"the draft head of {pair.name} is not in this installation ({pair.head} is missing); train one "
                "with python -m decoding.model_pairs.heads, or pass head= its folder."
            )
        return pair.head
    if isinstance(head, (str, os.PathLike)) and os.fspath(head).strip():
        return os.fspath(head)
    raise ValueError(f"head must be True, False or the folder or hub id of a draft head, got {head!r}")


def _registry_pair(target: str | os.PathLike, draft, cache_dir=None, head: str | None = None
                   ) -> tuple[ModelPair | None, str | os.PathLike, Any]:
    """``(pair, target, draft)``: a registry name expanded to its ids (a packaged GGUF target converted to its
    cached folder), anything else passed through. With a draft ``head``, no draft is needed (``draft`` is
    ``None``), and ``pair`` is the registry entry when ``head`` is its own."""
    if head is not None:
        if not _is_registered(target):
            return None, target, None
        pair = from_name(target)
        target = str(convert_gguf(pair.gguf_path(), cache_dir)) if pair.gguf else pair.target
        return (pair if head == pair.head else None), target, None
    if not _is_registered(target):
        if draft is None:
            if _is_gguf_file(target):
                check_gguf(target)  # a broken file is reported as such before a draft is asked for
            else:
                find_source(target, "target")  # a path that does not exist is reported as such first
            raise UnknownPairError(
                f"{os.fspath(target)!r} is not a registered pair, so a draft is needed: pass one (draft=, or "
                f"--draft on the command line: a hub id or local directory), or use a registered pair: "
                f"{', '.join(names())}."
            )
        return None, target, draft
    pair = from_name(target)
    if pair.name == "embedded" and not Path(pair.target).is_dir():
        raise ModelNotFoundError(
            f"the embedded pair is not in this installation ({pair.target} is missing); train it with the script "
            "in model_pairs/ (see the model card there), or pass a target and draft."
        )
    target = pair.target
    if pair.gguf:
        gguf_file = pair.gguf_path()  # MissingPackageError with the install command, before anything slow
        if draft is None and not Path(pair.draft).is_dir():
            raise ModelNotFoundError(
                f"the draft of {pair.name} is not in this installation ({pair.draft} is missing); train it with "
                "decoding.model_pairs.distill (see its model card), or pass draft=."
            )
        target = str(convert_gguf(gguf_file, cache_dir))
    if draft is None or os.fspath(draft) == pair.draft:
        return pair, target, pair.draft
    return None, target, draft


def _target_model(source: Source, dtype, quantization, device_map, local_files_only: bool) -> PreTrainedModel:
    """The target's weights: in ``dtype``, quantized or spread by ``device_map`` (``"auto"`` when quantized)."""
    kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        device_map = "auto" if device_map is None else device_map
    if device_map is not None:
        kwargs["device_map"] = device_map
    return from_pretrained(AutoModelForCausalLM, source, "model", local_files_only, **kwargs)


def load_pair(
    target: str | os.PathLike,
    draft: str | os.PathLike | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    draft_device: str | torch.device | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    local_files_only: bool | None = None,
    check_tokenizers: bool = True,
    cache_dir: str | os.PathLike | None = None,
    head: bool | str | os.PathLike = False,
) -> LoadedPair:
    """Load a target model, its draft (or amateur) and their tokenizers, ready for the decoding strategies.

    Args:
        target: a registry name (``decoding.model_pairs.registry.names()``; the draft then comes from the registry unless
            ``draft`` is given), a hub id, a local directory or a ``.gguf`` file.
        draft: hub id, local directory or ``.gguf`` file of the small model; required unless ``target`` is a
            registry name.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"`` (the checkpoint's dtype) or a
            ``torch.dtype``, for both models; ``None`` leaves transformers' default (``"auto"``).
        device_map: passed to the target's ``from_pretrained`` (accelerate): ``"auto"`` splits a large target
            across the GPUs (and CPU). Default: no map (CPU), or ``"auto"`` for a quantized target.
        draft_device: where the draft goes (one device). Default: the target's ``model.device`` (its input
            device), which the strategies' same-device check requires.
        load_in_8bit, load_in_4bit: quantize the target with bitsandbytes (extra ``quant``:
            ``pip install "pairdecode[quant]"``); 4-bit uses NF4 with ``dtype`` (or bfloat16 on a GPU, float32 on
            CPU) as compute dtype. The draft is not quantized.
        local_files_only: never use the network (hub ids must be in the local cache). ``None``: ``True`` when
            ``HF_HUB_OFFLINE=1`` is set, else look in the cache first and then on the hub.
        check_tokenizers: compare both tokenizers over the shared id range before loading weights (ids past the
            smaller vocabulary, padded embedding rows, are allowed to differ). The strategies still check the
            vocabulary sizes when this is off.
        cache_dir: where converted GGUF models go (default: :func:`decoding.model_pairs.gguf.cache_dir`,
            ``$PAIRDECODE_CACHE`` or ``~/.cache/pairdecode``).
        head: draft with an EAGLE-3 head that reads the target's hidden states instead of a draft model:
            ``True`` for the registry pair's own head (``ModelPair.head``; pairs with one:
            ``registry.with_heads()``), or the folder or hub id of a head trained on this target
            (:func:`decoding.model_pairs.eagle.load_head`). ``draft`` is then the head, loaded in the target's
            dtype (a head shipped in bfloat16 runs in float32 with a float32 target) on ``draft_device`` or the
            target's input device; ``draft_tokenizer`` is the target's. Exclusive with ``draft``.

    Tokenizers are returned with ``padding_side="left"``; a tokenizer without a pad token gets its EOS token as
    pad token, and a model whose ``generation_config`` has no ``pad_token_id`` gets the tokenizer's.
    A local draft directory without tokenizer files uses the target's tokenizer.

    Raises:
        UnknownPairError (ValueError): a target that is neither a registry name nor given with a draft.
        ModelNotFoundError (OSError and ValueError): a hub id not available here, a path that does not exist or
            has no weights; the message says how to point at local weights.
        ValueError: mismatched tokenizers (the message says "vocab"), both quantization flags, a bad dtype;
            ``head=True`` for a pair without a head (the message names the pairs that have one), or both ``draft``
            and ``head``.
        ImportError: quantization without bitsandbytes installed; a GGUF model without the ``gguf`` package or a
            packaged model without its package (:class:`~decoding.model_pairs.gguf.MissingPackageError`, whose
            message is the install command).
        InvalidGGUFError (ValueError): a ``.gguf`` file that is truncated or not a GGUF file
            (:class:`~decoding.model_pairs.gguf.InvalidGGUFError`).
    """
    head_spec = _head_spec(target, head)
    if head_spec is not None and draft is not None:
        raise ValueError("pass draft= (a draft model) or head= (a draft head), not both")
    pair, target, draft = _registry_pair(target, draft, cache_dir, head_spec)
    if head_spec is not None:
        return _load_with_head(pair, _gguf_folder(target, cache_dir), head_spec, dtype=dtype, device_map=device_map,
                               draft_device=draft_device, load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit,
                               local_files_only=local_files_only)
    target, draft = _gguf_folder(target, cache_dir), _gguf_folder(draft, cache_dir)
    role = pair.role if pair is not None else "draft"
    dtype = resolve_dtype(dtype)
    quantization = _quantization_config(load_in_8bit, load_in_4bit, dtype)
    if local_files_only is None:
        local_files_only = hub_offline()
    target_source, draft_source = find_source(target, "target"), find_source(draft, role)

    # Configs and tokenizers first: cheap, and they catch missing models and mismatches before any weights load.
    target_config = from_pretrained(AutoConfig, target_source, "config", local_files_only)
    draft_config = from_pretrained(AutoConfig, draft_source, "config", local_files_only)
    if not target_source.has_tokenizer():
        raise ModelNotFoundError(f"the target directory {target_source.where!r} has no tokenizer files.")
    tokenizer = _prepare_tokenizer(from_pretrained(AutoTokenizer, target_source, "tokenizer", local_files_only))
    if draft_source.where == target_source.where or not draft_source.has_tokenizer():
        draft_tokenizer = tokenizer
    else:
        draft_tokenizer = from_pretrained(AutoTokenizer, draft_source, "tokenizer", local_files_only)
        draft_tokenizer = _prepare_tokenizer(draft_tokenizer)
    if check_tokenizers:
        tokenizers = None if draft_tokenizer is tokenizer else (tokenizer, draft_tokenizer)
        check_vocab_compatibility(
            SimpleNamespace(config=target_config), SimpleNamespace(config=draft_config), tokenizers, role=role
        )

    target_model = _target_model(target_source, dtype, quantization, device_map, local_files_only)

    device = torch.device(draft_device) if draft_device is not None else target_model.device
    draft_kwargs: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
    if device.type != "cpu":
        draft_kwargs["device_map"] = {"": device}  # straight onto the device, no CPU copy
    draft_model = from_pretrained(AutoModelForCausalLM, draft_source, "model", local_files_only, **draft_kwargs)
    if draft_model.device != device:
        draft_model = draft_model.to(device)

    for model, tok in ((target_model, tokenizer), (draft_model, draft_tokenizer)):
        model.eval()
        _set_pad_id(model, tok)
    return LoadedPair(target_model, draft_model, tokenizer, draft_tokenizer, pair)


def _load_with_head(pair: ModelPair | None, target, head: str, *, dtype, device_map, draft_device, load_in_8bit,
                    load_in_4bit, local_files_only) -> LoadedPair:
    """:func:`load_pair` with a draft head: the target and its tokenizer, then the head in the target's dtype."""
    from .eagle import load_head  # eagle imports this module

    dtype = resolve_dtype(dtype)
    quantization = _quantization_config(load_in_8bit, load_in_4bit, dtype)
    if local_files_only is None:
        local_files_only = hub_offline()
    source = find_source(target, "target")
    config = from_pretrained(AutoConfig, source, "config", local_files_only).get_text_config()
    if not source.has_tokenizer():
        raise ModelNotFoundError(f"the target directory {source.where!r} has no tokenizer files.")
    tokenizer = _prepare_tokenizer(from_pretrained(AutoTokenizer, source, "tokenizer", local_files_only))
    draft = load_head(head, local_files_only=local_files_only)  # small: checked before the target's weights load
    width = getattr(draft.config, "target_hidden_size", None) or draft.config.hidden_size
    if (draft.config.vocab_size, width) != (config.vocab_size, config.hidden_size):
        raise ValueError(
            f"the draft head {head!r} was trained on a target of vocab size {draft.config.vocab_size} and hidden size "
            f"{width}, but this target's are {config.vocab_size} and {config.hidden_size}: use a head trained on it"
        )
    model = _target_model(source, dtype, quantization, device_map, local_files_only)
    device = torch.device(draft_device) if draft_device is not None else model.device
    # The target's dtype, not the checkpoint's: a head shipped in bfloat16 runs in float32 with a float32 target.
    draft = draft.to(device=device, dtype=model.dtype).eval()
    model.eval()
    _set_pad_id(model, tokenizer)
    return LoadedPair(model, draft, tokenizer, tokenizer, pair)
