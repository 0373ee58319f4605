"""Backend implementations, one package each (``tensorrt_rtx``, ``nvrtc``) behind the small
interface in ``base``; which backends exist and their rules are in :mod:`rtxpack.core.registry`,
which imports them lazily, so importing rtxpack never needs CUDA or TensorRT-RTX.
"""
from __future__ import annotations

from .base import Backend, BackendInfo, LoadedPlan, PlanInfo

__all__ = ["Backend", "BackendInfo", "LoadedPlan", "PlanInfo"]
