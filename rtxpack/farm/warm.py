"""Runtime-cache warm-up on a farm GPU node: ``rtxpack warm CONFIG --repo DIR``.

For every engine in the repository that this GPU can run, load it (refitting stripped plans from
the config's ONNX), run the warm-up shapes the config declares (``[[models]] warmup = [...]``;
the profile's ``opt`` shape, or the ONNX's static shape, when none are declared), and publish the
serialized runtime cache into the repository keyed by GPU name, CC, OS, driver and backend version.

The per-engine step (:func:`warm_engine`) and publishing (:func:`publish_caches`) are separate so
that ``cluster.warm_on_cluster`` runs the first on the Dask worker that has the GPU and the second
in the submitting process, which alone writes the repository.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


from ..core import registry
from ..core.device import GPU, Device, detect
from ..core.digest import json_digest
from ..core.errors import BackendError, RtxpackError
from ..core.manifest import Artifact, Manifest, artifact_id, blob_relpath
from ..core.onnxinfo import model_inputs
from ..core.resolve import Target, classify
from .config import ModelSpec, load_config
from .repo import RepositoryWriter

log = logging.getLogger(__name__)


@dataclass
class WarmResult:
    engine: str
    status: str                      # "warmed" | "skipped" | "failed"
    reason: str
    cache: str | None = None         # id of the runtime-cache artifact added
    shapes: tuple = ()
    seconds: float = 0.0
    gpu: str | None = None           # cluster warm-ups: the [[gpus]] sku it was for
    worker: str | None = None        # cluster warm-ups: the Dask worker that ran it

    def to_dict(self) -> dict:
        d = dict(self.__dict__, shapes=[dict(s) for s in self.shapes])
        for k in ("gpu", "worker"):
            if d[k] is None:
                del d[k]
        return d


def warmup_shapes(model_spec: Any) -> list[dict[str, tuple[int, ...]]]:
    if model_spec.warmup:
        return [dict(w) for w in model_spec.warmup]
    inputs = model_inputs(model_spec.onnx)
    shape = {}
    for name, (dims, _) in inputs.items():
        prof = (model_spec.inputs or {}).get(name)
        shape[name] = tuple(prof["opt"]) if prof else tuple(d if d else 1 for d in dims)
    return [shape]


def engine_problem(art: Artifact, target: Target) -> str | None:
    """Why this GPU cannot warm ``art`` (None: it can)."""
    cand = classify(art, target, weights_digest=art.weights_digest if art.stripped else None, backend=None)
    if not cand.ok:
        return cand.reason
    if target.backend_version(art.backend) is None:
        return f"{art.backend} is not installed on this node"
    return None


def warm_engine(art: Artifact, plan: bytes, spec: ModelSpec, device: Device,
                gpu: GPU) -> tuple[WarmResult, Artifact | None, bytes | None]:
    """Run ``spec``'s warm-up shapes on engine ``art`` (bytes ``plan``) on ``gpu``:
    (result, the runtime-cache entry, its bytes); the entry and bytes are None unless warmed."""
    t0 = time.perf_counter()
    try:
        loaded = registry.create(art.backend).load(plan, device=gpu.index)
        try:
            if art.stripped:
                loaded.refit(spec.onnx)
            shapes = warmup_shapes(spec)
            dtypes = {n: dt for n, (_, dt) in model_inputs(spec.onnx).items()}
            import numpy as np

            rng = np.random.default_rng(0)
            for shape in shapes:
                loaded.run({n: rng.standard_normal(s).astype(dtypes.get(n, np.float32)) for n, s in shape.items()})
            blob = loaded.runtime_cache()
        finally:
            loaded.close()
    except RtxpackError as e:
        return WarmResult(art.id, "failed", str(e), seconds=time.perf_counter() - t0), None, None
    sha = hashlib.sha256(blob).hexdigest()
    # one entry per cache key: two GPUs may well produce the same bytes, which stay one blob
    key = json_digest({"sha256": sha, "engine": art.sha256, "gpu": gpu.name, "os": device.os,
                       "driver": gpu.driver_version})
    rc = Artifact(id=artifact_id("runtime-cache", art.model, key), kind="runtime-cache", model=art.model,
                  model_digest=art.model_digest, weights_digest=art.weights_digest, backend=art.backend,
                  backend_version=art.backend_version, compute_capabilities=(gpu.compute_capability,),
                  size=len(blob), sha256=sha, path=blob_relpath(sha), os=device.os, gpu_name=gpu.name,
                  driver_version=gpu.driver_version, min_driver_version=gpu.driver_version, engine=art.sha256,
                  precision=art.precision, cell=art.cell)
    res = WarmResult(art.id, "warmed", f"runtime cache for {gpu.name} ({len(blob)} bytes)", cache=rc.id,
                     shapes=tuple(shapes), seconds=time.perf_counter() - t0)
    return res, rc, blob


def publish_caches(repo: RepositoryWriter, caches: list[tuple[Artifact, bytes]]) -> None:
    """Blobs first, then one manifest write that replaces older caches of the same (engine, GPU, OS,
    driver), so the manifest holds one per key."""
    if not caches:
        return
    for rc, blob in caches:
        repo.add_blob_bytes(blob, expected_sha256=rc.sha256)
    new = [rc for rc, _ in caches]

    def same_key(a: Artifact, b: Artifact) -> bool:
        return (a.kind == b.kind == "runtime-cache" and a.engine == b.engine and a.gpu_name == b.gpu_name
                and a.os == b.os and a.driver_version == b.driver_version)
    with repo.lock():
        current = repo.load()
        keep = [a for a in current.artifacts if not any(same_key(a, n) for n in new)]
        current.with_artifacts(keep + new).save(repo.root)


def warm(config_path: str | Path, repo_dir: str | Path, *, device: Device | None = None,
         progress: Callable[[str], None] | None = None) -> list[WarmResult]:
    cfg = load_config(config_path)
    repo = RepositoryWriter(repo_dir)
    manifest: Manifest = repo.load()
    device = device or detect()
    if not device.gpus:
        raise BackendError("rtxpack warm needs a GPU on this node and found none",
                           fix="run it on a GPU farm node (`rtxpack detect` shows what this machine has)")
    target = Target.from_device(device)
    gpu = device.gpus[0]
    models = {m.name: m for m in cfg.models}
    results: list[WarmResult] = []
    new: list[tuple[Artifact, bytes]] = []
    for art in manifest.select(kind="engine"):
        spec = models.get(art.model)
        if spec is None:
            results.append(WarmResult(art.id, "skipped", "model not in the config"))
            continue
        problem = engine_problem(art, target)
        if problem:
            results.append(WarmResult(art.id, "skipped", problem))
            continue
        res, rc, blob = warm_engine(art, (repo.root / art.path).read_bytes(), spec, device, gpu)
        results.append(res)
        if rc is not None and blob is not None:
            new.append((rc, blob))
            if progress:
                progress(f"warmed {art.id} on {gpu.name}: {len(blob)} bytes in {res.seconds:.1f} s")
    publish_caches(repo, new)
    return results
