"""Small CUDA driver helpers shared by backends (imported lazily, only where a GPU is used)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import BackendError, BackendNotInstalled


def driver() -> Any:
    try:
        from cuda.bindings import driver as cu
    except ImportError as e:
        raise BackendNotInstalled("cuda-python is not installed", fix="pip install rtxpack[gpu]") from e
    return cu


def check(result: Any, what: str = "CUDA driver call") -> Any:
    """Unwrap a cuda-python ``(err, *values)`` tuple, raising BackendError naming ``what`` on failure."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        cu = driver()
        try:
            _, name = cu.cuGetErrorName(err)
            name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:
            name = str(err)
        raise BackendError(f"{what} failed: {name}",
                           fix="check the GPU driver (`rtxpack detect`, nvidia-smi) and that the plan fits this GPU",
                           cuda_error=int(err))
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


@contextmanager
def device_context(index: int = 0) -> Iterator[Any]:
    """Make device ``index``'s primary context current for the block."""
    cu = driver()
    check(cu.cuInit(0))
    dev = check(cu.cuDeviceGet(index))
    ctx = check(cu.cuDevicePrimaryCtxRetain(dev))
    check(cu.cuCtxPushCurrent(ctx))
    try:
        yield ctx
    finally:
        cu.cuCtxPopCurrent()
        cu.cuDevicePrimaryCtxRelease(dev)
