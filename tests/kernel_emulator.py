"""A CPU emulator of the CUDA kernels, for tests: each family's exact source (``common.cuh`` + ``<family>.cu``,
as :func:`decoding.kernels.cupy_backend.source` gives it to NVRTC) is compiled with g++ against
``tests/kernel_emulator/emu.h`` and launched through ctypes on CPU tensors, by the same Python launch code the
CuPy path uses (pass ``launcher=Emulator(...)`` to the functions of :mod:`decoding.kernels.cupy_backend`).

What it proves: the kernels' logic (radix selects, tile sums, scans, the last-block tail, argument order and
scratch sizes) gives the reference's answers for any block order and any block size. What it cannot: timing,
memory-model effects between real concurrent blocks, NVRTC/CuPy interop, and CUDA's libdevice ``expf`` (the
host libm's is used; the two may differ in the last bit).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


from decoding.kernels import cupy_backend

HERE = Path(__file__).resolve().parent / "kernel_emulator"
CTYPES = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "f32": ctypes.c_float, "f64": ctypes.c_double}


def compiler() -> str | None:
    return shutil.which("g++")


@functools.lru_cache(maxsize=None)
def _library(family: str, threads: int) -> ctypes.CDLL:
    src = cupy_backend.source(family)
    names = sorted(set(re.findall(r"__global__ void __launch_bounds__\(\w+\) (\w+)_##SUFFIX", src)))
    suffixes = ("f32", "f16", "bf16")
    registry = "\n".join(f"EMU_REGISTER({n}_{s})" for n in names for s in suffixes)
    key = hashlib.sha256((src + registry + str(threads) + (HERE / "emu.h").read_text()).encode()).hexdigest()[:16]
    build = Path(tempfile.gettempdir()) / "pairdecode-kernel-emulator"
    build.mkdir(exist_ok=True)
    lib = build / f"{family}-{threads}-{key}.so"
    if not lib.exists():
        cpp = build / f"{family}-{threads}-{key}.cpp"
        cpp.write_text(f'#include "{HERE / "emu.h"}"\n{src}\n{registry}\n')
        define = f"-D{cupy_backend.FAMILIES[family]}={threads}"
        tmp = lib.with_suffix(".tmp.so")
        subprocess.run([compiler(), "-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared", "-pthread",
                        "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-fno-gnu-unique", "-w", define, str(cpp), "-o", str(tmp)], check=True, capture_output=True, text=True)
        tmp.replace(lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_launch.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p),
                               ctypes.c_uint]
    dll.emu_launch.restype = ctypes.c_int
    return dll


class Emulator:
    """A launcher for :mod:`decoding.kernels.cupy_backend` running the kernels on CPU tensors.

    ``threads``: threads per block of every family (a multiple of 32, at most 1024), compiled in with
    ``-D<FAMILY>_THREADS``; ``seed``: the order in which blocks run.
    """

    def __init__(self, threads: int = 64, seed: int = 0):
        self.block, self.seed = threads, seed
        self.launches: list[tuple[str, int, int]] = []

    def threads(self, family: str) -> int:
        return self.block

    def __call__(self, family: str, name: str, grid: int, block: int, args: list) -> None:
        keep, pointers = [], []
        for kind, value in args:
            if kind == "ptr":
                assert value.device.type == "cpu" and value.is_contiguous(), (name, value.device)
                c_value = ctypes.c_void_p(value.data_ptr())
            else:
                c_value = CTYPES[kind](value)
            keep.append(c_value)
            pointers.append(ctypes.cast(ctypes.pointer(c_value), ctypes.c_void_p))
        argv = (ctypes.c_void_p * len(pointers))(*pointers)
        status = _library(family, self.block).emu_launch(name.encode(), grid, block, argv, self.seed)
        assert status == 0, f"the emulator has no kernel {name}"
        self.launches.append((name, grid, block))
