"""``decoding-bench``'s model pair from its command line: ``--target``/``--draft`` loaded, or the synthetic
damped pair of a ``--synthetic`` spec such as ``layers=2,hidden=32,vocab=96`` (checked before any model is built:
each number in its range, a shape Llama's attention accepts, and parameters that fit in memory)."""

from __future__ import annotations

import argparse
import os

import torch

from decoding.evals.common import pairs
from decoding.evals.common.pairs import SYNTHETIC_DEFAULTS, Pair

__all__ = ["PRESET_THREADS", "SYNTHETIC_KEYS", "SYNTHETIC_PRESETS", "check_synthetic_size", "load", "parse_synthetic",
           "preset_threads", "synthetic_parameters", "synthetic_shape"]

# --synthetic keys -> damped_pair arguments.
SYNTHETIC_KEYS = {"layers": "num_layers", "hidden": "hidden_size", "vocab": "vocab_size",
                  "intermediate": "intermediate_size", "heads": "num_attention_heads",
                  "kv_heads": "num_key_value_heads", "damping": "damping", "head_scale": "head_scale"}
KEY_OF = {name: key for key, name in SYNTHETIC_KEYS.items()}
FLOAT_KEYS = ("damping", "head_scale")
# Named shapes, usable as the first item of a spec ("overhead" or "overhead,layers=4"). "overhead": a tiny
# Llama-shaped pair whose forwards cost next to nothing, so that a step's time is the decoding loop's own overhead
# (issue 28); damping 0.05 gives greedy alpha 0.95 at g=4 on the shipped prompts (head_scale does not move greedy
# acceptance; 20 keeps sampled laws peaked).
SYNTHETIC_PRESETS = {"overhead": "layers=2,hidden=64,intermediate=128,vocab=256,heads=4,kv_heads=2,damping=0.05,"
                                 "head_scale=20"}
# Presets that run on one torch CPU thread unless --threads says otherwise: forwards this small gain nothing from
# intra-op threads, and on a busy CPU a second thread that waits for a core makes every op wait (on 2 loaded cores
# the overhead benchmark took 4.5 minutes with two threads, 30 s with one).
PRESET_THREADS = {"overhead": 1}
# Allowed values, (lowest, highest); sizes are bounded by memory too (check_synthetic_size). Why: vocab >= 2 as id 0
# is the pad token and prompt bytes map to ids 1..vocab-1; hidden >= 2 as rotary heads need an even size; layers
# <= 1024 as a deeper random stack only takes longer to build; damping scales the damped layers' outputs down (1:
# not damped); a head_scale beyond 1000 risks infinite float16 logits; torch sizes are 64-bit integers.
MAX_SIZE = 2**63 - 1
RANGES = {"num_layers": (1, 1024), "hidden_size": (2, MAX_SIZE), "vocab_size": (2, MAX_SIZE),
          "intermediate_size": (1, MAX_SIZE), "num_attention_heads": (1, MAX_SIZE),
          "num_key_value_heads": (1, MAX_SIZE), "damping": (0.0, 1.0), "head_scale": (0.0, 1000.0)}


def parse_synthetic(spec: str) -> dict:
    """``"layers=2,hidden=32"`` -> ``{"num_layers": 2, "hidden_size": 32}``; a preset name (:data:`SYNTHETIC_PRESETS`)
    as the first item stands for its items, which later ones override. ``ValueError`` for an unknown key, a value
    that is not a (finite) number or out of its range (:data:`RANGES`), or a shape Llama refuses."""
    settings = {}
    items = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if items and items[0] in SYNTHETIC_PRESETS:
        items[:1] = SYNTHETIC_PRESETS[items[0]].split(",")
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SYNTHETIC_KEYS:
            raise ValueError(f"bad --synthetic item {item!r}: expected KEY=VALUE with KEY in "
                             f"{', '.join(SYNTHETIC_KEYS)}, or first a preset ({', '.join(SYNTHETIC_PRESETS)})")
        name = SYNTHETIC_KEYS[key.strip()]
        settings[name] = _number(item, name, value)
    _check_shape(synthetic_shape(settings), settings)
    return settings


def preset_threads(spec: str | None) -> int | None:
    """The torch threads of the preset that ``spec`` starts with (:data:`PRESET_THREADS`), else None."""
    first = (spec or "").split(",")[0].strip()
    return PRESET_THREADS.get(first)


def _number(item: str, name: str, value: str) -> int | float:
    """One ``--synthetic`` value, parsed and in its range."""
    low, high = RANGES[name]
    kind = "a finite number" if name in FLOAT_KEYS else "an integer"
    allowed = f"from {low} to {high}" if high < MAX_SIZE else f">= {low} (and below 2**63)"
    try:
        number = float(value) if name in FLOAT_KEYS else int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:  # NaN compares false: refused too
        raise ValueError(f"bad --synthetic value {item!r}: expected {kind} {allowed}")
    return number


def synthetic_shape(settings: dict) -> dict:
    """The whole shape the synthetic pair gets from ``settings``: :func:`decoding.evals.common.pairs.synthetic`'s
    defaults (a width without an MLP width gets Llama's ratio), then ``damped_pair``'s and ``LlamaConfig``'s
    (``hidden // 64`` heads, at least 1; as many key/value heads)."""
    from decoding.model_pairs.synthetic import llama_intermediate_size

    shape = {**SYNTHETIC_DEFAULTS, **settings}
    if "hidden_size" in settings and "intermediate_size" not in settings:
        shape["intermediate_size"] = llama_intermediate_size(shape["hidden_size"])
    shape.setdefault("num_attention_heads", max(1, shape["hidden_size"] // 64))
    shape.setdefault("num_key_value_heads", shape["num_attention_heads"])
    return shape


def _shown(name: str, shape: dict, given: dict) -> str:
    """``key=value`` as the spec would write it, saying when the value is a default."""
    return f"{KEY_OF[name]}={shape[name]}" + ("" if name in given else " (the default)")


def _check_shape(shape: dict, given: dict) -> None:
    """Llama's constraints on the heads: they split ``hidden`` evenly into heads of an even size (rotary position
    embeddings rotate pairs of dimensions), and the key/value heads divide the heads."""
    hidden, heads, kv_heads = (shape[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    if hidden % 2:
        raise ValueError(f"bad --synthetic shape: {_shown('hidden_size', shape, given)} is odd, but it splits into "
                         "attention heads of an even size (for rotary position embeddings): use an even hidden, "
                         f"e.g. hidden={hidden - 1} or hidden={hidden + 1}")
    if hidden % (2 * heads):
        raise ValueError(f"bad --synthetic shape: {_shown('hidden_size', shape, given)} does not split into "
                         f"{_shown('num_attention_heads', shape, given)} attention heads of an even size (for rotary "
                         f"position embeddings): use heads that divide hidden / 2, e.g. "
                         f"heads={_largest_divisor(hidden // 2, heads)}")
    if heads % kv_heads:
        raise ValueError(f"bad --synthetic shape: {_shown('num_key_value_heads', shape, given)} does not divide "
                         f"{_shown('num_attention_heads', shape, given)} (each key/value head serves a group of "
                         f"heads): use a divisor of heads, e.g. kv_heads={_largest_divisor(heads, kv_heads)}")


def _largest_divisor(number: int, at_most: int, tries: int = 10_000) -> int:
    """The largest divisor of ``number`` up to ``at_most``, among the ``tries`` values below it (else 1)."""
    start = min(number, at_most)
    return next((d for d in range(start, max(0, start - tries), -1) if number % d == 0), 1)


def synthetic_parameters(shape: dict) -> int:
    """Parameters of the damped target and its one-layer draft of ``shape`` (:func:`synthetic_shape`): each has
    its own embeddings, head (untied) and final norm; Llama layers have no biases."""
    hidden, vocab, mlp = shape["hidden_size"], shape["vocab_size"], shape["intermediate_size"]
    kv_width = shape["num_key_value_heads"] * (hidden // shape["num_attention_heads"])
    layer = 2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * mlp + 2 * hidden  # q, o; k, v; MLP; norms
    outside = 2 * vocab * hidden + hidden  # embeddings, head, final norm
    return (outside + shape["num_layers"] * layer) + (outside + layer)


def check_synthetic_size(settings: dict, dtype: str, device: str | None) -> None:
    """``ValueError`` when the parameters of the synthetic pair of ``settings``, in ``dtype`` (``auto``: float32),
    need more memory than ``device`` has (the host's available memory, or a CUDA device's total)."""
    shape = synthetic_shape(settings)
    count = synthetic_parameters(shape)
    dtype = "float32" if dtype in (None, "auto") else dtype
    needed = count * getattr(torch, dtype).itemsize
    memory, where = _memory(device)
    if memory is not None and needed > memory:
        given = ",".join(f"{KEY_OF[name]}={value}" for name, value in settings.items() if name not in FLOAT_KEYS)
        raise ValueError(f"--synthetic {given or '(the default shape)'}: the target and its draft would hold "
                         f"{count:,} parameters, {_size(needed)} in {dtype}, more than the {_size(memory)} {where}: "
                         "use a smaller vocab, hidden, intermediate or layers")


def _size(size: float) -> str:
    """Bytes in B, kB, MB, GB or TB, the first unit that keeps the number below 1000 (TB beyond)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size /= 1000
    return f"{size:,.1f} {unit}"


def _memory(device: str | None) -> tuple[int | None, str]:
    """The bytes parameters may take on ``device`` (default: cuda when available, else cpu), and what they are."""
    try:
        device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:  # a bad --device: reported by the CLI's device check
        device = torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        # The device's total memory: read without creating a CUDA context (as mem_get_info would).
        index = device.index if device.index is not None else 0
        if index >= torch.cuda.device_count():  # no such device: the run reports it
            return None, ""
        return torch.cuda.get_device_properties(index).total_memory, f"of {device.type}:{index}"
    return _host_available(), "of memory available on this machine"


def _host_available() -> int | None:
    """Available host memory (Linux's MemAvailable, else free pages), None where neither can be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def load(args: argparse.Namespace, device: torch.device) -> Pair:
    """The pair of the command line, on ``device`` (or spread by ``--device-map``); with ``--head``, the target and
    that draft head (on the target's input device, in its dtype) instead of a draft model."""
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.synthetic is not None:
        return pairs.synthetic(parse_synthetic(args.synthetic), seed=args.seed, dtype=dtype, device=device)
    # The draft goes to the target's input device (load_pair's default), where the strategy needs it.
    device_map = args.device_map if args.device_map is not None else str(device)
    return pairs.load(args.target, args.draft, dtype=dtype, device_map=device_map, load_in_8bit=args.load_in_8bit,
                      load_in_4bit=args.load_in_4bit, chat_template=args.chat_template,
                      head=getattr(args, "head", None))
