"""Which implementation runs a kernel entry point: the CuPy kernels or the pure-torch reference.

The setting is one of ``"auto"`` (default), ``"torch"`` or ``"cupy"``; a :func:`use_backend` context (built
on :mod:`contextvars`, so threads and asyncio tasks keep their own) wins over the environment variable
``DECODING_KERNELS``, which wins over the default.

- ``"auto"``: CuPy kernels for CUDA tensors of a dtype the kernels cover (float32, float16, bfloat16) when
  CuPy is installed (the ``cuda`` extra) and sees a device; the torch reference otherwise (CPU tensors,
  float64, no CuPy), silently.
- ``"torch"``: always the reference. Strategies then also take their fused route (see :func:`fused_route`),
  so benchmarks and tests compare kernels and reference on the same path.
- ``"cupy"``: always the kernels; a clear error where they cannot run.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os

import torch

BACKENDS = ("auto", "torch", "cupy")
ENV_VAR = "DECODING_KERNELS"
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("decoding_kernels_backend", default=None)


def _checked(name) -> str:
    value = str(name).strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return value


def setting() -> str:
    """The backend setting in force: the innermost :func:`use_backend`, else ``$DECODING_KERNELS``, else auto."""
    forced = _forced.get()
    if forced is not None:
        return forced
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return "auto"
    try:
        return _checked(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(BACKENDS)}, got {raw!r}") from None


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend inside a ``with`` block: ``with decoding.kernels.ops.use_backend("torch"): ...``."""
    token = _forced.set(_checked(name))
    try:
        yield
    finally:
        _forced.reset(token)


@functools.lru_cache(maxsize=None)
def cupy_status() -> tuple[bool, str]:
    """``(True, "")`` when CuPy imports and sees a CUDA device, else ``(False, reason)``. Cached; tests clear
    it with ``cupy_status.cache_clear()``."""
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        return False, f"CuPy is not installed ({type(exc).__name__}: {exc}); install the extra: pip install 'pairdecode[cuda]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return False, f"CuPy cannot reach a CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "CuPy sees no CUDA device"
    return True, ""


def resolve(setting_name: str, device_type: str, dtype: torch.dtype, cupy_ok: bool, reason: str = "") -> str:
    """The backend (``"torch"`` or ``"cupy"``) for tensors on ``device_type`` of ``dtype``; raises for a
    ``"cupy"`` setting that cannot be honoured. Pure: every rule of the module docstring is here."""
    setting_name = _checked(setting_name)
    if setting_name == "torch":
        return "torch"
    fits = device_type == "cuda" and dtype in KERNEL_DTYPES
    if setting_name == "auto":
        return "cupy" if fits and cupy_ok else "torch"
    if not cupy_ok:
        raise RuntimeError(f"kernel backend 'cupy' was requested, but {reason or 'CuPy is unavailable'}")
    if device_type != "cuda":
        raise RuntimeError(f"kernel backend 'cupy' needs CUDA tensors, got tensors on {device_type!r}")
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"kernel backend 'cupy' covers float32, float16 and bfloat16 logits, got {dtype}")
    return "cupy"


def backend_for(tensor: torch.Tensor) -> str:
    """The backend that runs an entry point whose main input is ``tensor``."""
    name = setting()
    if name == "torch" or (name == "auto" and tensor.device.type != "cuda"):
        return "torch"  # without importing CuPy
    ok, reason = cupy_status()
    return resolve(name, tensor.device.type, tensor.dtype, ok, reason)


def fused_route(device: torch.device) -> bool:
    """Whether strategies call the fused entry points (:func:`decoding.kernels.ops.verify`, ``sample_logits``,
    ``contrastive_choose``) for tensors on ``device`` when their processing allows it: with the kernels, or
    with the reference when ``"torch"`` is forced. Under ``"auto"`` without kernels they keep the general path
    (transformers' own processors), which is what a CPU run has always done."""
    name = setting()
    if name != "auto":
        return True
    return torch.device(device).type == "cuda" and cupy_status()[0]
