"""NVRTC: compile a plan's kernels to cubin (``sm_XY``) or PTX (``compute_XY``), no GPU needed.

All specializations of a plan go into ONE program per target (one front-end pass instead of one
per kernel); targets are compiled on a small thread pool. ``NVRTC_CALLS`` counts compilations so
tests can prove that a warm runtime cache needs none.
"""
from __future__ import annotations

import threading
from typing import Sequence

from ...core.errors import BackendError, BackendNotInstalled, ConfigError
from .kernels import COMPILE_OPTIONS

#: number of NVRTC programs compiled in this process (tests assert on it)
NVRTC_CALLS = 0
_LOCK = threading.Lock()


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendNotInstalled("the nvrtc backend needs cuda-python (cuda.bindings.nvrtc)",
                                  fix="pip install rtxpack[gpu]") from e
    return nvrtc


def nvrtc_version() -> tuple[int, int] | None:
    """(major, minor) of the NVRTC library that would compile here, or None when missing."""
    try:
        nvrtc = _nvrtc()
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception:  # noqa: BLE001 - a missing/broken library means "not installed"
        return None
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        return None
    return int(major), int(minor)


def nvrtc_version_probe() -> tuple[int, int] | None:
    """The NVRTC version without loading NVRTC (that costs ~75 ms): read from the pip wheel's
    ``nvidia_cuda_nvrtc*-X.Y.Z.dist-info`` folder name on ``sys.path`` when there is one.

    Used to match runtime-cache entries, so that a warm cache needs no NVRTC at all; falls back
    to asking the library when NVRTC does not come from a wheel (e.g. a CUDA toolkit).
    """
    import glob
    import os
    import re
    import sys

    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        for d in sorted(glob.glob(os.path.join(entry, "nvidia_cuda_nvrtc*-*.dist-info"))):
            m = re.search(r"-(\d+)\.(\d+)[^-]*\.dist-info$", d)
            if m:
                return int(m.group(1)), int(m.group(2))
    return nvrtc_version()


def supported_archs() -> list[int]:
    """SM numbers (e.g. 75, 90, 120) this NVRTC can target."""
    nvrtc = _nvrtc()
    err, n = nvrtc.nvrtcGetNumSupportedArchs()
    arr = [0] * n
    err, arr = nvrtc.nvrtcGetSupportedArchs()
    return [int(a) for a in arr]


def cc_to_sm(cc: str) -> int:
    """"8.6" -> 86, "12.0" -> 120 (a float 8.6, as a hurried caller writes it, reads the same)."""
    if isinstance(cc, float):
        cc = f"{cc:.1f}"
    try:
        major, minor = cc.split(".")
        return int(major) * 10 + int(minor)
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"bad compute capability {cc!r}", fix='write it as "8.6", "9.0" or "12.0"', value=cc) from e


def sm_to_cc(sm: int) -> str:
    return f"{sm // 10}.{sm % 10}"


def compile_program(source: str, sm: int, *, ptx: bool = False,
                    options: Sequence[str] = COMPILE_OPTIONS) -> bytes:
    """Compile one program (every kernel of a plan) into a cubin for ``sm_XY`` (or PTX for ``compute_XY``)."""
    global NVRTC_CALLS
    nvrtc = _nvrtc()
    ok = nvrtc.nvrtcResult.NVRTC_SUCCESS
    src = source.encode()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"rtxpack_nvrtc.cu", 0, [], [])
    if err != ok:
        raise BackendError(f"nvrtcCreateProgram failed: {err}", fix="reinstall nvidia-cuda-nvrtc")
    try:
        # sm_90 cubins are built for sm_90a (the same GPUs: a cubin runs on its own major arch only) so that
        # Hopper's wgmma kernels (gemm_wg) exist in them; PTX stays portable (there they trap, never planned)
        arch = f"--gpu-architecture={'compute' if ptx else 'sm'}_{sm}{'a' if sm == 90 and not ptx else ''}"
        opts = [o.encode() for o in (*options, arch)]
        with _LOCK:
            NVRTC_CALLS += 1
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != ok:
            _, n = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * n
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise BackendError(f"NVRTC failed to compile kernels for sm_{sm}: {log.decode(errors='replace')[:4000]}",
                               fix="report this model to rtxpack (a kernel generator bug) or use another backend",
                               compute_capability=sm_to_cc(sm))
        if ptx:
            err, n = nvrtc.nvrtcGetPTXSize(prog)
            buf = b" " * n
            (err,) = nvrtc.nvrtcGetPTX(prog, buf)
        else:
            err, n = nvrtc.nvrtcGetCUBINSize(prog)
            buf = b" " * n
            (err,) = nvrtc.nvrtcGetCUBIN(prog, buf)
        if err != ok:
            raise BackendError(f"NVRTC could not return the {'PTX' if ptx else 'cubin'} for sm_{sm}: {err}",
                               fix="check the NVRTC installation (pip install -U nvidia-cuda-nvrtc)")
        return bytes(buf)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_targets(source: str, sms: Sequence[int], ptx_sm: int | None,
                    workers: int = 2) -> tuple[dict[int, bytes], bytes | None]:
    """Cubins for every SM in ``sms`` and, when ``ptx_sm`` is given, PTX for ``compute_<ptx_sm>``."""
    supported = set(supported_archs())
    bad = [s for s in list(sms) + ([ptx_sm] if ptx_sm else []) if s not in supported]
    if bad:
        v = nvrtc_version()
        raise BackendError(f"NVRTC {v} cannot target {', '.join('sm_%d' % s for s in bad)}",
                           fix=f"use compute capabilities this NVRTC supports ({', '.join(sm_to_cc(s) for s in sorted(supported))})"
                               " or install another nvidia-cuda-nvrtc", value=[sm_to_cc(s) for s in bad])
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(s, False) for s in sms] + ([(ptx_sm, True)] if ptx_sm else [])
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
        results = list(pool.map(lambda j: compile_program(source, j[0], ptx=j[1]), jobs))
    cubins = {s: r for (s, is_ptx), r in zip(jobs, results) if not is_ptx}
    ptx = results[-1] if ptx_sm else None
    return cubins, ptx
