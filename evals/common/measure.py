"""Timing, model cost ratios and the speculative ceiling (manual: ``docs/BENCHMARKS.md``, "Measurement").

Timed regions exclude warm-up calls and synchronize CUDA around them; reported times are medians. ``c`` and
``v`` are ratios of cached forwards (REFERENCES.md §1); the ceiling is ``(1 - a^(g+1)) / ((1 - a)(g*c + v))``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import torch

from decoding import hf_compat
from decoding.few_rows import few_rows_layout, swappable_layers

__all__ = ["ceiling", "cost_ratios", "efficiency", "forward_timer", "interleaved_medians", "new_token_counts",
           "per_token_acceptance", "prefill_ceiling", "prefill_ratios", "rotated", "synchronize", "time_calls",
           "tokens_per_second"]


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


def forward_timer(model, batch_size: int, context_length: int, new_tokens: int, seed: int = 0,
                  beside=None) -> Callable[[], float]:
    """A callable timing one cached forward of ``model``: ``new_tokens`` tokens after ``context_length`` cached.

    The prefix is prefilled once into a ``DynamicCache``; each call runs the forward (attention mask and
    explicit positions passed, ``logits_to_keep=new_tokens``, as a decoding step does; on a CPU, the linear layers
    as the library's forwards compute them, :mod:`decoding.few_rows`, for a draft ``beside`` its target),
    synchronizes, crops the cache back to the prefix and returns the seconds the forward took.
    """
    layout = swappable_layers(model, beside)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    prefix = torch.randint(1, vocab, (batch_size, context_length), generator=generator).to(device)
    tokens = torch.randint(1, vocab, (batch_size, new_tokens), generator=generator).to(device)
    mask = torch.ones(batch_size, context_length + new_tokens, dtype=torch.int64, device=device)
    positions = torch.arange(context_length, context_length + new_tokens, device=device).expand(batch_size, -1)
    cache = hf_compat.new_cache(model)
    with torch.no_grad():
        hf_compat.forward_with_cache(model, cache, input_ids=prefix, attention_mask=mask[:, :context_length],
                                     use_cache=True, logits_to_keep=1)

    def timed() -> float:
        with torch.no_grad():
            synchronize(device)
            start = time.perf_counter()
            with few_rows_layout(layout):
                hf_compat.forward_with_cache(model, cache, input_ids=tokens, attention_mask=mask,
                                             position_ids=positions, use_cache=True, logits_to_keep=new_tokens)
            synchronize(device)
            elapsed = time.perf_counter() - start
        hf_compat.crop_cache(cache, new_tokens)
        return elapsed

    return timed


def rotated(items: Sequence, shift: int) -> list:
    """``items`` starting at position ``shift`` (mod its length) and wrapping around: rotating the order of timed
    methods from call to call puts every method at every place, so background load hits all of them alike."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def interleaved_medians(timers: dict, repeats: int, warmup: int) -> dict:
    """Median seconds of each timer (a callable returning seconds), called in turn ``warmup + repeats`` times
    so that background load hits every timer alike; the first ``warmup`` rounds are discarded."""
    samples = {name: [] for name in timers}
    for round_ in range(warmup + repeats):
        for name, timer in timers.items():
            elapsed = timer()
            if round_ >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(times) for name, times in samples.items()}


def cost_ratios(target, draft, batch_size: int, context_length: int, draft_lengths: Sequence[int] = (4,),
                repeats: int = 31, warmup: int = 3) -> dict:
    """Measured ``c`` and ``v(g)`` at one batch size, with a ``context_length``-token cache prefix.

    The forwards are interleaved (draft, target x1, target x(g+1) for each g, then again) so background load
    hits all of them alike; each time is the median of ``repeats`` after ``warmup`` rounds. Returns
    ``{"c": float, "v": {g: float}, "seconds": {"draft_1": s, "target_1": s, "target_<g+1>": s, ...}}``.
    """
    timers = {"draft_1": forward_timer(draft, batch_size, context_length, 1, beside=target),
              "target_1": forward_timer(target, batch_size, context_length, 1)}
    timers.update({f"target_{g + 1}": forward_timer(target, batch_size, context_length, g + 1) for g in draft_lengths})
    seconds = interleaved_medians(timers, repeats, warmup)
    v = {g: seconds[f"target_{g + 1}"] / seconds["target_1"] for g in draft_lengths}
    return {"c": seconds["draft_1"] / seconds["target_1"], "v": v, "seconds": seconds}


def prefill_timer(model, batch_size: int, prompt_length: int, generator: torch.Generator):
    """A function timing ``model``'s encoding of a random ``[batch_size, prompt_length]`` prompt into an empty
    cache (seconds, synchronized), as :func:`interleaved_medians` takes it."""
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(1, vocab, (batch_size, prompt_length), generator=generator).to(model.device)

    def timed() -> float:
        with torch.no_grad():
            synchronize(model.device)
            start = time.perf_counter()
            hf_compat.forward_with_cache(model, hf_compat.new_cache(model), input_ids=ids,
                                         attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
            synchronize(model.device)
            return time.perf_counter() - start

    return timed


def prefill_ratios(target, draft, batch_size: int, prompt_length: int, repeats: int = 7, warmup: int = 1) -> dict:
    """Cost of encoding a ``prompt_length``-token prompt, in units of one cached target forward of 1 token.

    Returns ``{"target": p_t, "draft": p_d, "seconds": {"target_prefill": s, "draft_prefill": s,
    "target_1": s}}`` (medians of ``repeats``, interleaved). ``target_1`` is timed with a cache of
    ``prompt_length`` tokens, the start of decoding.
    """
    generator = torch.Generator().manual_seed(0)
    timers = {"target_prefill": prefill_timer(target, batch_size, prompt_length, generator),
              "draft_prefill": prefill_timer(draft, batch_size, prompt_length, generator),
              "target_1": forward_timer(target, batch_size, prompt_length, 1)}
    seconds = interleaved_medians(timers, repeats, warmup)
    return {"target": seconds["target_prefill"] / seconds["target_1"],
            "draft": seconds["draft_prefill"] / seconds["target_1"], "seconds": seconds}


def prefill_ceiling(a: float, g: int, c: float, v: float, p_target: float, p_draft: float, new_tokens: float) -> float:
    """The ceiling of a whole ``generate`` call, prompt encoding included (all costs in target forwards):
    ``(p_t + n) / (p_t + p_d + n (g*c + v) / T(a))`` with ``T(a) = (1 - a^(g+1)) / (1 - a)`` tokens per step.

    :func:`ceiling` is its limit for long generations; for short ones the prefill, which speculation does not
    speed up (and the draft pays again), pulls the achievable speedup below it.
    """
    tokens_per_step = ceiling(a, g, 0.0, 1.0)
    return (p_target + new_tokens) / (p_target + p_draft + new_tokens * (g * c + v) / tokens_per_step)


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


def new_token_counts(output: torch.Tensor, prompt_width: int, eos_token_ids: Iterable[int] = ()) -> list[int]:
    """New tokens of each row of ``output  # [b, prompt_width + n]``: up to and including its first EOS.

    Without EOS ids every row counts ``n`` (a fixed-length run). Positions after a row's EOS are padding
    written while other rows were still generating, and do not count.
    """
    new = output[:, prompt_width:]
    eos = sorted(set(eos_token_ids))
    if not eos or new.shape[1] == 0:
        return [new.shape[1]] * output.shape[0]
    is_eos = torch.isin(new, torch.tensor(eos, device=new.device))
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1,
                        torch.full_like(is_eos[:, 0], new.shape[1], dtype=torch.int64))
    return first.tolist()
