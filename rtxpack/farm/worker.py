"""Generic cell worker for backends that build in this interpreter (nvrtc): JSON in on stdin, JSON out.

Same protocol as ``backends/tensorrt_rtx/build_worker.py``; used as ``python -m rtxpack.farm.worker``
(one request on stdin, one reply) or ``python -m rtxpack.farm.worker --serve`` (a long-lived worker:
a ``{"ready": ...}`` line, then one JSON reply line per JSON request line until stdin closes).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ..core import registry
from ..core.errors import RtxpackError


def handle(backend: Any, version: str, req: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        data = backend.build(req["onnx"], compute_capabilities=req.get("compute_capabilities"),
                             precision=req.get("precision", "fp32"), strip_weights=bool(req.get("strip_weights")),
                             profiles=req.get("profiles") or None)
        info = backend.inspect(data)
    except (RtxpackError, ValueError, RuntimeError, NotImplementedError) as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "version": version}
    with open(req["out"], "wb") as f:
        f.write(data)
    return {"ok": True, "version": version, "size": len(data), "ptx": bool(info.ptx),
            "compute_capabilities": list(info.compute_capabilities), "seconds": round(time.perf_counter() - t0, 4)}


def serve() -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)   # the protocol channel; fd 1 -> stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    backends: dict[str, tuple[Any, str]] = {}
    proto.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            name = req["backend"]
            if name not in backends:
                b = registry.create(name)
                backends[name] = (b, b.info().version)
            backend, version = backends[name]
        except Exception as e:  # bad request or unusable backend: an answer, not a crash
            reply: dict[str, Any] = {"ok": False, "error": f"{type(e).__name__}: {e}", "version": None}
        else:
            reply = handle(backend, version, req)
        proto.write(json.dumps(reply) + "\n")
    return 0


def main() -> int:
    if "--serve" in sys.argv[1:]:
        return serve()
    req = json.loads(sys.stdin.read())
    backend = registry.create(req["backend"])
    reply = handle(backend, backend.info().version, req)
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
