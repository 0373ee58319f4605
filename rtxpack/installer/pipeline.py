"""The installer pipeline, written once: open -> detect -> digest -> resolve -> fetch-with-fallback.

``rtxpack resolve`` stops after :func:`prepare`; ``rtxpack install`` runs :func:`install`;
``rtxpack.load()`` (:mod:`rtxpack.installer.loader`) walks :func:`fetch_candidates` and adds only
what loading needs (backend load, refit, runtime cache, JIT).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.device import Device, describe, detect
from ..core.errors import ChecksumMismatch, FetchError, OfflineError, RtxpackError
from ..core.location import Location, redact
from ..core.manifest import Artifact
from ..core.onnxinfo import check_onnx_file
from ..core.resolve import (Candidate, Resolution, Target, match_caches, no_match_error, resolve,
                            unknown_model_error)
from .context import InstallContext, context_from
from .repository import RepositoryView, open_repository


@dataclass
class Prepared:
    """What resolving decided, before anything is fetched."""

    repository: RepositoryView | None
    target: Target
    resolution: Resolution
    weights_digest: str | None
    onnx: Path | None
    repo_error: Exception | None = None    # the repository could not be opened (a local ONNX carried on)


@dataclass
class Installed:
    """The outcome of an install: what was chosen, why, and where the verified files are."""

    repository: RepositoryView | None
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
                {"id": a.id, "kind": a.kind, "path": str(p), "sha256": a.sha256, "size": a.size, "verified": True,
                 "backend": a.backend,
                 "backend_version": a.backend_version, "compute_capabilities": list(a.compute_capabilities),
                 "stripped": a.stripped, "gpu_name": a.gpu_name}
                for a, p in self.files
            ],
            "skipped": self.skipped,
            "resolution": self.resolution.to_dict(),
        }


def check_onnx(onnx: str | os.PathLike[str] | None) -> Path | None:
    if onnx is None:
        return None
    return check_onnx_file(onnx)


def prepare(ctx: InstallContext, repo: str | os.PathLike[str] | None, model: str, *,
            onnx: str | os.PathLike[str] | None = None, backend: str | None = None, device: Device | None = None,
            gpu_index: int = 0, tolerate_repo_errors: bool = False,
            step: Callable[..., Any] | None = None) -> Prepared:
    """Open the repository, detect this machine, digest the app's ONNX and rank every candidate.

    ``tolerate_repo_errors``: a repository that cannot be reached (offline, network) is recorded
    and resolving goes on with the local ONNX only (``load()``'s JIT fallback). ``step(name, **detail)``
    is a context manager factory that times each step (``load()``'s provenance).
    """
    step = step or _no_step
    with step("detect") as rec:
        device = device or detect()
        rec["device"] = describe(device)
    repository, repo_error = None, None
    if repo is not None:
        try:
            with step("open-repository", repo=shown_repository(repo)):
                repository = open_repository(repo, ctx)
        except (OfflineError, FetchError) as e:
            if not (tolerate_repo_errors and onnx is not None):
                raise
            repo_error = e
    try:
        onnx_path = check_onnx(onnx)
        if repository is not None and onnx_path is None and model not in repository.manifest.models():
            raise unknown_model_error(model, repository.manifest.models(), repo=repository.spec)
        target = Target.from_device(device, gpu_index)     # no GPU: said after a bad --repo / --model was reported
        wd = None
        if onnx_path is not None:
            with step("weights-digest"):
                wd = ctx.weights_digest(onnx_path)
        with step("resolve") as rec:
            res = resolve(repository.manifest if repository else None, target, model, weights_digest=wd,
                          have_onnx=onnx_path is not None, backend=backend)
            rec["candidates"] = [c.id for c in res.candidates]
    except BaseException:
        if repository is not None:
            repository.close()
        raise
    return Prepared(repository, target, res, wd, onnx_path, repo_error)


def fetch_candidates(ctx: InstallContext, prepared: Prepared, *, progress: bool | None = None,
                     skip: tuple[type[Exception], ...] = (ChecksumMismatch,),
                     on_skip: Callable[[Candidate, Exception], None] | None = None,
                     step: Callable[..., Any] | None = None, verify_stored: bool = True,
                     ) -> Iterator[tuple[Candidate, Resolution, list[tuple[Artifact, Path]]]]:
    """Candidates best first, each with its engine fetched and verified in the store and the resolution
    re-centred on it (caches matched to the engine actually used). A candidate whose fetch raises one
    of ``skip`` (by default: it failed verification) goes to ``on_skip`` and the next one follows.
    ``verify_stored``: a copy already in the store is re-hashed in this run (``load()`` passes False:
    it hashes the plan's bytes as it reads them). The JIT candidate comes with no files. Raises the
    no-match ResolveError when nothing fits."""
    step = step or _no_step
    res = prepared.resolution
    if not res.candidates:
        raise no_match_error(res, repo=prepared.repository.spec if prepared.repository else None)
    for cand in res.candidates:
        rest = tuple(c for c in res.candidates if c is not cand)
        if cand.artifact is None:
            yield cand, Resolution(target=res.target, model=res.model, candidates=(cand,) + rest,
                                   rejected=res.rejected, caches=(), notes=res.notes), []
            continue
        assert prepared.repository is not None
        try:
            with step("fetch", artifact=cand.id) as rec:
                path = prepared.repository.fetch(cand.artifact, ctx, progress=progress, verify_stored=verify_stored)
                rec["path"] = str(path)
        except skip as e:
            if on_skip is not None:
                on_skip(cand, e)
            continue
        caches = res.caches if cand is res.candidates[0] else match_caches(prepared.repository.manifest, res.target,
                                                                            cand.artifact)
        yield cand, Resolution(target=res.target, model=res.model, candidates=(cand,) + rest, rejected=res.rejected,
                               caches=caches, notes=res.notes), [(cand.artifact, path)]


def install(repo: str | os.PathLike[str] | None, model: str, *, onnx: str | os.PathLike[str] | None = None,
            backend: str | None = None, device: Device | None = None, gpu_index: int = 0,
            progress: bool | None = None, ctx: InstallContext | None = None, **context: Any) -> Installed:
    """Resolve ``model`` for this machine against ``repo`` and fetch the chosen engine and its caches.

    A candidate whose download fails verification is skipped (recorded) and the next one is tried.
    When only the JIT tier remains, nothing is fetched: the caller builds from ``onnx``.
    ``context`` goes to :meth:`InstallContext.create` (store=, trusted_keys=, require_signed=, offline=).
    """
    ctx = context_from(ctx, context) if ctx is not None else context_from(None, {"progress": progress, **context})
    prepared = prepare(ctx, repo, model, onnx=onnx, backend=backend, device=device, gpu_index=gpu_index)
    try:
        return _install(ctx, prepared, model, progress)
    finally:
        if prepared.repository is not None:
            prepared.repository.close()


def _install(ctx: InstallContext, prepared: Prepared, model: str, progress: bool | None) -> Installed:
    """Every file reported comes with bytes verified in this run (a stored copy is re-hashed)."""
    out = Installed(repository=prepared.repository, resolution=prepared.resolution)
    skipped = lambda cand, e: out.skipped.append({"id": cand.id, "reason": str(e)})  # noqa: E731
    for cand, res, files in fetch_candidates(ctx, prepared, progress=progress, on_skip=skipped):
        out.resolution = res
        out.files.extend(files)
        if cand.artifact is not None:
            assert prepared.repository is not None
            for m in res.caches:
                if m.ok:
                    try:
                        out.files.append((m.artifact, prepared.repository.fetch(m.artifact, ctx, progress=progress,
                                                                                verify_stored=True)))
                    except FetchError as e:  # a cache is an optimisation: never fail the install for it
                        out.skipped.append({"id": m.artifact.id, "reason": str(e)})
        return out
    if out.skipped:
        raise FetchError(f"every candidate for {model!r} failed verification: "
                         + "; ".join(f"{s['id']}: {s['reason']}" for s in out.skipped),
                         fix="the repository is damaged; ask its publisher to re-publish, or try another mirror",
                         model=model)
    return out


def shown_repository(repo: Any) -> str:
    """A repository as provenance records it: without credentials."""
    try:
        return Location.parse(repo).display
    except RtxpackError:
        return redact(repo) if isinstance(repo, str) else "<repository>"


class _NoStep:
    def __init__(self) -> None:
        self.rec: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        return self.rec

    def __exit__(self, *exc: Any) -> None:
        return None


def _no_step(name: str, **detail: Any) -> _NoStep:
    return _NoStep()
