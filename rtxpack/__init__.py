"""rtxpack: ship GPU inference artifacts (TensorRT-RTX engines, runtime caches, NVRTC plans) to PCs."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(*args: Any, **kwargs: Any):  # noqa: ANN201 - re-exported from runtime
    """Resolve, fetch, refit and load a model; see :func:`rtxpack.runtime.load`."""
    from .runtime import load as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load"]
