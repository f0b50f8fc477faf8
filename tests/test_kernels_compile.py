"""The CUDA sources compile for A100 (sm_80) and H100 (sm_90) with nvcc, and with NVRTC (what CuPy uses)
where its library is installed; every kernel is bounded by its family's ``__launch_bounds__`` constant, the
compiled PTX carries exactly the block size the loader launches with (``.maxntid``), and the launch code's
argument kinds match every kernel's parameter list. Skipped, with the reason, where nvcc or NVRTC is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from decoding.kernels import cupy_backend

FAMILIES = list(cupy_backend.FAMILIES)
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: the .cu sources cannot be compiled here")
KINDS = {"int": "i32", "i64": "i64", "float": "f32", "double": "f64"}


def _kernels(family: str) -> list[tuple[str, str, list[str]]]:
    """``(launch bounds constant, kernel name, parameter kinds)`` of each ``extern "C"`` kernel template."""
    src = cupy_backend.source(family).replace("\\\n", " ")
    found = re.findall(r'extern "C" __global__ void __launch_bounds__\((\w+)\) (\w+)_##SUFFIX\(([^)]*)\)', src)
    out = []
    for bound, name, params in found:
        kinds = []
        for param in params.split(","):
            words = param.replace("*", " * ").split()
            kinds.append("ptr" if "*" in words else KINDS[words[-2]])
        out.append((bound, name, kinds))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_kernel_is_bounded_by_its_family_constant_and_has_the_launch_signature(family):
    kernels = _kernels(family)
    assert kernels, f"no kernels found in {family}.cu"
    assert cupy_backend.compiled_threads(family) in (32, 64, 128, 256, 512, 1024)
    for bound, name, kinds in kernels:
        assert bound == cupy_backend.FAMILIES[family], f"{name}: __launch_bounds__({bound})"
        assert tuple(kinds) == cupy_backend.SIGNATURES[name], f"{name}: the .cu takes {kinds}"


def _compile(tmp_path: Path, family: str, args: list[str], suffix: str) -> subprocess.CompletedProcess:
    src = tmp_path / f"{family}.cu"
    src.write_text(cupy_backend.source(family))
    out = tmp_path / f"{family}.{suffix}"
    return subprocess.run([NVCC, *args, "-o", str(out), str(src)], capture_output=True, text=True, timeout=300)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_with_nvcc(tmp_path, family, arch):
    result = _compile(tmp_path, family, ["--cubin", f"-arch={arch}", "-Xptxas", "-v", "--std=c++17"], "cubin")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "warning" not in result.stderr.lower().replace("ptxas info", ""), result.stderr[-4000:]
    assert (tmp_path / f"{family}.cubin").stat().st_size > 0


def _entries(ptx: str) -> dict[str, int]:
    """Kernel name -> its ``.maxntid`` x from PTX text."""
    found = re.findall(r"\.entry (\w+)\((?:[^)]*)\)\s*\.maxntid (\d+), 1, 1", ptx)
    return {name: int(n) for name, n in found}


def _expected_entries(family: str) -> set[str]:
    return {f"{name}_{s}" for _, name, _ in _kernels(family) for s in cupy_backend.SUFFIX.values()}


@needs_nvcc
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_block_size_is_the_loaders(tmp_path, family):
    result = _compile(tmp_path, family, ["--ptx", "-arch=compute_80", "--std=c++17"], "ptx")
    assert result.returncode == 0, result.stderr[-4000:]
    entries = _entries((tmp_path / f"{family}.ptx").read_text())
    assert set(entries) == _expected_entries(family)
    assert set(entries.values()) == {cupy_backend.compiled_threads(family)}


def _nvrtc_library():
    candidates = [ctypes.util.find_library("nvrtc")]
    try:  # find_spec imports the parent package, and raises when no ``nvidia`` package is installed at all
        spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates += sorted(str(p) for p in Path(location, "lib").glob("libnvrtc.so*"))
    candidates += sorted(str(p) for p in Path("/usr/local/cuda/lib64").glob("libnvrtc.so*"))
    for candidate in filter(None, candidates):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


NVRTC = _nvrtc_library()


@pytest.mark.skipif(NVRTC is None, reason="no NVRTC library (CuPy's compiler; pip install nvidia-cuda-nvrtc-cu12)")
@pytest.mark.parametrize("family", FAMILIES)
def test_compiles_with_nvrtc_as_cupy_does(family):
    """The exact source CuPy's RawModule gets, with its options, compiles header-free under NVRTC."""
    program = ctypes.c_void_p()
    source = cupy_backend.source(family).encode()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(program), source, f"{family}.cu".encode(), 0, None, None) == 0
    options = [b"--std=c++17", b"-arch=compute_90"]
    status = NVRTC.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetProgramLog(program, log)
    assert status == 0, log.value.decode(errors="replace")[-4000:]
    NVRTC.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    NVRTC.nvrtcGetPTX(program, ptx)
    NVRTC.nvrtcDestroyProgram(ctypes.byref(program))
    entries = _entries(ptx.value.decode())
    assert set(entries) == _expected_entries(family)
    assert set(entries.values()) == {cupy_backend.compiled_threads(family)}
