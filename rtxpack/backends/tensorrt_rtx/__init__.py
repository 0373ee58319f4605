"""TensorRT for RTX backend: AOT build (no GPU needed), header inspection.

``tensorrt_rtx`` is imported lazily inside the calls that need it. The runtime part (load, refit,
runtime cache, run) is the thin adapter in ``runtime.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ...core.errors import BackendNotInstalled, UnsupportedModel
from ...core.registry import tensorrt_rtx_installed
from ..base import BackendInfo, LoadedPlan, PlanInfo
from .header import PlanHeader, is_tensorrt_rtx_plan, parse_header
from .build_worker import BuildFailed, build_plan
from .runtime import TensorRTRTXLoaded

NAME = "tensorrt-rtx"


def installed_version() -> tuple[str | None, str | None]:
    """(exact version, CUDA major) of the tensorrt-rtx installed in this interpreter, without importing it."""
    return tensorrt_rtx_installed()


class TensorRTRTXBackend:
    name = NAME

    def info(self) -> BackendInfo:
        version, cuda = installed_version()
        return BackendInfo(name=NAME, version=version, details={"cuda": cuda} if cuda else {})

    def build(self, onnx_path: str | Path, *, compute_capabilities: Sequence[str] | None = None,
              precision: str = "fp32", strip_weights: bool = False,
              profiles: Mapping[str, Mapping[str, Sequence[int]]] | None = None) -> bytes:
        """AOT-build in this process (the farm uses the same code in a subprocess per toolchain).

        ``precision`` is informational: TensorRT-RTX networks are strongly typed, so the ONNX
        model's own types decide it.
        """
        try:
            import tensorrt_rtx  # noqa: F401
        except ImportError as e:
            raise BackendNotInstalled("tensorrt_rtx is not installed", fix="pip install rtxpack[rtx]") from e

        try:
            return build_plan(str(onnx_path), compute_capabilities=list(compute_capabilities or []),
                              strip_weights=strip_weights, profiles=profiles)
        except BuildFailed as e:
            raise UnsupportedModel(f"TensorRT-RTX could not build {onnx_path}: {e}",
                                   fix="act on the builder's message; dynamic inputs need [models.inputs.NAME] min/opt/max, "
                                       "Turing (7.5) needs an fp16 model and an engine of its own",
                                   path=str(onnx_path)) from e

    def inspect(self, plan: bytes) -> PlanInfo:
        h = parse_header(plan)
        return PlanInfo(backend=NAME, backend_version=h.version, compute_capabilities=h.compute_capabilities,
                        ptx=False, details={"cc_mask": h.cc_mask, "unknown_cc_bits": h.unknown_bits,
                                            "header": {"cc_mask": f"0x{h.cc_mask:02x}", "unknown_cc_bits": h.unknown_bits}})

    def load(self, plan: bytes, *, device: int = 0, runtime_cache: bytes | None = None,
             options: Mapping[str, Any] | None = None) -> LoadedPlan:
        """Validity check, deserialize, runtime config + cache, context (see ``runtime.py``)."""
        try:
            import tensorrt_rtx  # noqa: F401
        except ImportError as e:
            raise BackendNotInstalled("tensorrt_rtx is not installed", fix="pip install rtxpack[rtx]") from e

        return TensorRTRTXLoaded(plan, device=device, runtime_cache=runtime_cache, options=options)


__all__ = ["NAME", "PlanHeader", "TensorRTRTXBackend", "installed_version", "is_tensorrt_rtx_plan", "parse_header"]
