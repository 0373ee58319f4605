"""Build manifests in tests and benchmarks without touching disk."""
from __future__ import annotations

import hashlib
from typing import Any

from rtxpack.core.manifest import Artifact, Manifest, artifact_id, blob_relpath

WD = "ab" * 32
MD = "cd" * 32


def sha(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def engine(model: str = "m", ccs: tuple[str, ...] = ("8.9",), *, backend: str = "tensorrt-rtx",
           version: str = "1.7.1.116", size: int = 1000, **kw: Any) -> Artifact:
    digest = sha(model, ccs, backend, version, size, sorted(kw.items()))
    fields: dict[str, Any] = dict(id=artifact_id("engine", model, digest), kind="engine", model=model, model_digest=MD,
                                  weights_digest=WD, backend=backend, backend_version=version,
                                  compute_capabilities=tuple(ccs), size=size, sha256=digest, path=blob_relpath(digest))
    fields.update(kw)
    return Artifact(**fields)


def runtime_cache(eng: Artifact, gpu_name: str, cc: str, *, os: str | None = "linux", driver: str = "13.0",
                  **kw: Any) -> Artifact:
    digest = sha("rc", eng.sha256, gpu_name, cc, os, driver)
    fields: dict[str, Any] = dict(id=artifact_id("runtime-cache", eng.model, digest), kind="runtime-cache",
                                  model=eng.model, model_digest=eng.model_digest, weights_digest=eng.weights_digest,
                                  backend=eng.backend, backend_version=eng.backend_version, compute_capabilities=(cc,),
                                  size=100, sha256=digest, path=blob_relpath(digest), gpu_name=gpu_name, os=os,
                                  driver_version=driver, engine=eng.sha256)
    fields.update(kw)
    return Artifact(**fields)


def manifest(*artifacts: Artifact, **kw: Any) -> Manifest:
    return Manifest(artifacts=tuple(artifacts), **kw)
