"""The one place that touches transformers' private or version-dependent details.

Each function wraps one such detail and is pinned by a test of the same name in ``tests/test_hf_compat.py``, so
that when a transformers release renames or changes it, one named test fails. Everything else in the library
uses transformers' public API only.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import threading

import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer, StaticLayer
from transformers.generation import logits_process as lp

# transformers 5.24 renamed the cache argument of ``generate``'s model kwargs and of model forwards from
# ``past_key_values`` to ``cache`` (the old name is deprecated until 5.40 / 6.0).
CACHE_ARGUMENTS = ("cache", "past_key_values")


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class: type) -> frozenset:
    return frozenset(inspect.signature(model_class.forward).parameters)


def cache_argument(model) -> str:
    """The name under which ``model``'s forward takes its KV cache: ``"cache"`` (transformers >= 5.24) or
    ``"past_key_values"``. Read from the forward's signature, so either version is called without a warning
    (5.23 silently ignores ``cache=``; 5.24 warns on ``past_key_values=``)."""
    return "cache" if "cache" in _forward_parameters(type(model)) else "past_key_values"


def forward_with_cache(model, cache, **inputs):
    """``model(**inputs)`` with ``cache`` passed under the name the installed transformers expects."""
    return model(**inputs, **{cache_argument(model): cache})


def generate_cache(model_kwargs: dict):
    """The cache ``generate`` hands a ``custom_generate`` callable (``cache=`` from 5.24, ``past_key_values=``
    before), or None."""
    for name in CACHE_ARGUMENTS:
        if model_kwargs.get(name) is not None:
            return model_kwargs[name]
    return None


def pad_token_tensor(generation_config) -> torch.Tensor | None:
    """The pad id tensor ``generate`` resolved into the generation config (private ``_pad_token_tensor``)."""
    return generation_config._pad_token_tensor


def supports_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (``GenerationMixin``'s private
    ``_supports_logits_to_keep``; a model that is no ``GenerationMixin``, such as a draft head, by its signature)."""
    check = getattr(model, "_supports_logits_to_keep", None)
    return check() if check is not None else "logits_to_keep" in _forward_parameters(type(model))


def prepared_mask(model, mask: torch.Tensor, n: int, slots: int | None = None) -> torch.Tensor:
    """The attention mask of a forward over ``n`` new tokens per row, ``mask  # [b, T + n]`` (1: a slot that holds
    a token), as the 4D mask ``# [b, 1, n, T + n]`` transformers passes on unchanged (``masking_utils``: "an already
    prepared 4D mask ... is returned as-is"): new token ``i`` reads the valid slots up to its own, ``T + i``, as
    transformers' causal mask over cache slots does. ``slots``: the slots a static cache holds (``>= T + n``); the
    mask is then ``# [b, 1, n, slots]``, the slots after ``T + n`` masked. In the form the model's attention reads
    (private ``_attn_implementation``): boolean for ``sdpa``, additive for ``eager``; other implementations get
    ``mask`` back unchanged. From a 2D mask, transformers builds this with more operations, and its SDPA path reads
    the mask from the device to decide whether to skip it (``_ignore_causal_mask_sdpa``); a 4D one is never read."""
    implementation = attention_implementation(model)
    if implementation not in ("sdpa", "eager"):
        return mask
    batch, width = mask.shape
    allowed = mask.bool().view(batch, 1, 1, width)  # [b, 1, 1, T + n]
    if n > 1:
        columns = torch.arange(width, device=mask.device)
        allowed = allowed & (columns <= torch.arange(width - n, width, device=mask.device).view(n, 1))  # [b, 1, n, T+n]
    if slots is not None and slots > width:
        allowed = torch.nn.functional.pad(allowed, (0, slots - width), value=False)
    if implementation == "sdpa":
        return allowed
    dtype = model.dtype if model.dtype.is_floating_point else torch.float32
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)


PACKED_SDPA = "pairdecode_packed_sdpa"  # our name in transformers' AttentionInterface registry


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          **kwargs):
    """transformers' sdpa attention for grouped-query attention with a mask, without copying the cache: the
    ``g`` query heads that share a key/value head are packed into that head's query rows (``query  # [b, H, n, d]``
    -> ``# [b, H / g, g * n, d]``, the mask ``# [b, 1, n, T]`` repeated for them), where transformers' own
    ``sdpa_attention_forward`` repeats every cached key and value ``g`` times (``repeat_kv``: a copy of the whole
    cache per layer and forward) whenever a mask is given and more than one token is fed (every token, before 5.23).
    Returns ``(# [b, n, H, d], None)`` as transformers' attention functions do; anything else (no groups, no mask,
    a per-head mask, position biases, attention sinks) goes to transformers' own function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    plain = not any(kwargs.get(name) is not None for name in ("position_bias", "s_aux", "sinks", "softcap"))
    if groups == 1 or attention_mask is None or attention_mask.shape[1] != 1 or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, n, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups * n, dim)  # row r * n + i: head kv * g + r, token i
    mask = attention_mask.repeat(1, 1, groups, 1) if n > 1 else attention_mask
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling)
    return out.reshape(batch, heads, n, out.shape[-1]).transpose(1, 2).contiguous(), None


def packs_grouped_queries(model) -> bool:
    """Whether ``model``'s forwards with a prepared 4D mask should run :func:`packed_sdpa_attention`: sdpa attention
    (private ``_attn_implementation``) with fewer key/value heads than query heads."""
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    return attention_implementation(model) == "sdpa" and bool(heads and kv_heads) and kv_heads < heads


_packing_lock = threading.Lock()
# id(config) -> (forwards running packed, the config's own implementation); an entry lives while its forwards run.
_packing: dict[int, list] = {}


@functools.lru_cache(maxsize=None)
def _register_packed_sdpa() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def attention_implementation(model) -> str | None:
    """``model``'s attention implementation (private ``config._attn_implementation``), as the user set it: "sdpa"
    while another thread's forward runs it through :func:`packed_grouped_queries`."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation == PACKED_SDPA:
        with _packing_lock:
            entry = _packing.get(id(model.config))
        return entry[1] if entry is not None else implementation
    return implementation


@contextlib.contextmanager
def packed_grouped_queries(model):
    """Run ``model``'s attention through :func:`packed_sdpa_attention` for the duration: registered once in
    transformers' public ``AttentionInterface``, switched through the config's private
    ``_attn_implementation_internal`` (the attention layers read ``config._attn_implementation`` at every call)."""
    _register_packed_sdpa()
    config = model.config
    with _packing_lock:  # threads (or models) sharing a config: the first in switches, the last out switches back
        entry = _packing.setdefault(id(config), [0, config._attn_implementation_internal])
        entry[0] += 1
        config._attn_implementation_internal = PACKED_SDPA
    try:
        yield
    finally:
        with _packing_lock:
            entry[0] -= 1
            if entry[0] == 0:
                config._attn_implementation_internal = entry[1]
                del _packing[id(config)]


def from_config(model_class, config, dtype: torch.dtype):
    """A randomly initialised ``model_class`` of ``config`` in ``dtype``, created on the current default device
    (private ``_from_config``: ``from_config`` exists only on the Auto classes)."""
    return model_class._from_config(config, dtype=dtype)


def new_cache(model) -> DynamicCache:
    """An empty ``DynamicCache`` laid out for ``model``'s config (per-layer types: full, sliding, ...), except that a
    model whose layers are all full or sliding-window attention gets full layers only: those keep every slot, so
    they can be rolled back and gathered, while the model's own sliding-window masks still restrict attention to
    the window (measured in slots: see :func:`uses_sliding_window`)."""
    cache = DynamicCache(config=model.config)
    kinds = {type(layer) for layer in cache.layers}
    if DynamicSlidingWindowLayer in kinds and kinds <= {DynamicLayer, DynamicSlidingWindowLayer}:
        return DynamicCache()  # no config: full DynamicLayers, created as the layers first write
    return cache


def uses_sliding_window(model) -> bool:
    """Whether some layer of ``model`` attends through a sliding window (its config lays out a
    ``DynamicSlidingWindowLayer``). transformers measures the window in cache slots, not positions, so a row's
    slots must stay contiguous for the window to hold the right tokens."""
    return any(type(layer) is DynamicSlidingWindowLayer for layer in DynamicCache(config=model.config).layers)


def rollback_unsupported_layers(cache: DynamicCache) -> list[str]:
    """Type names of the cache's layers whose slots cannot be rolled back or gathered: anything but a plain
    full-attention ``DynamicLayer`` or ``StaticLayer`` (exact types: sliding-window and quantized layers subclass
    them)."""
    return [type(layer).__name__ for layer in cache.layers if type(layer) not in (DynamicLayer, StaticLayer)]


def new_static_cache(model, capacity: int) -> StaticCache:
    """A ``StaticCache`` of ``capacity`` slots per row for ``model``: fixed shapes, written in place at its
    ``StaticLayer.cumulative_length`` (a device counter that ``crop`` moves back, so no host read). Only
    full-attention models: a static sliding-window layer wraps around, and its slots cannot be rolled back."""
    cache = StaticCache(config=model.config, max_cache_len=capacity)
    other = sorted({type(layer).__name__ for layer in cache.layers if type(layer) is not StaticLayer})
    if other:
        raise ValueError(f"cache='static' needs full attention in every layer; {type(model).__name__} has {other[0]} "
                         "layers (sliding window): use cache='dynamic' for it")
    return cache


def check_static_cache(model, role: str) -> None:
    """Raise a ``ValueError`` saying why ``model`` (the ``role``) cannot decode from a :func:`new_static_cache`: a
    sliding-window layer, or an attention implementation other than sdpa or eager (whose mask is built here)."""
    if uses_sliding_window(model):
        raise ValueError(f"cache='static' needs full attention in every layer; the {role} "
                         f"({type(model).__name__}) has sliding-window layers: use cache='dynamic' for it")
    implementation = attention_implementation(model)
    if implementation not in ("sdpa", "eager"):
        raise ValueError(f"cache='static' needs sdpa or eager attention; the {role} ({type(model).__name__}) uses "
                         f"{implementation!r}: load it with attn_implementation='sdpa' or use cache='dynamic'")


def is_static(cache) -> bool:
    """Whether ``cache`` is a :func:`new_static_cache` (its layers preallocated, written in place)."""
    return bool(cache.layers) and type(cache.layers[0]) is StaticLayer


def grow_static_cache(cache: StaticCache, capacity: int) -> None:
    """Give every layer of a static cache ``capacity`` slots, keeping what it holds (``StaticLayer.max_cache_len``,
    ``.keys`` / ``.values``)."""
    for layer in cache.layers:
        if layer.is_initialized:
            for name in ("keys", "values"):
                old = getattr(layer, name)
                new = old.new_zeros(old.shape[0], old.shape[1], capacity, old.shape[3])
                new[:, :, : old.shape[2]] = old
                setattr(layer, name, new)
        layer.max_cache_len = capacity


def crop_cache(cache: DynamicCache, remove: int) -> None:
    """Drop the last ``remove`` slots of every layer (``DynamicCache.crop`` takes a negative count; a static layer's
    write position ``StaticLayer.cumulative_length`` moves back, as its own ``crop`` does where it has one: 5.17 has
    none)."""
    if remove <= 0:
        return
    if not is_static(cache):
        cache.crop(-remove)
        return
    for layer in cache.layers:
        if layer.is_initialized:
            layer.cumulative_length.sub_(remove)


def select_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only batch rows ``rows  # [b']`` of every layer, in place (``batch_select_indices``; a static cache's
    ``StaticLayer.keys`` / ``.values`` directly: its own checks the device counter, a host read)."""
    if not is_static(cache):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]
            layer.batch_size = rows.numel()


def gather_cache_slots(cache: DynamicCache, order: torch.Tensor) -> None:
    """Reorder every layer's slots in place: slot ``j`` of row ``r`` becomes old slot ``order[r, j]``
    (``order  # [b, T']``). Rewrites ``DynamicLayer.keys`` / ``.values`` (``[b, heads, T, head_dim]``); a static
    layer's first ``T'`` slots, in place, and its ``cumulative_length`` becomes ``T'``."""
    static, width = is_static(cache), order.shape[1]
    for layer in cache.layers:
        if not layer.is_initialized or not layer.keys.numel():
            continue
        index = order[:, None, :, None].to(layer.keys.device)
        keys, values = (t.gather(2, index.expand(-1, t.shape[1], -1, t.shape[3])) for t in (layer.keys, layer.values))
        if static:  # in place: a static layer's tensors keep their address (and shape)
            layer.keys[:, :, :width], layer.values[:, :, :width] = keys, values
            layer.cumulative_length.fill_(width)
        else:
            layer.keys, layer.values = keys, values


def warper_parameters(processor) -> tuple[str, float, float, int] | None:
    """``(setting, value, filter_value, min_tokens_to_keep)`` of a temperature, top-k or top-p warper (setting
    ``"temperature"``, ``"top_k"`` or ``"top_p"``, read from the warpers' attributes), None for anything else."""
    kind = type(processor)
    if kind is lp.TemperatureLogitsWarper:
        return "temperature", float(processor.temperature), -float("inf"), 1
    if kind is lp.TopKLogitsWarper:  # top_k already holds max(top_k, min_tokens_to_keep)
        return "top_k", int(processor.top_k), processor.filter_value, 1
    if kind is lp.TopPLogitsWarper:
        return "top_p", float(processor.top_p), processor.filter_value, processor.min_tokens_to_keep
    return None


def per_row_state(processor) -> dict:
    """State a logits processor holds for every row of the batch, by attribute name (tensors ``# [B, ...]`` or
    lists of ``B`` entries), as transformers' ``generate`` builds them:

    - ``RepetitionPenaltyLogitsProcessor.prompt_ignore_length``: each row's left-padding length, so that pad
      tokens are not penalised (a tensor from 5.23; none before);
    - ``EncoderRepetitionPenaltyLogitsProcessor.encoder_input_ids``: the prompt, for decoder-only models;
    - ``EncoderNoRepeatNGramLogitsProcessor.generated_ngrams``: the prompt's n-grams, one dict per row.
    """
    if isinstance(processor, lp.RepetitionPenaltyLogitsProcessor):
        value = getattr(processor, "prompt_ignore_length", None)
        return {"prompt_ignore_length": value} if isinstance(value, torch.Tensor) else {}
    if isinstance(processor, lp.EncoderRepetitionPenaltyLogitsProcessor):
        return {"encoder_input_ids": processor.encoder_input_ids}
    if isinstance(processor, lp.EncoderNoRepeatNGramLogitsProcessor):
        return {"generated_ngrams": processor.generated_ngrams}
    return {}


def restrict_to_rows(processor, rows: torch.Tensor, batch_size: int):
    """``processor`` itself, or a shallow copy whose per-row state (:func:`per_row_state`) holds only batch rows
    ``rows  # [m]`` of a batch of ``batch_size`` (state built before ``num_return_sequences`` expanded the
    batch is expanded the same way first)."""
    state = per_row_state(processor)
    if not state:
        return processor
    clone = copy.copy(processor)
    for name, full in state.items():
        repeat = max(batch_size // len(full), 1)
        if isinstance(full, torch.Tensor):
            index = torch.div(rows.to(full.device), repeat, rounding_mode="floor")
            setattr(clone, name, full[index])
        else:
            setattr(clone, name, [full[row // repeat] for row in rows.tolist()])
    if isinstance(processor, lp.EncoderNoRepeatNGramLogitsProcessor):
        clone.batch_size = len(rows)  # its __call__ divides the rows it gets by this
    return clone


def generate_with_strategy(generate, strategy, streamer, *args, **kwargs):
    """transformers' ``generate`` running ``strategy`` as its ``custom_generate`` callable.

    ``streamer`` reaches the strategy as its ``decoding_streamer`` argument: transformers never hands
    ``streamer`` to a callable, but forwards the keyword arguments named in the callable's signature that its
    own ``_sample`` does not take.
    """
    return generate(*args, custom_generate=strategy, decoding_streamer=streamer, **kwargs)


def rope_theta(config) -> float:
    """The rotary base of a config with default (unscaled) rotary embeddings: ``rope_parameters["rope_theta"]``
    (transformers 5 gathers the rotary settings there) or ``rope_theta`` (older configs); 10000 when neither is
    set. A scaled rotary embedding (``rope_type`` other than default) raises ``ValueError``."""
    # transformers 5 also answers rope_scaling with the same dict; older configs keep a scaling there, if any
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = parameters.get("rope_type", parameters.get("type", "default"))
    if kind != "default":
        raise ValueError(f"rotary embeddings of type {kind!r} ({parameters}) are not supported here; only the "
                         "default (unscaled) kind")
    return float(parameters.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)
