"""rtxpack: ship GPU inference artifacts (TensorRT-RTX engines, runtime caches, NVRTC plans) to PCs.

Layout (import only downward): ``core`` (shared) <- ``backends`` <- ``installer`` | ``farm`` <- ``cli``.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(*args: Any, **kwargs: Any):  # noqa: ANN201 - see rtxpack.installer.loader.load
    """Resolve, fetch, refit and load a model; see :func:`rtxpack.installer.loader.load`.

    Imported on first use, so ``import rtxpack`` stays cheap for tools that only need a submodule.
    """
    from .installer.loader import load as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load"]
