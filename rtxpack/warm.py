"""Runtime-cache warm-up on a farm GPU node: ``rtxpack warm CONFIG --repo DIR``.

For every engine in the repository that this GPU can run, load it (refitting stripped plans from
the config's ONNX), run the warm-up shapes the config declares (``[[models]] warmup = [...]``;
the profile's ``opt`` shape, or the ONNX's static shape, when none are declared), and publish the
serialized runtime cache into the repository keyed by GPU name, CC, OS, driver and backend version.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .backends import get_backend
from .device import Device, detect
from .digest import sha256_bytes
from .errors import BackendError, RtxpackError
from .manifest import Artifact, Manifest, artifact_id, blob_relpath
from .resolve import Target, _classify

log = logging.getLogger(__name__)


@dataclass
class WarmResult:
    engine: str
    status: str                      # "warmed" | "skipped" | "failed"
    reason: str
    cache: str | None = None         # id of the runtime-cache artifact added
    shapes: tuple = ()
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__, shapes=[dict(s) for s in self.shapes])


def _onnx_inputs(onnx_path: Path) -> dict[str, tuple[list[Any], Any]]:
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[i.name] = (dims, helper.tensor_dtype_to_np_dtype(t.elem_type))
    return out


def warmup_shapes(model_spec: Any) -> list[dict[str, tuple[int, ...]]]:
    if model_spec.warmup:
        return [dict(w) for w in model_spec.warmup]
    inputs = _onnx_inputs(model_spec.onnx)
    shape = {}
    for name, (dims, _) in inputs.items():
        prof = (model_spec.inputs or {}).get(name)
        shape[name] = tuple(prof["opt"]) if prof else tuple(d if d else 1 for d in dims)
    return [shape]


def warm(config_path: str | Path, repo_dir: str | Path, *, device: Device | None = None,
         progress: Callable[[str], None] | None = None) -> list[WarmResult]:
    import time

    from .farm.config import load_config
    from .farm.repo import Repository

    cfg = load_config(config_path)
    repo = Repository(repo_dir)
    manifest: Manifest = repo.load()
    device = device or detect()
    if not device.gpus:
        raise BackendError("rtxpack warm needs a GPU on this node and found none",
                           fix="run it on a GPU farm node (`rtxpack detect` shows what this machine has)")
    target = Target.from_device(device)
    gpu = device.gpus[0]
    models = {m.name: m for m in cfg.models}
    results: list[WarmResult] = []
    new: list[Artifact] = []
    for art in manifest.select(kind="engine"):
        spec = models.get(art.model)
        if spec is None:
            results.append(WarmResult(art.id, "skipped", "model not in the config"))
            continue
        cand = _classify(art, target, weights_digest=art.weights_digest if art.stripped else None, backend=None)
        if not cand.ok:
            results.append(WarmResult(art.id, "skipped", cand.reason))
            continue
        if target.backend_version(art.backend) is None:
            results.append(WarmResult(art.id, "skipped", f"{art.backend} is not installed on this node"))
            continue
        t0 = time.perf_counter()
        try:
            loaded = get_backend(art.backend).load((repo.root / art.path).read_bytes())
            try:
                if art.stripped:
                    loaded.refit(spec.onnx)
                shapes = warmup_shapes(spec)
                dtypes = {n: dt for n, (_, dt) in _onnx_inputs(spec.onnx).items()}
                rng = np.random.default_rng(0)
                for shape in shapes:
                    loaded.run({n: rng.standard_normal(s).astype(dtypes.get(n, np.float32)) for n, s in shape.items()})
                blob = loaded.runtime_cache()
            finally:
                loaded.close()
        except RtxpackError as e:
            results.append(WarmResult(art.id, "failed", str(e), seconds=time.perf_counter() - t0))
            continue
        sha = sha256_bytes(blob)
        with tempfile.NamedTemporaryFile(dir=repo.root, prefix=".warm.", delete=False) as f:
            f.write(blob)
        repo.add_blob_file(Path(f.name), move=True)
        rc = Artifact(id=artifact_id("runtime-cache", art.model, sha), kind="runtime-cache", model=art.model,
                      model_digest=art.model_digest, weights_digest=art.weights_digest, backend=art.backend,
                      backend_version=art.backend_version, compute_capabilities=(gpu.compute_capability,),
                      size=len(blob), sha256=sha, path=blob_relpath(sha), os=device.os, gpu_name=gpu.name,
                      driver_version=gpu.driver_version, min_driver_version=gpu.driver_version, engine=art.sha256,
                      precision=art.precision, cell=art.cell)
        new.append(rc)
        res = WarmResult(art.id, "warmed", f"runtime cache for {gpu.name} ({len(blob)} bytes)", cache=rc.id,
                         shapes=tuple(shapes), seconds=time.perf_counter() - t0)
        results.append(res)
        if progress:
            progress(f"warmed {art.id} on {gpu.name}: {len(blob)} bytes in {res.seconds:.1f} s")
    if new:
        # replace older caches for the same (engine, GPU, OS, driver) so the manifest holds one per key
        def same_key(a: Artifact, b: Artifact) -> bool:
            return (a.kind == b.kind == "runtime-cache" and a.engine == b.engine and a.gpu_name == b.gpu_name
                    and a.os == b.os and a.driver_version == b.driver_version)
        current = repo.load()
        keep = [a for a in current.artifacts if not any(same_key(a, n) for n in new)]
        with repo.lock():
            repo.load().with_artifacts(keep + new).save(repo.root)
    return results

