"""Compile an NVRTC program (CUDA C) with g++ against cuda_shim.h and launch its kernels on the CPU.

    mod = compile_source(source)                  # cached .so per (source, shim, flags, compiler, CPU)
    mod.run("k_abc", grid=(4, 1, 1), block=(256, 1, 1), x=arr, y=out, n=1024)   # by parameter name
    mod.launch("k_abc", grid, block, kernel_params)   # raw: the void** array cuLaunchKernel gets

Every ``extern "C" __global__`` function of the source gets a C launcher
``int launch_<entry>(int gx, int gy, int gz, int bx, int by, int bz, void** args)`` that unpacks
the argument pointers exactly as the CUDA driver does (each ``args[i]`` points at the i-th
parameter's bytes) and runs the grid (see cuda_shim.h for the execution model).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
SHIM = HERE / "cuda_shim.h"
INCLUDE = HERE / "include"
#: -march=native: the .so is keyed by this CPU's flags too; -fno-strict-aliasing: CUDA code puns
#: types (float4 loads of float arrays); FMA contraction stays on, like NVRTC's --fmad=true
DEFAULT_FLAGS: tuple[str, ...] = ("-std=c++17", "-O2", "-march=native", "-fno-strict-aliasing", "-fPIC", "-shared",
                                  "-fvisibility=hidden", "-w")

_ENTRY_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s*)?(\w+)\s*'
                       r'\(([^)]*)\)', re.S)
_LOCK = threading.Lock()
_MODULES: dict[str, "EmuModule"] = {}


class EmuError(RuntimeError):
    """A kernel launch failed in the emulator (deadlock, bad launch, trap) or g++ failed."""


@dataclass(frozen=True)
class Param:
    type: str      # C type as declared, without __restrict__ ("const float*", "int", "I6")
    name: str

    @property
    def kind(self) -> str:
        """p(ointer), i(nt32), I (uint32), q(int64), Q (uint64), f(loat32), d(ouble) or the type name."""
        t = self.type.replace("const ", "").strip()
        if t.endswith("*"):
            return "p"
        return {"int": "i", "unsigned": "I", "unsigned int": "I", "long long": "q", "unsigned long long": "Q",
                "float": "f", "double": "d", "bool": "b"}.get(t, t)


def parse_entries(source: str) -> dict[str, tuple[Param, ...]]:
    """``{entry: parameters}`` of every ``extern "C" __global__ void`` function in ``source``."""
    return {e: params for e, (params, _) in _parse(source).items()}


def launch_bounds(source: str) -> dict[str, int]:
    """``{entry: maximum threads per block}`` for the entries declared with ``__launch_bounds__``."""
    return {e: b for e, (_, b) in _parse(source).items() if b}


def _parse(source: str) -> dict[str, tuple[tuple[Param, ...], int]]:
    out: dict[str, tuple[tuple[Param, ...], int]] = {}
    for m in _ENTRY_RE.finditer(source):
        params = []
        for decl in (d.strip() for d in m.group(3).split(",") if d.strip() and d.strip() != "void"):
            decl = re.sub(r"\b__restrict(__)?\b", " ", decl)
            pm = re.match(r"^(.*?[\s*&])(\w+)\s*$", decl)
            if not pm:
                raise EmuError(f"cannot parse parameter {decl!r} of kernel {m.group(2)}")
            params.append(Param(" ".join(pm.group(1).split()).replace(" *", "*"), pm.group(2)))
        out[m.group(2)] = (tuple(params), int(m.group(1) or 0))
    return out


def _launcher(entry: str, params: Sequence[Param], bound: int = 0) -> str:
    fields = "".join(f"  {p.type} a{i};\n" for i, p in enumerate(params))
    unpack = ", ".join(f"*reinterpret_cast<{p.type}*>(args[{i}])" for i, p in enumerate(params))
    call = ", ".join(f"a->a{i}" for i in range(len(params)))
    return (f"namespace {{\nstruct rtx_args_{entry} {{\n{fields}}};\n"
            f"void rtx_thunk_{entry}(void* p) {{\n  rtx_args_{entry}* a = (rtx_args_{entry}*)p;\n  (void)a;\n"
            f"  {entry}({call});\n}}\n}}\n"
            f'extern "C" __attribute__((visibility("default"))) int launch_{entry}(int gx, int gy, int gz, int bx, '
            f"int by, int bz, void** args) {{\n  (void)args;\n"
            + (f"  if ((long long)bx * by * bz > {bound}) return rtx_emu::launch_error(\"{bound} threads at most "
               f"(__launch_bounds__)\", dim3(gx, gy, gz), dim3(bx, by, bz));\n" if bound else "")
            + f"  rtx_args_{entry} a{{{unpack}}};\n"
            f"  return rtx_emu::run_grid(dim3(gx, gy, gz), dim3(bx, by, bz), rtx_thunk_{entry}, &a);\n}}\n")


def translation_unit(source: str) -> str:
    """The C++ that g++ compiles: the shim, the program source as is, one launcher per entry."""
    entries = _parse(source)
    return ('#include "cuda_shim.h"\n#line 1 "program.cu"\n' + source + "\n// ---- launchers (cudaemu/emu.py)\n"
            + "".join(_launcher(e, p, b) for e, (p, b) in entries.items()))


def compiler() -> str | None:
    """The C++ compiler used (``$CXX`` or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def cache_dir() -> Path:
    d = os.environ.get("RTX_CUDAEMU_CACHE")
    return Path(d) if d else Path(tempfile.gettempdir()) / f"rtxpack-cudaemu-{os.getuid()}"


@functools.lru_cache(maxsize=None)
def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.machine()


@functools.lru_cache(maxsize=None)
def _compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[0]


def compile_source(source: str, *, flags: Sequence[str] = DEFAULT_FLAGS, timeout: float = 600) -> "EmuModule":
    """Compile a CUDA C program (e.g. a plan's KERN source blob) for the CPU; cached on disk and in-process."""
    cxx = compiler()
    if not cxx:
        raise EmuError("no C++ compiler (g++) to build the CUDA emulator with")
    h = hashlib.sha256()
    shim_files = [SHIM, *sorted(INCLUDE.glob("*.h"))]
    for part in (*(f.read_bytes() for f in shim_files), source.encode(), "\0".join(flags).encode(),
                 _compiler_version(cxx).encode(), _cpu_signature().encode()):
        h.update(hashlib.sha256(part).digest())
    key = h.hexdigest()[:32]
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is not None:
            return mod
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        so = d / f"{key}.so"
        seconds = 0.0
        if not so.exists():
            cpp = d / f"{key}.cpp"
            cpp.write_text(translation_unit(source))
            tmp = d / f"{key}.{os.getpid()}.tmp.so"
            t0 = time.perf_counter()
            r = subprocess.run([cxx, *flags, f"-I{HERE}", f"-I{INCLUDE}", str(cpp), "-o", str(tmp)],
                               capture_output=True, text=True, timeout=timeout, check=False)
            seconds = time.perf_counter() - t0
            if r.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise EmuError(f"g++ failed to compile the program for the emulator ({cpp}):\n{r.stderr[-6000:]}")
            os.replace(tmp, so)
        mod = EmuModule(so, parse_entries(source), compile_seconds=seconds)
        _MODULES[key] = mod
        return mod


def _pack(kind: str, v: Any) -> bytes:
    fmt = {"i": "<i", "I": "<I", "q": "<q", "Q": "<Q", "f": "<f", "d": "<d", "b": "<?", "I6": "<6i"}.get(kind)
    if fmt is None:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return bytes(v)
        raise EmuError(f"pass parameter type {kind!r} as raw bytes")
    return struct.pack(fmt, *v) if kind == "I6" else struct.pack(fmt, v)


class EmuModule:
    """A compiled program: ``entries`` maps each kernel to its parameters."""

    def __init__(self, path: Path, entries: Mapping[str, tuple[Param, ...]], compile_seconds: float = 0.0) -> None:
        self.path = Path(path)
        self.entries = dict(entries)
        #: g++ wall time when this process compiled it, 0.0 for a cache hit
        self.compile_seconds = compile_seconds
        self._lib = ctypes.CDLL(str(self.path))
        self._lib.rtx_emu_last_error.restype = ctypes.c_char_p
        self._lib.rtx_emu_set_schedule.argtypes = [ctypes.c_int, ctypes.c_ulonglong]
        self._fns: dict[str, Any] = {}

    def function(self, entry: str) -> Any:
        """The ctypes launcher of ``entry`` (KeyError naming the entry when the program lacks it)."""
        fn = self._fns.get(entry)
        if fn is None:
            if entry not in self.entries:
                raise KeyError(f"the program has no kernel {entry!r}")
            fn = getattr(self._lib, f"launch_{entry}")
            fn.argtypes = [ctypes.c_int] * 6 + [ctypes.c_void_p]
            fn.restype = ctypes.c_int
            self._fns[entry] = fn
        return fn

    SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}

    def set_schedule(self, schedule: str = "forward", seed: int = 0) -> None:
        """Order in which the threads of a block run between barriers: "forward" (thread index),
        "reverse" or "random" (reseeded here). Correct kernels give the same result for all three;
        a missing barrier or a race on shared memory usually does not."""
        self._lib.rtx_emu_set_schedule(self.SCHEDULES[schedule], ctypes.c_ulonglong(seed))

    def launch(self, entry: str, grid: Sequence[int], block: Sequence[int], kernel_params: int) -> None:
        """Run ``entry`` like ``cuLaunchKernel(f, *grid, *block, 0, stream, kernel_params, 0)``."""
        g = tuple(grid) + (1,) * (3 - len(grid))
        b = tuple(block) + (1,) * (3 - len(block))
        if self.function(entry)(*g, *b, kernel_params) != 0:
            raise EmuError(f"kernel {entry} grid {g} block {b}: {self._lib.rtx_emu_last_error().decode()}")

    def run(self, entry: str, grid: Sequence[int], block: Sequence[int], *args: Any, **kwargs: Any) -> None:
        """Launch with Python values: numpy arrays (or int addresses, or None) for pointers, numbers
        for scalars, 6 ints for ``I6``, bytes for other struct types; positional or by name."""
        params = self.entries[entry]
        vals = list(args) + [kwargs.pop(p.name) for p in params[len(args):]]
        if kwargs or len(vals) != len(params):
            raise TypeError(f"{entry} takes {[p.name for p in params]}")
        keep = []
        for p, v in zip(params, vals):
            if p.kind == "p":
                addr = 0 if v is None else (v if isinstance(v, int) else v.ctypes.data)
                b = struct.pack("<Q", addr)
            else:
                b = _pack(p.kind, v)
            keep.append(np.frombuffer(b + b"\0" * (-len(b) % 8), dtype=np.uint8).copy())
        ptrs = np.array([k.ctypes.data for k in keep] or [0], dtype=np.uint64)
        self.launch(entry, grid, block, ptrs.ctypes.data)


def mma_device_source() -> str:
    """The backend's tensor-core helpers (kernels_tc.MMA_SOURCE: inline PTX on the GPU, warp exchanges
    in the emulator), on their own."""
    from rtxpack.backends.nvrtc.kernels_tc import MMA_SOURCE

    return MMA_SOURCE
