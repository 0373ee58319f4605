"""Standalone TensorRT-RTX AOT build worker: needs only ``tensorrt_rtx`` and the standard library.

The farm runs it with the python of a toolchain's virtual environment (which holds nothing but
``tensorrt-rtx-cuXX==VERSION``), so it must not import rtxpack. Requests and replies::

    request: {"onnx": path, "out": path, "compute_capabilities": ["8.6", ...] | null,
              "strip_weights": false, "profiles": {"x": {"min": [..], "opt": [..], "max": [..]}}}
    reply:   {"ok": true, "version": "1.7.1.116", "size": n, "seconds": s}
             {"ok": false, "error": "<the builder's own messages>", "version": ...}

One-shot mode (no arguments): one JSON request on stdin, one JSON reply on stdout (last line).

Serve mode (``--serve``, what the farm uses): a long-lived worker. It imports tensorrt_rtx once,
announces itself with one line ``{"ready": true, "version": ...}`` (or ``{"ready": false,
"error": ...}`` and exit), then reads one JSON request per line on stdin and writes one JSON reply
per line, until stdin closes. Replies go to a private duplicate of the original stdout; fd 1 is
pointed at stderr so nothing the native libraries print can corrupt the protocol.

Exit status 0 in both modes (a rejected cell is an answer, not a crash); anything else is a crash.
"""
from __future__ import annotations

import json
import os
import sys
import time
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


def handle(request: Mapping[str, Any], version: str) -> dict[str, Any]:
    """Build one request; the reply (never raises for a builder rejection)."""
    t0 = time.perf_counter()
    try:
        data = build_plan(request["onnx"], compute_capabilities=request.get("compute_capabilities"),
                          strip_weights=bool(request.get("strip_weights")), profiles=request.get("profiles"))
    except BuildFailed as e:
        return {"ok": False, "error": str(e), "version": version}
    except Exception as e:  # the builder's Python bindings raise plain exceptions (TypeError, RuntimeError)
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "version": version}
    with open(request["out"], "wb") as f:
        f.write(data)
    return {"ok": True, "version": version, "size": len(data), "seconds": round(time.perf_counter() - t0, 4)}


def serve() -> int:
    """Long-lived mode: one JSON request per stdin line, one JSON reply per line (see the module doc)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)   # the protocol channel
    os.dup2(2, 1)                                     # native prints land on stderr
    sys.stdout = sys.stderr
    try:
        import tensorrt_rtx

        version = tensorrt_rtx.__version__
    except ImportError as e:
        proto.write(json.dumps({"ready": False, "error": f"tensorrt_rtx is not importable here: {e}"}) + "\n")
        return 0
    proto.write(json.dumps({"ready": True, "version": version, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as e:
            reply: dict[str, Any] = {"ok": False, "error": f"bad request: {e}", "version": version}
        else:
            reply = handle(request, version)
            if "id" in request:
                reply["id"] = request["id"]
        proto.write(json.dumps(reply) + "\n")
    return 0


def main() -> int:
    if "--serve" in sys.argv[1:]:
        return serve()
    request = json.loads(sys.stdin.read())
    try:
        import tensorrt_rtx

        version = tensorrt_rtx.__version__
    except ImportError as e:
        print(json.dumps({"ok": False, "error": f"tensorrt_rtx is not importable here: {e}", "version": None}))
        return 0
    reply = handle(request, version)
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
