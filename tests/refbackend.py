"""A CPU test double for a GPU backend, so CI (no GPU) can drive rtxpack.load()'s whole chain.

It honours the Backend interface for real: plans are bytes with a header and the ONNX graph
(weights kept or stripped, stripped plans record each weight's sha256 and the weights digest),
``run`` executes with onnx.reference (the oracle), ``refit`` checks every weight before using
it, and the "runtime cache" records the input shapes already specialised, with a checksum, so
a corrupt or foreign cache is detected and ignored exactly as the real backends must.
The real backends are exercised on the GPU (tests/test_nvrtc_*.py, tests/test_e2e_gpu.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rtxpack.backends.base import BackendInfo, PlanInfo
from rtxpack.core import registry
from rtxpack.core.registry import BackendSpec
from rtxpack.core.digest import initializers, weights_digest_from_arrays
from rtxpack.core.errors import BackendError, RefitError

MAGIC = b"REFPLAN1"
CACHE_MAGIC = b"REFCACHE"
VERSION = "1.0.0"
STATS = {"builds": 0, "loads": 0}


NAME = "reference"


class RefBackend:
    name = NAME

    def info(self) -> BackendInfo:
        return BackendInfo(name=self.name, version=VERSION)

    def build(self, onnx_path, *, compute_capabilities=None, precision="fp32", strip_weights=False, profiles=None) -> bytes:
        import onnx

        STATS["builds"] += 1
        _maybe_block(Path(onnx_path))
        model = onnx.load(str(onnx_path))
        weights = initializers(model)
        header = {"ccs": list(compute_capabilities or []), "stripped": strip_weights,
                  "weights_digest": weights_digest_from_arrays(weights),
                  "weights": {n: {"dtype": a.dtype.str, "shape": list(a.shape),
                                  "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
                              for n, a in weights.items()}}
        if strip_weights:
            del model.graph.initializer[:]
        h = json.dumps(header).encode()
        return MAGIC + len(h).to_bytes(4, "little") + h + model.SerializeToString()

    def inspect(self, plan: bytes) -> PlanInfo:
        header, _ = _split(plan)
        return PlanInfo(backend=self.name, backend_version=VERSION, compute_capabilities=tuple(header["ccs"]),
                        stripped=header["stripped"], weights_digest=header["weights_digest"])

    def load(self, plan: bytes, *, device: int = 0, runtime_cache: bytes | None = None, options=None) -> "RefLoaded":
        STATS["loads"] += 1
        return RefLoaded(plan, runtime_cache)


def _split(plan: bytes) -> tuple[dict, bytes]:
    if plan[:8] != MAGIC:
        raise BackendError("not a reference plan (bad magic)", fix="fetch it again")
    n = int.from_bytes(plan[8:12], "little")
    try:
        return json.loads(plan[12:12 + n]), plan[12 + n:]
    except ValueError as e:
        raise BackendError(f"corrupt reference plan ({e})", fix="fetch it again") from e


class RefLoaded:
    def __init__(self, plan: bytes, runtime_cache: bytes | None) -> None:
        import onnx

        self.header, body = _split(plan)
        self.model = onnx.load_from_string(body)
        self.input_names = [i.name for i in self.model.graph.input]
        self.output_names = [o.name for o in self.model.graph.output]
        self.needs_refit = self.header["stripped"]
        self.shapes: set[str] = set()
        self.runtime_cache_status = "empty"
        self.kernel_sources = {"runtime-cache": 0, "jit": 0}
        if runtime_cache:
            ok = runtime_cache[:8] == CACHE_MAGIC
            if ok:
                digest, payload = runtime_cache[8:40], runtime_cache[40:]
                ok = hashlib.sha256(payload).digest() == digest
            if ok:
                data = json.loads(payload)
                ok = data.get("weights_digest") == self.header["weights_digest"]
            if ok:
                self.shapes = set(data["shapes"])
                self.runtime_cache_status = f"loaded {len(self.shapes)} specialisations"
            else:
                self.runtime_cache_status = "ignored (corrupt or foreign)"
        self._sess = None

    def refit(self, onnx_path) -> None:
        import onnx

        weights = initializers(onnx.load(str(onnx_path)))
        recorded = self.header["weights"]
        for name, rec in recorded.items():
            arr = weights.get(name)
            if arr is None:
                raise RefitError(f"weight {name!r} is missing from {onnx_path}", fix="pass the ONNX the plan was built from")
            if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != rec["sha256"]:
                raise RefitError(f"weight {name!r} differs from the one the plan was built from (sha256 mismatch)",
                                 fix="pass the ONNX the plan was built from", weight=name)
        from onnx import numpy_helper

        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(numpy_helper.from_array(weights[n], n) for n in sorted(recorded))
        self.needs_refit = False
        self._sess = None

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.needs_refit:
            raise BackendError("weight-stripped plan used before refit", fix="call refit(onnx) first")
        from onnx.reference import ReferenceEvaluator

        key = json.dumps({k: list(np.shape(v)) for k, v in sorted(inputs.items())})
        self.kernel_sources["runtime-cache" if key in self.shapes else "jit"] += 1
        self.shapes.add(key)
        if self._sess is None:
            self._sess = ReferenceEvaluator(self.model)
        return dict(zip(self.output_names, self._sess.run(None, dict(inputs))))

    def runtime_cache(self) -> bytes:
        payload = json.dumps({"weights_digest": self.header["weights_digest"], "shapes": sorted(self.shapes)}).encode()
        return CACHE_MAGIC + hashlib.sha256(payload).digest() + payload

    def close(self) -> None:
        self._sess = None


SPEC = BackendSpec(name=NAME, display="reference", factory=lambda: RefBackend(), magic=MAGIC,
                   probe=lambda: VERSION, extra="test", supported_ccs=None, exact_version=False, jit_target="exact")


def _farm_worker(python: str) -> list[str]:
    return [python, str(Path(__file__).resolve()), "--serve"]


#: the reference backend as a farm target (the cluster tests): its builder is rtxpack.farm.worker in a
#: process that registers it first (this file run as a script), and, as for TensorRT-RTX, a weight-
#: stripped build needs a GPU of its compute capability, so the farm routes those cells to GPU workers
FARM_SPEC = dataclasses.replace(SPEC, worker_argv=_farm_worker, strip_needs_gpu=True)

#: a folder: building a model whose file name starts with "slow" then writes ``started`` (and
#: ``started.<pid>``) there, with the pid of the builder's parent (the farm worker), and waits until
#: ``release`` appears; only the first such build waits (a retry of the cell elsewhere goes through),
#: unless ``always`` exists
BLOCK_DIR = "REFBACKEND_BLOCK_DIR"


def _maybe_block(onnx: Path) -> None:
    folder = os.environ.get(BLOCK_DIR)
    if not folder or not onnx.name.startswith("slow"):
        return
    d = Path(folder)
    started = d / "started"
    if started.exists() and not (d / "always").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".started.{os.getpid()}"
    tmp.write_text(str(os.getppid()))
    (d / f"started.{os.getpid()}").write_text(str(os.getppid()))   # one per blocked build, to count them
    os.replace(tmp, started)
    deadline = time.monotonic() + 120
    while not (d / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def install(*, farm: bool = False) -> RefBackend:
    """Register the reference backend, as any backend is registered: one BackendSpec (the
    ``reference_backend`` fixture in conftest.py unregisters it after the test). ``farm``: the
    variant the build farm can build with (:data:`FARM_SPEC`)."""
    registry.register(FARM_SPEC if farm else SPEC, replace=True)
    return RefBackend()


def uninstall() -> None:
    registry.unregister(NAME)


def publish(repo_dir: Path, model: str, onnx_path: Path, *, ccs=("7.5", "8.6", "8.9", "9.0", "12.0"),
            stripped: bool = False, extra_artifacts=(), backend: str = NAME) -> Any:
    """Build a reference plan and publish it into a repository directory (farm.repo API); ``backend``
    is the name the manifest entry gives (a plan that is never loaded may pose as another backend's)."""
    from rtxpack.core.digest import model_digest, sha256_bytes, weights_digest
    from rtxpack.farm.repo import RepositoryWriter as Repository
    from rtxpack.core.manifest import Artifact, artifact_id, blob_relpath

    plan = RefBackend().build(onnx_path, compute_capabilities=list(ccs), strip_weights=stripped)
    sha = sha256_bytes(plan)
    repo = Repository(repo_dir)
    tmp = Path(repo_dir) / f".plan.{sha[:8]}"
    Path(repo_dir).mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(plan)
    repo.add_blob_file(tmp, move=True)
    art = Artifact(id=artifact_id("engine", model, sha), kind="engine", model=model, model_digest=model_digest(onnx_path),
                   weights_digest=weights_digest(onnx_path), backend=backend, backend_version=VERSION,
                   compute_capabilities=tuple(ccs), ptx=True, size=len(plan), sha256=sha, path=blob_relpath(sha),
                   stripped=stripped)
    repo.add_artifacts([art, *extra_artifacts])
    return art


if __name__ == "__main__":   # the farm's builder for FARM_SPEC: rtxpack.farm.worker with this backend registered
    install(farm=True)
    from rtxpack.farm.worker import main

    sys.exit(main())
