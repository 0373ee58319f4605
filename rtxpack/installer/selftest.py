"""``rtxpack selftest``: run the whole backend path on this machine and say pass/fail per step.

On a GPU TensorRT-RTX supports (and with tensorrt-rtx installed): build for this GPU, strip +
refit, runtime-cache round trip, inference checked against the ONNX reference. Elsewhere (no
TensorRT-RTX support, e.g. Hopper) it says so and runs the same steps with the nvrtc backend.
Without a GPU, the ahead-of-time steps still run and the GPU steps are reported as skipped.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


from ..core import config, registry
from ..core.device import describe, detect

TOLERANCE = 1e-4
#: a small Conv-BN-Relu/residual/pool/Gemm model (input x: [1, 3, 32, 32]), shipped with the package
MODEL = Path(__file__).resolve().parent / "data" / "selftest_cnn.onnx"
#: what the ahead-of-time steps build for on a machine without a GPU
NO_GPU_TARGET = "8.6"


def reference_run(onnx_path: str | Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs of onnx's reference evaluator (the correctness oracle)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(onnx_path))
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model).run(None, inputs)))


class _Steps:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.steps: list[dict[str, Any]] = []
        self.progress = progress

    def add(self, step: str, status: str, detail: str, seconds: float = 0.0) -> None:
        rec = {"step": step, "status": status, "detail": detail, "seconds": round(seconds, 4)}
        self.steps.append(rec)
        if self.progress:
            self.progress(f"{status.upper():<5} {step}: {detail}")

    def run(self, step: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Exception as e:  # a selftest reports every failure and goes on
            self.add(step, "fail", f"{type(e).__name__}: {e}", time.perf_counter() - t0)
            return False
        self.add(step, "pass", detail, time.perf_counter() - t0)
        return True


def _compare(out: dict, ref: dict) -> str:
    import numpy as np

    worst = 0.0
    for name, r in ref.items():
        scale = max(1.0, float(np.abs(r).max()))
        err = float(np.abs(np.asarray(out[name]) - r).max()) / scale
        worst = max(worst, err)
        if err > TOLERANCE:
            raise AssertionError(f"output {name!r} differs from the ONNX reference: max error {err:.2e} of scale")
    return f"matches the ONNX reference (max error {worst:.1e} of scale)"


def run_selftest(progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    s = _Steps(progress)
    # this machine's real GPUs: RTXPACK_DEVICE describes another PC, which cannot be tested from here
    dev = detect(use_override=False)
    forced = " (RTXPACK_DEVICE is ignored: selftest tests this machine's own GPU)" if config.device_override() else ""
    no_driver = next((n for n in dev.notes), "no NVIDIA GPU found") if not dev.gpus else None
    s.add("detect", "pass", describe(dev) + (f": {no_driver}" if no_driver else "") + forced)
    gpu = dev.gpu
    # the most preferred backend that is installed and supports this GPU; otherwise the first one
    # that runs on any GPU (nvrtc), whose ahead-of-time steps work without a GPU
    chosen, passed_over = None, []
    for sp in registry.specs():
        if gpu is None:
            passed_over.append("no GPU on this machine")
            break
        if not sp.supports(gpu.cc):
            passed_over.append(f"{sp.label} does not support {gpu.name} (CC {gpu.compute_capability})")
        elif not dev.backend_version(sp.name):
            passed_over.append(f"{sp.name} is not installed (pip install rtxpack[{sp.extra}])")
        else:
            chosen = sp
            break
    if chosen is None:
        chosen = next(sp for sp in registry.specs() if sp.supported_ccs is None)
    if passed_over:
        s.add("choose-backend", "pass", f"{'; '.join(passed_over)}: running the {chosen.name} path instead")
    else:
        s.add("choose-backend", "pass",
              f"{chosen.label} {dev.backend_version(chosen.name)} supports CC {gpu.compute_capability}")
    backend = chosen.name
    be = chosen.create()
    if gpu is not None:
        cc = chosen.jit_ccs(gpu.cc)[0]      # build for the GPU this process runs on
    else:
        cc = NO_GPU_TARGET
    onnx = MODEL
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref = reference_run(onnx, {"x": x})
    plans: dict[str, bytes] = {}

    def build() -> str:
        plans["full"] = be.build(onnx, compute_capabilities=[cc])
        return f"{backend} plan for CC {cc if cc != 'current' else 'CURRENT (' + gpu.compute_capability + ')'}: {len(plans['full'])} bytes"

    built = s.run("build", build)
    if gpu is None:
        if not chosen.strip_needs_gpu:
            s.run("build-stripped", lambda: f"{len(be.build(onnx, compute_capabilities=[cc], strip_weights=True))} bytes")
        for step in ("load+run", "runtime-cache round trip", "strip+refit+run"):
            s.add(step, "skip", "needs an NVIDIA GPU and its driver (none here)")
    elif built:
        cache: dict[str, bytes] = {}

        def load_run() -> str:
            with be.load(plans["full"]) as loaded:
                out = loaded.run({"x": x})
                cache["blob"] = loaded.runtime_cache()
            return _compare(out, ref)

        def cache_round_trip() -> str:
            with be.load(plans["full"], runtime_cache=cache["blob"]) as loaded:
                status = getattr(loaded, "runtime_cache_status", "") or getattr(loaded, "kernel_sources", "")
                out = loaded.run({"x": x})
                if isinstance(status, str) and status.startswith("ignored"):
                    raise AssertionError(f"the runtime cache written a moment ago was {status}")
            _compare(out, ref)
            return f"{len(cache['blob'])} bytes serialized and loaded back ({status})"

        def strip_refit() -> str:
            stripped = be.build(onnx, compute_capabilities=[cc], strip_weights=True)
            with be.load(stripped) as loaded:
                loaded.refit(onnx)
                out = loaded.run({"x": x})
            return f"stripped plan {len(stripped)} bytes (full {len(plans['full'])}); " + _compare(out, ref)

        if s.run("load+run", load_run):
            s.run("runtime-cache round trip", cache_round_trip)
        else:
            s.add("runtime-cache round trip", "skip", "load failed")
        s.run("strip+refit+run", strip_refit)
    failed = [st for st in s.steps if st["status"] == "fail"]
    # "no-gpu" is not a failure: nothing is broken, the GPU half simply cannot run here
    status = "failed" if failed else "no-gpu" if gpu is None else "passed"
    counts = (f"{sum(st['status'] == 'pass' for st in s.steps)} passed, {len(failed)} failed, "
              f"{sum(st['status'] == 'skip' for st in s.steps)} skipped")
    if status == "no-gpu":
        summary = (f"selftest: no NVIDIA GPU/driver on this machine ({no_driver}); the ahead-of-time steps with "
                   f"backend {backend} passed, the GPU steps did not run: {counts}")
    else:
        summary = f"selftest {'passed' if not failed else 'FAILED'} with backend {backend} on {describe(dev)}: {counts}"
    return {"ok": not failed, "status": status, "backend": backend, "device": dev.to_dict(), "steps": s.steps,
            "summary": summary}
