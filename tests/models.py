"""Tiny seeded causal LMs built from configs (nothing is downloaded): float64 models in memory for every test
module, and small (float32 by default) Llamas with a word-level tokenizer saved to disk for the loading tests.
Every model factory runs under ``torch.random.fork_rng``, so the caller's global RNG is untouched. Cached
factories (``tiny_model``, ``tiny_pair``) return the same object for the same arguments: do not mutate what they
return (use ``fresh_model``). At the end: ``forbid_forward`` (every forward pass fails, for errors that must come
before any work) and pairs whose vocabularies differ by embedding padding (``padded_pair``).
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    Gemma3TextConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    LlamaForCausalLM,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

import decoding

ARCHS = ("llama", "gpt2", "qwen2", "opt", "gpt_neox")  # the five decoder families the tests cover
# Families with sliding-window attention (window SLIDING_WINDOW, shorter than most test sequences): Gemma 3 mixes
# sliding and full layers, Mistral slides in every layer.
SLIDING_ARCHS = ("gemma3", "mistral")
SLIDING_WINDOW = 3
DRAFT_KINDS = ("independent", "noisy_copy", "self")  # the draft kinds of ``tiny_pair``
# Special ids, set in every config. The tiny models' generation_config keeps pad_token_id = PAD_ID but has
# eos_token_id = None: generation stops at an EOS only when a test passes eos_token_id= explicitly.
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_REAL_ID = 3  # the lowest id that is not special; prompt strategies draw tokens from here up
VOCAB = 96  # the default vocabulary size
MAX_POSITIONS = 256
WORD_VOCAB = 64  # the vocabulary of ``word_tokenizer`` and the default of ``save_llama``

# Init scale: transformers' default 0.02 gives near-uniform next-token laws on tiny random models.
INIT_STD = 0.35


def tiny_config(arch: str, vocab_size: int = VOCAB, num_layers: int = 2, hidden: int = 32):
    """The config of a tiny model of family ``arch`` (4 heads, MLP width ``2 * hidden``)."""
    special = dict(pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    heads = 4
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            initializer_range=INIT_STD, tie_word_embeddings=False, **special,
        )
    elif arch == "qwen2":
        config = Qwen2Config(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            initializer_range=INIT_STD, tie_word_embeddings=True, use_sliding_window=False, **special,
        )
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=num_layers, n_head=heads, n_inner=2 * hidden,
            n_positions=MAX_POSITIONS, initializer_range=INIT_STD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            **special,
        )
    elif arch == "opt":
        config = OPTConfig(
            vocab_size=vocab_size, hidden_size=hidden, word_embed_proj_dim=hidden, ffn_dim=2 * hidden,
            num_hidden_layers=num_layers, num_attention_heads=heads, max_position_embeddings=MAX_POSITIONS,
            init_std=INIT_STD, dropout=0.0, attention_dropout=0.0, **special,
        )
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, max_position_embeddings=MAX_POSITIONS, initializer_range=INIT_STD,
            hidden_dropout=0.0, attention_dropout=0.0, **special,
        )
    elif arch == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=2, head_dim=hidden // heads,
            max_position_embeddings=MAX_POSITIONS, initializer_range=INIT_STD, sliding_window=SLIDING_WINDOW,
            layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(num_layers)], **special,
        )
    elif arch == "mistral":
        config = MistralConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
            initializer_range=INIT_STD, sliding_window=SLIDING_WINDOW, **special,
        )
    else:
        raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS + SLIDING_ARCHS}")
    return config


def _build(arch: str, vocab_size: int, seed: int, num_layers: int, hidden: int):
    config = tiny_config(arch, vocab_size=vocab_size, num_layers=num_layers, hidden=hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float64)
        # Norm / bias params stay at their default init; spread the rest so logits are peaked.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() >= 2:
                    param.normal_(0.0, INIT_STD)
    model.eval()
    model.requires_grad_(False)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = None
    return model


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str, vocab_size: int = VOCAB, seed: int = 0, num_layers: int = 2, hidden: int = 32):
    """A random model of family ``arch`` (one of ``ARCHS``): float64, eval mode, ``requires_grad_(False)``, CPU.

    Weights are drawn with ``INIT_STD``, larger than transformers' default, so next-token laws are peaked and
    greedy argmaxes well separated (no float ties); ``generation_config.eos_token_id`` is None (see ``EOS_ID``).
    Cached: the same arguments give the *same object*. Do not modify it (weights, config, generation_config);
    ``decoding.enable(model)`` is fine (idempotent and harmless without ``strategy=``).
    """
    return _build(arch, vocab_size, seed, num_layers, hidden)


def fresh_model(arch: str, vocab_size: int = VOCAB, seed: int = 0, num_layers: int = 2, hidden: int = 32):
    """The model ``tiny_model`` gives for the same arguments (identical weights), as a new, uncached object: for
    tests that must mutate the model or need one on which ``decoding.enable`` was never called."""
    return _build(arch, vocab_size, seed, num_layers, hidden)


def _noisy_copy(model, noise: float, seed: int):
    noisy = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for param in noisy.parameters():
                scale = param.std() if param.numel() > 1 else param.abs()
                param.add_(torch.randn_like(param) * noise * scale)
    return noisy


@functools.lru_cache(maxsize=None)
def tiny_pair(
    arch: str,
    vocab_size: int = VOCAB,
    seed: int = 0,
    draft_kind: str = "independent",
    draft_vocab_size: int | None = None,
    noise: float = 0.02,
):
    """A ``(target, draft)`` pair, cached like ``tiny_model``; the target is ``tiny_model(arch, vocab_size, seed)``
    (2 layers).

    Draft kinds:

    - ``"independent"``: a separate random 1-layer model of the same family (seed ``seed + 1000``) with
      ``draft_vocab_size`` rows (default: the target's ``vocab_size``), so vocab-padding tests can use it.
    - ``"noisy_copy"``: a deep copy of the target with seeded Gaussian noise of relative scale ``noise`` added
      to every weight: it agrees with the target's argmax most of the time, so long runs of drafts are
      accepted, but not always.
    - ``"self"``: the target object itself (every greedy draft is accepted).
    """
    target = tiny_model(arch, vocab_size, seed)
    if draft_kind == "self":
        return target, target
    if draft_kind == "noisy_copy":
        return target, _noisy_copy(target, noise, seed + 2000)
    if draft_kind == "independent":
        return target, tiny_model(arch, draft_vocab_size or vocab_size, seed + 1000, num_layers=1)
    raise ValueError(f"unknown draft_kind {draft_kind!r}; expected one of {DRAFT_KINDS}")


def greedy_reference(model, input_ids, attention_mask, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The model's own greedy ``generate`` (plain transformers, no strategy, ``do_sample=False``); ``kwargs`` go
    to ``generate``."""
    with torch.no_grad():
        return model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False, **kwargs
        )


def word_tokenizer(swap: bool = False, size: int = WORD_VOCAB) -> PreTrainedTokenizerFast:
    """A word-level tokenizer of ``size`` ids (default ``WORD_VOCAB``), whitespace-split, with no pad token.

    Ids: ``<unk>`` 0, ``<s>`` (``BOS_ID``), ``</s>`` (``EOS_ID``), then the words ``w3`` ... ``w{size - 1}`` with
    their number as id. ``swap`` exchanges ids 5 and 6 (a tokenizer that disagrees with the unswapped one).
    """
    words = ["<unk>", "<s>", "</s>", *(f"w{i}" for i in range(FIRST_REAL_ID, size))]
    if swap:
        words[5], words[6] = words[6], words[5]
    backend = Tokenizer(tokenizer_models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_llama(directory, num_layers: int, seed: int, tokenizer=None, *, vocab_size: int = WORD_VOCAB,
               eos_token_id: int | None = EOS_ID, dtype: torch.dtype = torch.float32):
    """Save a random tiny Llama (width 32, 2 heads, seeded with ``seed``) with ``save_pretrained`` to ``directory``,
    with ``tokenizer`` beside it when given; returns ``directory``.

    No pad token in its config or generation config; ``eos_token_id=None`` saves a model without EOS (generation
    then never stops early). For tests that load from disk (``load_pair``, ``decoding-bench --target DIR``).
    """
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        bos_token_id=BOS_ID, eos_token_id=eos_token_id, pad_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = None
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


# ----------------------------------------------------------------------------------------------------------
# Models whose forward passes fail: errors must be raised before any work


class ForwardCalled(AssertionError):
    """Raised by a model under ``forbid_forward`` when one of its forward passes runs."""


def forbid_forward(model):
    """Make every forward pass of ``model`` (and of its submodules) fail."""

    def hook(module, args, kwargs):
        raise ForwardCalled(f"{type(module).__name__}.forward was called before the error")

    for module in model.modules():
        module.register_forward_pre_hook(hook, with_kwargs=True)
    return model


# ----------------------------------------------------------------------------------------------------------
# Padded vocabularies: one model of a pair has head rows past the ids both share

SHARED, PADDED = 128, 160


def padded_copy(arch: str, seed: int, num_layers: int, new_size: int, extra_logit: float | None):
    """``tiny_model(arch, SHARED, seed, num_layers)`` rebuilt (``fresh_model``: cached models must not be
    modified) with ``new_size`` embedding and head rows; ids below ``SHARED`` keep their exact logits.
    ``extra_logit``: a bias on the new head rows (1e3: they win every argmax and every max; None: random rows
    on the scale of the others)."""
    model = fresh_model(arch, vocab_size=SHARED, seed=seed, num_layers=num_layers)
    head = model.get_output_embeddings()
    weight = head.weight.detach().clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(new_size + seed)
        model.resize_token_embeddings(new_size, mean_resizing=False)
        linear = torch.nn.Linear(weight.shape[1], new_size, bias=True, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.normal_(0.0, float(weight.std()))
            linear.weight[:SHARED] = weight
            linear.bias.zero_()
            if extra_logit is not None:
                linear.bias[SHARED:] = extra_logit
    model.set_output_embeddings(linear)
    model.requires_grad_(False)
    return model


PADDING_CASES = [  # (bigger, extra_logit) of ``padded_pair``
    pytest.param("expert", None, id="expert-160-random-extra-rows"),
    pytest.param("expert", 1e3, id="expert-160-extra-rows-win"),
    pytest.param("amateur", 1e3, id="amateur-160-extra-rows-win"),
]


def padded_pair(arch, bigger, extra_logit):
    """An ``(expert, amateur)`` pair over ``SHARED`` ids (the 2-layer ``tiny_model`` and a 1-layer one, seed 1000)
    whose ``bigger`` member (``"expert"`` or ``"amateur"``) is a ``padded_copy`` with ``PADDED`` rows; cached."""
    expert = tiny_model(arch, vocab_size=SHARED)
    amateur = tiny_model(arch, vocab_size=SHARED, seed=1000, num_layers=1)
    key = (arch, bigger, extra_logit)
    if key not in _padded:
        if bigger == "expert":
            _padded[key] = padded_copy(arch, 0, 2, PADDED, extra_logit), amateur
        else:
            _padded[key] = expert, padded_copy(arch, 1000, 1, PADDED, extra_logit)
    return _padded[key]


_padded: dict = {}


# The environment of a subprocess that must import this checkout's ``decoding`` (its root on PYTHONPATH; the root
# folders are not packages, so nothing there can shadow an installed module).
CHECKOUT_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(Path(decoding.__file__).resolve().parent.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}


def tiny_head(target, draft_vocab: int | None = None, seed: int = 0):
    """A random :class:`~decoding.proposers.eagle_head.Eagle3Head` for ``target`` (its width, heads and vocabulary,
    one layer, ``target``'s dtype), whose ``draft_vocab`` draft ids map to every other target id from 3 up (all of
    them when None)."""
    from decoding.proposers.eagle_head import Eagle3Head

    config = target.config.get_text_config()
    vocab = config.vocab_size
    draft_vocab = draft_vocab or vocab
    head_config = type(config)(**{**config.to_dict(), "num_hidden_layers": 1, "draft_vocab_size": draft_vocab})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Eagle3Head(head_config).to(target.dtype)
        for param in head.parameters():
            torch.nn.init.normal_(param, std=INIT_STD)
    used = torch.arange(draft_vocab) if draft_vocab == vocab else (FIRST_REAL_ID + 2 * torch.arange(draft_vocab)) % vocab
    used = used.sort().values
    assert used.unique().numel() == draft_vocab, f"{draft_vocab} draft ids do not fit every other id of {vocab}"
    head.d2t.copy_(used - torch.arange(draft_vocab))
    head.t2d.zero_()
    head.t2d[used] = True
    return head

