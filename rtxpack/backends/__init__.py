"""Backends: one module or package per backend behind the small interface in ``base``.

``get_backend(name)`` imports lazily, so importing rtxpack never needs CUDA or TensorRT-RTX.
"""
from __future__ import annotations

from .base import Backend, BackendInfo, LoadedPlan, PlanInfo

BACKENDS = ("tensorrt-rtx", "nvrtc")


def get_backend(name: str) -> Backend:
    from ..errors import ConfigError

    if name == "nvrtc":
        from .nvrtc import NvrtcBackend

        return NvrtcBackend()
    if name == "tensorrt-rtx":
        from .tensorrt_rtx import TensorRTRTXBackend

        return TensorRTRTXBackend()
    raise ConfigError(f"unknown backend {name!r}", fix=f"use one of: {', '.join(BACKENDS)}", backend=name)


__all__ = ["BACKENDS", "Backend", "BackendInfo", "LoadedPlan", "PlanInfo", "get_backend"]
