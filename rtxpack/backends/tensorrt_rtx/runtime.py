"""TensorRT-RTX runtime adapter: deserialize, validity, refit, runtime cache, run.

Thin on purpose: every call is NVIDIA's documented Python API (FACTS.md; NVIDIA's
``api_usage.py`` and FLUX demo ``engine.py``); the decisions rtxpack adds — turning validity
diagnostics into reasons, refusing invalid engines before deserializing, ignoring a runtime cache
the engine rejects, mapping option strings to enums — are small functions that take the
``tensorrt_rtx`` module as an argument, so tests drive them with real and with fake modules.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ...core.cuda import check, device_context
from ...core.errors import BackendError, ConfigError, RefitError

log = logging.getLogger(__name__)

#: EngineInvalidityDiagnostics bits (FACTS.md) -> reason and fix
DIAGNOSTICS = (
    (1 << 0, "VERSION_MISMATCH", "built with another TensorRT-RTX version", "install the exact tensorrt-rtx version the engine was built with"),
    (1 << 1, "UNSUPPORTED_CC", "this GPU's compute capability is not a target of the engine (or not supported by TensorRT-RTX)", "use an engine built for this GPU, or the nvrtc backend"),
    (1 << 2, "OLD_CUDA_DRIVER", "the CUDA driver is too old", "update the NVIDIA driver"),
    (1 << 3, "OLD_CUDA_RUNTIME", "the CUDA runtime is too old", "update the CUDA runtime / tensorrt-rtx wheel"),
    (1 << 4, "INSUFFICIENT_GPU_MEMORY", "not enough GPU memory", "close other GPU applications or use a smaller model"),
    (1 << 5, "MALFORMED_ENGINE", "the engine file is malformed or truncated", "fetch it again (`rtxpack cache verify`)"),
    (1 << 6, "CUDA_ERROR", "a CUDA error occurred while checking", "check the driver installation (`rtxpack detect`)"),
)
VALID, SUBOPTIMAL, INVALID = 0, 1, 2


def diagnostics_reasons(bits: int) -> list[tuple[str, str, str]]:
    """``[(name, reason, fix)]`` for each diagnostic bit set."""
    return [(name, reason, fix) for bit, name, reason, fix in DIAGNOSTICS if bits & bit]


def check_validity(trt: Any, runtime: Any, plan: bytes) -> tuple[str, list[str]]:
    """``('valid'|'suboptimal', notes)``; raises BackendError with the reasons when INVALID."""
    validity, bits = runtime.get_engine_validity(plan)
    level = int(getattr(validity, "value", validity))
    reasons = diagnostics_reasons(int(bits))
    if level == INVALID:
        if not reasons:
            reasons = [("UNKNOWN", "TensorRT-RTX reports the engine invalid here with no diagnostic "
                                   "(no usable CUDA driver or GPU?)", "run `rtxpack detect`")]
        raise BackendError("TensorRT-RTX engine is not valid on this machine: "
                           + "; ".join(f"{n}: {r}" for n, r, _ in reasons),
                           fix=reasons[0][2], diagnostics=int(bits), reasons=[n for n, _, _ in reasons])
    notes = [f"{n}: {r}" for n, r, _ in reasons]
    return ("suboptimal" if level == SUBOPTIMAL else "valid"), notes


def enum_option(trt: Any, enum_name: str, value: Any) -> Any:
    """``'lazy'`` -> ``trt.DynamicShapesKernelSpecializationStrategy.LAZY`` (clear error otherwise)."""
    enum = getattr(trt, enum_name)
    if not isinstance(value, str):
        return value
    member = getattr(enum, value.upper(), None)
    if member is None:
        allowed = [n.lower() for n in dir(enum) if n.isupper()]
        raise ConfigError(f"{value!r} is not a valid {enum_name}", fix=f"use one of: {', '.join(allowed)}",
                          option=enum_name)
    return member


OPTION_ENUMS = {
    "dynamic_shapes_kernel_specialization_strategy": "DynamicShapesKernelSpecializationStrategy",
    "cuda_graph_strategy": "CudaGraphStrategy",
}


def apply_options(trt: Any, runtime_config: Any, options: Mapping[str, Any] | None) -> None:
    for key, value in (options or {}).items():
        enum_name = OPTION_ENUMS.get(key)
        if enum_name is None:
            raise ConfigError(f"unknown TensorRT-RTX runtime option {key!r}", fix=f"use {', '.join(OPTION_ENUMS)}",
                              option=key)
        setattr(runtime_config, key, enum_option(trt, enum_name, value))


def load_runtime_cache(runtime_config: Any, blob: bytes | None) -> tuple[Any, str]:
    """Create the runtime cache and feed it ``blob``; a rejected blob leaves an empty cache (JIT again)."""
    cache = runtime_config.create_runtime_cache()
    status = "empty"
    if blob:
        status = "loaded" if cache.deserialize(blob) else "ignored (does not match this engine/GPU/driver)"
    runtime_config.set_runtime_cache(cache)
    return cache, status


class TensorRTRTXLoaded:
    """A deserialized engine with a runtime config, a runtime cache and an execution context."""

    def __init__(self, plan: bytes, *, device: int = 0, runtime_cache: bytes | None = None,
                 options: Mapping[str, Any] | None = None, trt: Any = None) -> None:
        if trt is None:
            import tensorrt_rtx as trt  # noqa: F811 - lazy: only here
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.validity, self.notes = check_validity(trt, self._runtime, plan)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError("TensorRT-RTX could not deserialize the engine", fix="fetch it again or rebuild it")
        self.config = self.engine.create_runtime_config()
        apply_options(trt, self.config, options)
        self._cache, self.runtime_cache_status = load_runtime_cache(self.config, runtime_cache)
        self.context = self.engine.create_execution_context(self.config)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inp = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == inp]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != inp]
        self._device = device
        self._buffers: list[Any] = []

    def refit(self, onnx_path: str | Path) -> None:
        trt = self._trt
        refitter = trt.Refitter(self.engine, self._logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, self._logger)
        if not parser_refitter.refit_from_file(str(onnx_path)):
            raise RefitError(f"TensorRT-RTX could not take the weights of {onnx_path}",
                             fix="pass the exact ONNX the engine was built from", path=str(onnx_path))
        if not refitter.refit_cuda_engine():
            missing = list(refitter.get_missing_weights()) if hasattr(refitter, "get_missing_weights") else []
            raise RefitError(f"refit of the engine failed (missing weights: {missing or 'unknown'})",
                             fix="pass the exact ONNX the engine was built from", path=str(onnx_path))
        # a new context picks up the refitted weights with the same runtime cache
        self.context = self.engine.create_execution_context(self.config)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np
        from cuda.bindings import driver as cu


        trt = self._trt
        with device_context(self._device):
            stream = check(cu.cuStreamCreate(0))
            allocs = []
            try:
                for name in self.input_names:
                    arr = np.ascontiguousarray(inputs[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                    self.context.set_input_shape(name, arr.shape)
                    ptr = check(cu.cuMemAlloc(max(arr.nbytes, 1)))
                    allocs.append(ptr)
                    check(cu.cuMemcpyHtoD(ptr, arr.ctypes.data, arr.nbytes))
                    self.context.set_tensor_address(name, int(ptr))
                outs = {}
                for name in self.output_names:
                    shape = tuple(self.context.get_tensor_shape(name))
                    out = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                    ptr = check(cu.cuMemAlloc(max(out.nbytes, 1)))
                    allocs.append(ptr)
                    self.context.set_tensor_address(name, int(ptr))
                    outs[name] = (out, ptr)
                if not self.context.execute_async_v3(int(stream)):
                    raise BackendError("TensorRT-RTX execution failed", fix="run with RTXPACK_DEBUG=1 for details")
                check(cu.cuStreamSynchronize(stream))
                for name, (out, ptr) in outs.items():
                    check(cu.cuMemcpyDtoH(out.ctypes.data, ptr, out.nbytes))
                return {name: out for name, (out, _) in outs.items()}
            finally:
                for ptr in allocs:
                    cu.cuMemFree(ptr)
                cu.cuStreamDestroy(stream)

    def runtime_cache(self) -> bytes:
        data = self._cache.serialize()
        return bytes(data) if data is not None else b""

    def close(self) -> None:
        self.context = None
        self.engine = None

    def __enter__(self) -> "TensorRTRTXLoaded":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
