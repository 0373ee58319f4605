"""Standalone TensorRT-RTX AOT build worker: needs only ``tensorrt_rtx`` and the standard library.

The farm runs it with the python of a toolchain's virtual environment (which holds nothing but
``tensorrt-rtx-cuXX==VERSION``), so it must not import rtxpack. Protocol: one JSON request on
stdin, one JSON reply on stdout (last line)::

    request: {"onnx": path, "out": path, "compute_capabilities": ["8.6", ...] | null,
              "strip_weights": false, "profiles": {"x": {"min": [..], "opt": [..], "max": [..]}}}
    reply:   {"ok": true, "version": "1.7.1.116", "size": n}
             {"ok": false, "error": "<the builder's own messages>", "version": ...}

Exit status 0 in both cases (a rejected cell is an answer, not a crash); anything else is a crash.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Mapping, Sequence


class BuildFailed(Exception):
    """The builder refused the network; the message carries its own error lines."""


def _cc_enum(trt: Any, cc: str) -> Any:
    if cc.lower() == "current":   # on-device JIT builds: the GPU this process runs on (needs a GPU)
        return trt.ComputeCapability.CURRENT
    name = "SM" + cc.replace(".", "")
    try:
        return getattr(trt.ComputeCapability, name)
    except AttributeError:
        raise BuildFailed(f"TensorRT-RTX {trt.__version__} has no target for compute capability {cc}") from None


def build_plan(onnx_path: str, *, compute_capabilities: Sequence[str] | None = None, strip_weights: bool = False,
               profiles: Mapping[str, Mapping[str, Sequence[int]]] | None = None) -> bytes:
    """AOT-build ``onnx_path`` into plan bytes; raises BuildFailed with the builder's messages."""
    import tensorrt_rtx as trt

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    logger = _Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildFailed(f"ONNX parser rejected {onnx_path}: " + "; ".join(errs or logger.errors))
    config = builder.create_builder_config()
    ccs = list(compute_capabilities or [])
    if ccs:
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(_cc_enum(trt, cc), i)
    if strip_weights:
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
        config.set_flag(trt.BuilderFlag.REFIT)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    profiles = dict(profiles or {})
    if dynamic or profiles:
        missing = [t.name for t in dynamic if t.name not in profiles]
        if missing:
            raise BuildFailed(f"dynamic input(s) {missing} have no optimization profile "
                              f"(add [models.inputs.{missing[0]}] min/opt/max to rtxpack.toml)")
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildFailed("; ".join(logger.errors) or "TensorRT-RTX returned no engine (no error message)")
    return bytes(plan)


def installed_version() -> str:
    try:
        from importlib.metadata import version

        for dist in ("tensorrt_rtx", "tensorrt-rtx-cu13", "tensorrt-rtx-cu12"):
            try:
                return version(dist)
            except Exception:
                continue
    except Exception:
        pass
    import tensorrt_rtx

    return tensorrt_rtx.__version__


def main() -> int:
    request = json.loads(sys.stdin.read())
    reply: dict[str, Any]
    try:
        import tensorrt_rtx

        version = tensorrt_rtx.__version__
    except ImportError as e:
        print(json.dumps({"ok": False, "error": f"tensorrt_rtx is not importable here: {e}", "version": None}))
        return 0
    try:
        data = build_plan(request["onnx"], compute_capabilities=request.get("compute_capabilities"),
                          strip_weights=bool(request.get("strip_weights")), profiles=request.get("profiles"))
    except BuildFailed as e:
        reply = {"ok": False, "error": str(e), "version": version}
    except Exception as e:  # the builder's Python bindings raise plain exceptions (TypeError, RuntimeError)
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "version": version}
    else:
        with open(request["out"], "wb") as f:
            f.write(data)
        reply = {"ok": True, "version": version, "size": len(data)}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
