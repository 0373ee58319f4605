"""The installer's view of a repository: an http(s) URL, a local directory or an offline bundle file.

:func:`open_repository` reads and validates the manifest and applies the trust policy
(:mod:`rtxpack.installer.trust`); :meth:`RepositoryView.fetch` brings one artifact into the local
store, verified. The manifest of every URL repository that was read successfully is kept in the
store (``state/manifests``), so ``RTXPACK_OFFLINE=1`` can still resolve against what was last seen.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import ManifestError, OfflineError
from ..core.fsutil import atomic_write
from ..core.location import Location
from ..core.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from . import bundle as bundles
from .context import InstallContext, context_from
from .fetch import fetch_artifact, fetch_bytes
from .trust import verify_repository



@dataclass
class RepositoryView:
    """A manifest plus where its artifacts come from (read-only: installers never write a repository)."""

    location: Location
    kind: str                      # "url" | "dir" | "bundle"
    manifest: Manifest
    raw: bytes
    from_cache: bool = False       # offline: the manifest came from the local store

    @property
    def spec(self) -> str:
        """How messages name the repository (no credentials)."""
        return self.location.display

    def fetch(self, artifact: Any, ctx: InstallContext, *, progress: bool | None = None, **kw: Any) -> Path:
        """Bring one artifact of this repository into the local store (verified) and return its path."""
        if self.kind == "bundle":
            assert self.location.path is not None
            return bundles.install_from_bundle(self.location.path, artifact, store=ctx.store)
        return fetch_artifact(artifact, repo=self.location, store=ctx.store, offline=ctx.offline,
                              progress=ctx.progress if progress is None else progress, session=ctx.session, **kw)


def _manifest_cache_path(ctx: InstallContext, location: Location) -> Path:
    key = hashlib.sha256(location.key.encode()).hexdigest()[:32]
    return ctx.store.state_dir("manifests") / f"{key}.json"


def open_repository(repo: str | os.PathLike[str] | Location, ctx: InstallContext | None = None,
                    **context: Any) -> RepositoryView:
    """Read, validate and verify (signature, expiry, rollback) a repository's manifest.

    ``ctx`` carries the store and trust policy; without it one is made from ``context`` keywords
    (``store=``, ``trusted_keys=``, ``require_signed=``, ``offline=``...) and the environment."""
    ctx = context_from(ctx, context)
    location = Location.parse(repo)
    spec = location.display
    from_cache = False
    if location.is_http:
        kind = "url"
        cached = _manifest_cache_path(ctx, location)
        if ctx.offline:
            if not cached.exists():
                raise OfflineError(f"offline (RTXPACK_OFFLINE=1) and the manifest of {spec} was never downloaded",
                                   fix=f"run `rtxpack install --repo {spec} ...` once while online, "
                                       "or install from an offline bundle (`rtxpack install --repo FILE.tar`)",
                                   repo=spec)
            raw, from_cache = cached.read_bytes(), True
        else:
            raw = fetch_bytes(location.join(MANIFEST_NAME), max_size=MAX_MANIFEST_BYTES, session=ctx.session,
                              offline=ctx.offline)
    else:
        path = location.path
        assert path is not None
        if path.is_file():
            kind, raw = "bundle", bundles.read_bundle_manifest(path)
        elif path.is_dir():
            kind = "dir"
            mp = path / MANIFEST_NAME
            if not mp.exists():
                raise ManifestError(f"{path} has no {MANIFEST_NAME}", fix="build it with `rtxpack build` or check --repo",
                                    repo=spec)
            if mp.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{mp} is larger than {MAX_MANIFEST_BYTES} bytes", fix="check the repository",
                                    repo=spec)
            raw = mp.read_bytes()
        else:
            raise ManifestError(f"repository {spec} does not exist",
                                fix="give an http(s) URL, a repository directory or a bundle file", repo=spec)
    manifest = Manifest.from_json(raw, source=f"{spec} ({MANIFEST_NAME})")
    verify_repository(manifest, spec, ctx.trust, store=ctx.store, now=ctx.now())
    if kind == "bundle":
        assert location.path is not None
        held = bundles.bundle_member_paths(location.path)
        if len(held) < len(manifest.artifacts):   # a signed manifest kept whole: resolve over what is here
            manifest = replace(manifest, artifacts=tuple(a for a in manifest.artifacts if a.path in held))
    if kind == "url" and not from_cache:
        atomic_write(_manifest_cache_path(ctx, location), raw)
    return RepositoryView(location=location, kind=kind, manifest=manifest, raw=raw, from_cache=from_cache)
