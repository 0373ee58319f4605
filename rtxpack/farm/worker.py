"""Generic cell worker for backends that run in this interpreter (nvrtc): JSON in on stdin, JSON out.

Same protocol as ``backends/tensorrt_rtx/build_worker.py``; used as ``python -m rtxpack.farm.worker``.
"""
from __future__ import annotations

import json
import sys


def main() -> int:
    req = json.loads(sys.stdin.read())
    from ..backends import get_backend
    from ..errors import RtxpackError

    backend = get_backend(req["backend"])
    version = backend.info().version
    try:
        data = backend.build(req["onnx"], compute_capabilities=req.get("compute_capabilities"),
                             precision=req.get("precision", "fp32"), strip_weights=bool(req.get("strip_weights")),
                             profiles=req.get("profiles") or None)
        info = backend.inspect(data)
    except (RtxpackError, ValueError, RuntimeError, NotImplementedError) as e:
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "version": version}
    else:
        with open(req["out"], "wb") as f:
            f.write(data)
        reply = {"ok": True, "version": version, "size": len(data), "ptx": bool(info.ptx),
                 "compute_capabilities": list(info.compute_capabilities)}
    sys.stdout.write("\n" + json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
