"""The CUDA driver API through cuda-python: loading it and checking its results (one helper for all).

Imported lazily by whatever touches a GPU (device detection, the backends' runtimes); a missing
cuda-python is BackendNotInstalled naming the extra, a missing driver library a BackendError.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from .errors import BackendError, BackendNotInstalled


def driver() -> Any:
    """``cuda.bindings.driver`` (BackendNotInstalled naming ``rtxpack[gpu]`` when cuda-python is missing)."""
    try:
        from cuda.bindings import driver as cu
    except ImportError as e:
        raise BackendNotInstalled("cuda-python is not installed", fix="pip install rtxpack[gpu]") from e
    return cu


def check(result: Any, what: str = "CUDA driver call") -> Any:
    """Unwrap a cuda-python ``(err, *values)`` tuple, raising BackendError naming ``what`` on failure."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        try:
            _, name = driver().cuGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - the error name is a nicety
            name = str(err)
        raise BackendError(f"{what} failed: {name}",
                           fix="check the GPU driver (`rtxpack detect`, nvidia-smi) and that the plan fits this GPU",
                           cuda_error=int(err))
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def init() -> Any:
    """cuInit; "no driver library" (cuda.pathfinder's DynamicLibNotFoundError) becomes a BackendError."""
    cu = driver()
    try:
        result = cu.cuInit(0)
    except Exception as e:  # noqa: BLE001 - raised by the loader when there is no driver at all
        raise BackendError(f"no NVIDIA driver on this machine ({type(e).__name__}: {e})",
                           fix="run on a machine with an NVIDIA GPU and driver (building plans needs neither)") from e
    check(result, "cuInit")
    return cu


@contextmanager
def device_context(index: int = 0) -> Iterator[Any]:
    """Make device ``index``'s primary context current for the block."""
    cu = init()
    dev = check(cu.cuDeviceGet(index))
    ctx = check(cu.cuDevicePrimaryCtxRetain(dev))
    check(cu.cuCtxPushCurrent(ctx))
    try:
        yield ctx
    finally:
        cu.cuCtxPopCurrent()
        cu.cuDevicePrimaryCtxRelease(dev)
