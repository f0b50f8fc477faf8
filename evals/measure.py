"""Small measurement helpers for speedup benchmarks: timing, model cost ratios and the speculative ceiling.

Conventions: timed regions exclude warm-up calls and are wrapped in ``torch.cuda.synchronize()`` when a model
runs on CUDA; every reported time is a median over repetitions. The cost ratios follow REFERENCES.md §1:

- ``c = t(draft forward of 1 new token) / t(target forward of 1 new token)``,
- ``v = t(target forward of g+1 new tokens) / t(target forward of 1 new token)``,

both with a real ``DynamicCache`` prefix of a given length in front, at a given batch size. With the acceptance
rate ``a`` and draft length ``g``, the hardware-aware ceiling on speedup is
``(1 - a^(g+1)) / ((1 - a)(g*c + v))``; ``v = 1`` gives Leviathan et al.'s formula.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

__all__ = [
    "ceiling",
    "cost_ratios",
    "efficiency",
    "forward_timer",
    "per_token_acceptance",
    "synchronize",
    "time_calls",
    "tokens_per_second",
]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU), so a wall-clock read covers it."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" or device is None and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int = 7, warmup: int = 1, device=None) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls, device synchronized."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def tokens_per_second(generate: Callable[[], torch.Tensor], prompt_length: int, repeats: int = 3, warmup: int = 1, device=None) -> float:
    """Median new tokens per second of ``generate()``, which returns ``[batch, prompt_length + new]`` ids.

    Every row counts ``new`` tokens (rows padded after an early EOS included, as in a fixed-length benchmark).
    """
    out = {}
    times = time_calls(lambda: out.update(ids=generate()), repeats, warmup, device)
    ids = out["ids"]
    return ids.shape[0] * (ids.shape[1] - prompt_length) / statistics.median(times)


def forward_timer(model, batch_size: int, context_length: int, new_tokens: int, seed: int = 0) -> Callable[[], float]:
    """A callable timing one cached forward of ``model``: ``new_tokens`` tokens after ``context_length`` cached.

    The prefix is prefilled once into a ``DynamicCache``; each call runs the forward (attention mask and
    explicit positions passed, ``logits_to_keep=new_tokens``, as a decoding step does), synchronizes, crops the
    cache back to the prefix and returns the seconds the forward took.
    """
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    prefix = torch.randint(1, vocab, (batch_size, context_length), generator=generator).to(device)
    tokens = torch.randint(1, vocab, (batch_size, new_tokens), generator=generator).to(device)
    mask = torch.ones(batch_size, context_length + new_tokens, dtype=torch.int64, device=device)
    positions = torch.arange(context_length, context_length + new_tokens, device=device).expand(batch_size, -1)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=prefix, attention_mask=mask[:, :context_length], past_key_values=cache, use_cache=True, logits_to_keep=1)

    def timed() -> float:
        with torch.no_grad():
            synchronize(device)
            start = time.perf_counter()
            model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                  use_cache=True, logits_to_keep=new_tokens)
            synchronize(device)
            elapsed = time.perf_counter() - start
        cache.crop(-new_tokens)
        return elapsed

    return timed


def cost_ratios(target, draft, batch_size: int, context_length: int, draft_lengths: Sequence[int] = (4,),
                repeats: int = 31, warmup: int = 3) -> dict:
    """Measured ``c`` and ``v(g)`` at one batch size, with a ``context_length``-token cache prefix.

    The forwards are interleaved (draft, target x1, target x(g+1) for each g, then again) so background load
    hits all of them alike; each time is the median of ``repeats`` after ``warmup`` rounds. Returns
    ``{"c": float, "v": {g: float}, "seconds": {"draft_1": s, "target_1": s, "target_<g+1>": s, ...}}``.
    """
    timers = {"draft_1": forward_timer(draft, batch_size, context_length, 1),
              "target_1": forward_timer(target, batch_size, context_length, 1)}
    timers.update({f"target_{g + 1}": forward_timer(target, batch_size, context_length, g + 1) for g in draft_lengths})
    samples = {name: [] for name in timers}
    for round_ in range(warmup + repeats):
        for name, timer in timers.items():
            elapsed = timer()
            if round_ >= warmup:
                samples[name].append(elapsed)
    seconds = {name: statistics.median(times) for name, times in samples.items()}
    v = {g: seconds[f"target_{g + 1}"] / seconds["target_1"] for g in draft_lengths}
    return {"c": seconds["draft_1"] / seconds["target_1"], "v": v, "seconds": seconds}


def ceiling(a: float, g: int, c: float, v: float = 1.0) -> float:
    """Expected speculative speedup ``(1 - a^(g+1)) / ((1 - a)(g*c + v))`` (REFERENCES.md §1).

    ``a``: acceptance rate, ``g``: draft length, ``c``: draft/target cost per forward, ``v``: cost of verifying
    ``g+1`` tokens relative to one target forward (1 on an ideal memory-bound accelerator, Leviathan et al.).
    At ``a == 1`` the expected tokens per step are ``g + 1``, the limit of the formula.
    """
    tokens_per_step = g + 1 if a >= 1.0 else (1.0 - a ** (g + 1)) / (1.0 - a)
    return tokens_per_step / (g * c + v)


def per_token_acceptance(mean_accepted_length: float, g: int) -> float:
    """The per-token acceptance probability ``alpha`` that the ceiling formula's ``a`` stands for.

    Solves ``(1 - alpha^(g+1)) / (1 - alpha) = tau`` for ``alpha`` in [0, 1], where ``tau`` is the measured mean
    accepted length (tokens emitted per row and step, bonus included). Note that vLLM's acceptance rate
    (accepted / drafted) is ``E[accepted] / g``, not ``alpha``: at ``g = 4`` an ``alpha`` of 0.75 gives an
    acceptance rate of about 0.51, and plugging that into the formula would understate the ceiling. With this
    ``alpha``, ``ceiling(alpha, g, c, v) == tau / (g*c + v)``: the measured tokens per step over its cost.
    """
    if mean_accepted_length >= g + 1:
        return 1.0
    if mean_accepted_length <= 1:
        return 0.0
    tau = mean_accepted_length
    low, high = 0.0, 1.0
    for _ in range(60):  # bisection: tokens per step grows monotonically with alpha
        mid = (low + high) / 2
        low, high = (mid, high) if ceiling(mid, g, 0.0, 1.0) < tau else (low, mid)
    return (low + high) / 2


def efficiency(speedup: float, ceiling_value: float) -> float:
    """Measured speedup as a fraction of the ceiling: how much of the algorithm's promise the system delivers."""
    return speedup / ceiling_value if ceiling_value > 0 else float("nan")
