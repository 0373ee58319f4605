"""Resolve + fetch: what ``rtxpack install`` and ``rtxpack.load`` do before a backend is involved."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .device import Device, detect
from .errors import ChecksumMismatch, FetchError
from .repository import Repository, fetch, open_repository
from .resolve import Resolution, Target, no_match_error, resolve


@dataclass
class Installed:
    """The outcome of an install: what was chosen, why, and where the verified files are."""

    repository: Repository | None
    resolution: Resolution
    files: list[tuple[Any, Path]] = field(default_factory=list)   # (Artifact, store path)
    skipped: list[dict] = field(default_factory=list)             # candidates given up (corrupt, failed)

    def to_dict(self) -> dict:
        best = self.resolution.best
        return {
            "repo": self.repository.spec if self.repository else None,
            "model": self.resolution.model,
            "chosen": best.to_dict() if best else None,
            "reason": best.reason if best else None,
            "artifacts": [
                {"id": a.id, "kind": a.kind, "path": str(p), "sha256": a.sha256, "size": a.size, "backend": a.backend,
                 "backend_version": a.backend_version, "compute_capabilities": list(a.compute_capabilities),
                 "stripped": a.stripped, "gpu_name": a.gpu_name}
                for a, p in self.files
            ],
            "skipped": self.skipped,
            "resolution": self.resolution.to_dict(),
        }


def local_weights_digest(onnx: str | os.PathLike[str] | None) -> str | None:
    if onnx is None:
        return None
    p = Path(onnx)
    if not p.exists():
        from .errors import ConfigError

        raise ConfigError(f"ONNX file {p} does not exist", fix="pass the path of the model the app ships", path=str(p))
    from .digest_cache import DigestCache

    cache = DigestCache()
    digest = cache.weights(p)
    cache.save()
    return digest


def install(repo: str | os.PathLike[str] | None, model: str, *, onnx: str | os.PathLike[str] | None = None,
            backend: str | None = None, device: Device | None = None, gpu_index: int = 0,
            progress: bool | None = None, store: Any = None, offline: bool | None = None,
            **verify_options: Any) -> Installed:
    """Resolve ``model`` for this machine against ``repo`` and fetch the chosen engine and its caches.

    A candidate whose download fails verification is skipped (recorded) and the next one is tried.
    When only the JIT tier remains, nothing is fetched: the caller builds from ``onnx``.
    """
    repository = open_repository(repo, offline=offline, **verify_options) if repo is not None else None
    device = device or detect()
    target = Target.from_device(device, gpu_index)
    wd = local_weights_digest(onnx)
    res = resolve(repository.manifest if repository else None, target, model, weights_digest=wd,
                  have_onnx=onnx is not None, backend=backend)
    if not res.candidates:
        raise no_match_error(res, repo=repository.spec if repository else None)
    out = Installed(repository=repository, resolution=res)
    for cand in res.candidates:
        if cand.artifact is None:          # JIT tier: nothing to fetch; the caller builds from the ONNX
            out.resolution = Resolution(target=res.target, model=res.model, candidates=(cand,) + tuple(
                c for c in res.candidates if c is not cand), rejected=res.rejected, caches=(), notes=res.notes)
            return out
        try:
            path = fetch(repository, cand.artifact, progress=progress, store=store)
        except ChecksumMismatch as e:
            out.skipped.append({"id": cand.id, "reason": str(e)})
            continue
        out.files.append((cand.artifact, path))
        if cand is not res.candidates[0]:
            # re-resolve caches for the engine actually used
            from .resolve import match_caches

            caches = match_caches(repository.manifest, target, cand.artifact)
            res = Resolution(target=res.target, model=res.model, candidates=(cand,) + tuple(
                c for c in res.candidates if c is not cand), rejected=res.rejected, caches=caches, notes=res.notes)
            out.resolution = res
        for m in res.caches:
            if m.ok:
                try:
                    out.files.append((m.artifact, fetch(repository, m.artifact, progress=progress, store=store)))
                except FetchError as e:  # a cache is an optimisation: never fail the install for it
                    out.skipped.append({"id": m.artifact.id, "reason": str(e)})
        return out
    if out.skipped and not any(c.artifact is None for c in res.candidates):
        raise FetchError(f"every candidate for {model!r} failed verification: "
                         + "; ".join(f"{s['id']}: {s['reason']}" for s in out.skipped),
                         fix="the repository is damaged; ask its publisher to re-publish, or try another mirror",
                         model=model)
    return out
