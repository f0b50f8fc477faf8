"""CuPy launches of the CUDA kernels in ``kernels/*.cu`` (the fused entry points' fast path on CUDA).

Each family (``verify``, ``sampling``, ``contrastive``) is one ``cupy.RawModule`` compiled by NVRTC from
``common.cuh`` followed by the family's ``.cu``, lazily on first use and cached per device
(:func:`_module`). Kernels take raw pointers: torch tensors cross to CuPy with ``cupy.from_dlpack`` (no copy;
16-bit floats as int16 views, since CuPy has no bfloat16) inside ``cupy.cuda.ExternalStream`` wrapping
torch's current stream, so kernels run in order with torch's work and nothing synchronises the host. Outputs
and scratch are allocated by torch on that stream.

The functions here mirror :mod:`decoding.kernels.reference` (same arguments and results, validated by the
same checks), plus keyword-only ``threads`` (checked against the ``__launch_bounds__`` constant the family
is compiled with) and ``launcher`` (tests pass a CPU emulator; see tests/kernel_emulator.py).
"""

from __future__ import annotations

import functools
import importlib
import math
import re
from pathlib import Path

import numpy as np
import torch

from . import reference

HERE = Path(__file__).resolve().parent
FAMILIES = {"verify": "VERIFY_THREADS", "sampling": "SAMPLING_THREADS", "contrastive": "CONTRASTIVE_THREADS"}
SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
MAX_TILES = 1024  # sampling tiles per row: tile = ceil(V / 1024) rounded up to a warp (32)
CHUNK = 4096  # contrastive: ids per block of the split passes

_P, _I32, _I64, _F32, _F64 = "ptr", "i32", "i64", "f32", "f64"
# Parameter kinds of every kernel (without its dtype suffix), in order; tests check them against the .cu.
SIGNATURES = {
    "verify_sample": (_P, _P, _P, _P, _I32, _I32, _I64, _F32, _I64, _F64, _I64, _I32) + (_P,) * 9,
    "verify_greedy": (_P, _P, _I32, _I32, _I64, _P, _P, _P, _P),
    "sample_logits": (_P, _P, _I32, _I64, _F32, _I64, _F64, _I64, _I32, _P, _I32, _P, _P),
    "contrastive_partials": (_P, _P, _I32, _I64, _I64, _I32, _F32, _I32, _P),
    "contrastive_scores": (_P, _P, _I32, _I64, _I64, _I32, _P, _I32, _I32, _F32, _F32, _F32, _F32, _P),
    "contrastive_argmax": (_P, _P, _I32, _I64, _I64, _I32, _P, _I32, _I32, _F32, _F32, _F32, _F32, _P, _P, _P),
    "contrastive_sample": (_P, _P, _I32, _I64, _I32, _P, _I32, _I32, _F32, _F32, _F32, _F32, _F32, _I64, _F64,
                           _I64, _I32, _P, _P, _P),
}


@functools.lru_cache(maxsize=None)
def source(family: str) -> str:
    """The CUDA source of a family as compiled: ``common.cuh`` then ``<family>.cu``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; expected one of {sorted(FAMILIES)}")
    return (HERE / "common.cuh").read_text() + "\n" + (HERE / f"{family}.cu").read_text()


@functools.lru_cache(maxsize=None)
def compiled_threads(family: str) -> int:
    """The family's threads per block: the default of its ``#define <FAMILY>_THREADS``."""
    match = re.search(rf"#define\s+{FAMILIES[family]}\s+(\d+)", source(family))
    if match is None:
        raise RuntimeError(f"{family}.cu defines no {FAMILIES[family]}")
    return int(match.group(1))


@functools.lru_cache(maxsize=None)
def _module(family: str, device_index: int):
    cupy = importlib.import_module("cupy")
    with cupy.cuda.Device(device_index):
        return cupy.RawModule(code=source(family), options=("--std=c++17",))


class CuPyLauncher:
    """Launch a kernel with CuPy on torch's current stream of the arguments' device."""

    def threads(self, family: str) -> int:
        return compiled_threads(family)

    def __call__(self, family: str, name: str, grid: int, block: int, args: list) -> None:
        cupy = importlib.import_module("cupy")
        device = next(value.device for _, value in args if isinstance(value, torch.Tensor)).index
        with cupy.cuda.Device(device):
            function = _module(family, device).get_function(name)
            with cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device):
                function((grid,), (block,), tuple(_cupy_arg(cupy, kind, value) for kind, value in args))


def _cupy_arg(cupy, kind: str, value):
    if kind == _P:
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.view(torch.int16)
        return cupy.from_dlpack(value)
    return {_I32: np.int32, _I64: np.int64, _F32: np.float32, _F64: np.float64}[kind](value)


CUPY = CuPyLauncher()


def _launch(launcher, family: str, kernel: str, dtype: torch.dtype, grid: int, threads, values: list) -> None:
    compiled = launcher.threads(family)
    if threads is not None and threads != compiled:
        raise ValueError(f"threads={threads} does not match the {family} kernels' __launch_bounds__({compiled})")
    kinds = SIGNATURES[kernel]
    if len(kinds) != len(values):
        raise AssertionError(f"{kernel} takes {len(kinds)} arguments, {len(values)} given")
    launcher(family, f"{kernel}_{SUFFIX[dtype]}", grid, compiled, list(zip(kinds, values)))


def _tiles(vocab: int) -> tuple[int, int]:
    tile = max(32, -(-math.ceil(vocab / MAX_TILES) // 32) * 32)
    return tile, math.ceil(vocab / tile)


def _kernel_input(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in SUFFIX:
        raise TypeError(f"the kernels read float32, float16 or bfloat16 logits, got {t.dtype}")
    return t.contiguous()


def _nonempty(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` contiguous in ``dtype``, or a one-element stand-in when it is empty (never read then)."""
    return t.to(dtype).contiguous() if t.numel() else torch.zeros(1, dtype=dtype, device=t.device)


def verify(target_logits, draft_ids, draft_probs=None, uniforms=None, *, temperature=1.0, top_k=0, top_p=1.0,
           threads=None, launcher=None):
    """:func:`decoding.kernels.reference.verify` in one launch: ``# [B, g+1]`` ids padded -1, ``# [B]`` counts."""
    reference.check_verify_args(target_logits, draft_ids, draft_probs, uniforms, temperature, top_k, top_p)
    launcher = launcher or CUPY
    logits = _kernel_input(target_logits)
    batch, g = draft_ids.shape
    vocab, device = logits.shape[-1], logits.device
    out_ids = torch.empty(batch, g + 1, dtype=torch.int64, device=device)
    num_accepted = torch.empty(batch, dtype=torch.int64, device=device)
    if batch == 0:
        return out_ids, num_accepted
    ids = _nonempty(draft_ids, torch.int64)
    counters = torch.zeros(batch, dtype=torch.int32, device=device)
    positions = batch * (g + 1)
    if draft_probs is None:
        best = torch.empty(positions, dtype=torch.int64, device=device)
        _launch(launcher, "verify", "verify_greedy", logits.dtype, positions, threads,
                [logits, ids, batch, g, vocab, best, counters, out_ids, num_accepted])
        return out_ids, num_accepted
    tile, ntiles = _tiles(vocab)
    stats = [torch.empty(positions, dtype=dtype, device=device)
             for dtype in (torch.float32, torch.int32, torch.int64, torch.int64)]  # max, lo, Z, residual mass
    accept = torch.empty(max(batch * g, 1), dtype=torch.int32, device=device)
    sums = torch.empty(positions, ntiles, dtype=torch.int64, device=device)
    _launch(launcher, "verify", "verify_sample", logits.dtype, positions, threads,
            [logits, _nonempty(draft_probs, torch.float32), ids, uniforms.to(torch.float64).contiguous(), batch, g,
             vocab, 1.0 / temperature, top_k, float(top_p), tile, ntiles, *stats, accept, sums, counters, out_ids,
             num_accepted])
    return out_ids, num_accepted


def sample_logits(logits, uniforms, *, temperature=1.0, top_k=0, top_p=1.0, return_probs=True, threads=None,
                  launcher=None):
    """:func:`decoding.kernels.reference.sample_logits`, one block per row: ``ids  # [N]``, ``probs  # [N, V]``."""
    reference.check_rows(logits, uniforms)
    reference.check_processing(temperature, top_k, top_p)
    launcher = launcher or CUPY
    logits = _kernel_input(logits)
    rows, vocab = logits.shape
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    probs = torch.empty(rows if return_probs else 1, vocab if return_probs else 1, dtype=torch.float32,
                        device=logits.device)
    if rows:
        tile, ntiles = _tiles(vocab)
        sums = torch.empty(rows, ntiles, dtype=torch.int64, device=logits.device)
        _launch(launcher, "sampling", "sample_logits", logits.dtype, rows, threads,
                [logits, uniforms.to(torch.float64).contiguous(), rows, vocab, 1.0 / temperature, top_k, float(top_p),
                 tile, ntiles, sums, int(return_probs), probs, ids])
    return ids, (probs if return_probs else None)


def _contrastive_setup(expert, amateur, alpha, beta, form, amateur_temperature, need_lse, threads, launcher):
    """Checks, the reduction pass, and the arguments every second pass shares."""
    if form not in ("logit", "logprob"):
        raise ValueError(f"form must be 'logit' or 'logprob', got {form!r}")
    if expert.dtype != amateur.dtype:
        expert, amateur = expert.float(), amateur.float()
    expert, amateur = _kernel_input(expert), _kernel_input(amateur)
    rows, vocab = expert.shape
    chunks = math.ceil(vocab / CHUNK)
    partials = torch.empty(rows, chunks, 4, dtype=torch.float32, device=expert.device)
    inv_tau = 1.0 / amateur_temperature
    _launch(launcher, "contrastive", "contrastive_partials", expert.dtype, rows * chunks, threads,
            [expert, amateur, rows, vocab, CHUNK, chunks, inv_tau, int(need_lse), partials])
    plain = int(form == "logit" and beta == 0)
    common = [expert, amateur, rows, vocab, CHUNK, chunks, partials, int(form == "logprob"), plain, 1 + beta, beta,
              inv_tau, math.log(alpha)]
    return common, rows, chunks


def contrastive_scores(expert_logits, amateur_logits, *, alpha=0.1, beta=0.5, form="logit", amateur_temperature=1.0,
                       threads=None, launcher=None):
    """:func:`decoding.kernels.reference.contrastive_scores` in two launches: ``# [N, V]`` float32 scores."""
    reference.check_rows(expert_logits, None, amateur_logits)
    launcher = launcher or CUPY
    scores = torch.empty(expert_logits.shape, dtype=torch.float32, device=expert_logits.device)
    if expert_logits.shape[0] == 0:
        return scores
    common, rows, chunks = _contrastive_setup(expert_logits, amateur_logits, alpha, beta, form, amateur_temperature,
                                              form == "logprob", threads, launcher)
    _launch(launcher, "contrastive", "contrastive_scores", common[0].dtype, rows * chunks, threads, common + [scores])
    return scores


def contrastive_choose(expert_logits, amateur_logits, uniforms=None, *, alpha=0.1, beta=0.5, form="logit",
                       amateur_temperature=1.0, temperature=1.0, top_k=0, top_p=1.0, threads=None, launcher=None):
    """:func:`decoding.kernels.reference.contrastive_choose` in two launches: ``ids  # [N]`` int64."""
    reference.check_rows(expert_logits, uniforms, amateur_logits)
    reference.check_processing(temperature, top_k, top_p)
    launcher = launcher or CUPY
    ids = torch.empty(expert_logits.shape[0], dtype=torch.int64, device=expert_logits.device)
    if ids.numel() == 0:
        return ids
    common, rows, chunks = _contrastive_setup(expert_logits, amateur_logits, alpha, beta, form, amateur_temperature,
                                              False, threads, launcher)
    dtype, device = common[0].dtype, common[0].device
    if uniforms is None:
        best = torch.empty(rows, chunks, dtype=torch.int64, device=device)
        counters = torch.zeros(rows, dtype=torch.int32, device=device)
        _launch(launcher, "contrastive", "contrastive_argmax", dtype, rows * chunks, threads,
                common + [best, counters, ids])
        return ids
    tile, ntiles = _tiles(common[3])
    sums = torch.empty(rows, ntiles, dtype=torch.int64, device=device)
    expert, amateur, _, vocab, _, _, partials, *constants = common
    _launch(launcher, "contrastive", "contrastive_sample", dtype, rows, threads,
            [expert, amateur, rows, vocab, chunks, partials, *constants, 1.0 / temperature, top_k, float(top_p), tile,
             ntiles, sums, uniforms.to(torch.float64).contiguous(), ids])
    return ids
