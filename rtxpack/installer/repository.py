"""The installer's view of a repository: an http(s) URL, a local directory or an offline bundle file.

:func:`open_repository` reads and validates the manifest and applies the trust policy
(:mod:`rtxpack.installer.trust`); :meth:`RepositoryView.fetch` brings one artifact into the local
store, verified. The manifest of every URL repository that was read successfully is kept in the
store (``state/manifests``), so ``RTXPACK_OFFLINE=1`` can still resolve against what was last seen.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.errors import ManifestError, OfflineError, StoreError
from ..core.fsutil import UnsafeFile, read_regular
from ..core.location import Location
from ..core.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from . import bundle as bundles
from .context import InstallContext, context_from
from .fetch import fetch_artifact, fetch_bytes
from .trust import open_manifest

log = logging.getLogger(__name__)


@dataclass
class RepositoryView:
    """A manifest plus where its artifacts come from (read-only: installers never write a repository).

    A bundle is opened once: the view keeps its reader until :meth:`close` (``with`` works too)."""

    location: Location
    kind: str                      # "url" | "dir" | "bundle"
    manifest: Manifest
    raw: bytes
    from_cache: bool = False       # offline: the manifest came from the local store
    bundle: bundles.BundleReader | None = None

    @property
    def spec(self) -> str:
        """How messages name the repository (no credentials)."""
        return self.location.display

    def fetch(self, artifact: Any, ctx: InstallContext, *, progress: bool | None = None,
              verify_stored: bool = False, **kw: Any) -> Path:
        """Bring one artifact of this repository into the local store (verified) and return its path.
        ``verify_stored``: a copy already in the store is re-hashed now, not trusted by its size."""
        if self.kind == "bundle":
            assert self.location.path is not None
            return bundles.install_from_bundle(self.bundle or self.location.path, artifact, store=ctx.store,
                                               verify_stored=verify_stored)
        return fetch_artifact(artifact, repo=self.location, store=ctx.store, offline=ctx.offline,
                              progress=ctx.progress if progress is None else progress, session=ctx.session,
                              verify_stored=verify_stored, **kw)

    def close(self) -> None:
        if self.bundle is not None:
            self.bundle.close()
            self.bundle = None

    def __enter__(self) -> "RepositoryView":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _manifest_cache_name(location: Location) -> str:
    return f"{hashlib.sha256(location.key.encode()).hexdigest()[:32]}.json"


def _keep_manifest_copy(ctx: InstallContext, location: Location, raw: bytes) -> None:
    """Keep the verified manifest for offline use: optional (a read-only or full store skips it)."""
    try:
        path = ctx.store.state_dir("manifests") / _manifest_cache_name(location)
        ctx.store.write_state(path, raw, "the offline copy of the manifest")
    except StoreError as e:
        if ctx.store.writable():
            log.warning("rtxpack: %s (offline use of %s will not see this version)", e.message, location.display)


def _read_directory_manifest(path: Path, spec: str) -> bytes:
    mp = path / MANIFEST_NAME
    try:
        return read_regular(mp, MAX_MANIFEST_BYTES, follow_links=True)
    except FileNotFoundError:
        raise ManifestError(f"{path} has no {MANIFEST_NAME}", fix="build it with `rtxpack build` or check --repo",
                            repo=spec) from None
    except UnsafeFile as e:
        raise ManifestError(f"{e}; refused without reading it", fix="check the repository", repo=spec,
                            path=str(mp)) from e
    except OSError as e:
        raise ManifestError(f"cannot read {mp}: {e.strerror or e}", fix="check the repository's permissions",
                            repo=spec, path=str(mp)) from e


def open_repository(repo: str | os.PathLike[str] | Location, ctx: InstallContext | None = None,
                    **context: Any) -> RepositoryView:
    """Read, validate and verify (signature, expiry, rollback) a repository's manifest.

    ``ctx`` carries the store and trust policy; without it one is made from ``context`` keywords
    (``store=``, ``trusted_keys=``, ``require_signed=``, ``offline=``...) and the environment.
    A bundle's reader stays open in the view: close it (``with open_repository(...) as view``)."""
    ctx = context_from(ctx, context)
    location = Location.parse(repo)
    spec = location.display

    def verified(raw: bytes) -> Manifest:
        # signature on the raw bytes first, then parsing, expiry, age and rollback (see trust.open_manifest)
        return open_manifest(raw, spec, ctx.trust, store=ctx.store, source=f"{spec} ({MANIFEST_NAME})",
                             now=ctx.now())[0]

    from_cache = False
    reader = None
    if location.is_http:
        kind = "url"
        if ctx.offline:
            folder = ctx.store.find_state_dir("manifests")
            cached = ctx.store.read_state(None if folder is None else folder / _manifest_cache_name(location),
                                          MAX_MANIFEST_BYTES)
            if cached is None:
                raise OfflineError(f"offline (RTXPACK_OFFLINE=1) and the manifest of {spec} was never downloaded",
                                   fix=f"run `rtxpack install --repo {spec} ...` once while online, "
                                       "or install from an offline bundle (`rtxpack install --repo FILE.tar`)",
                                   repo=spec)
            raw, from_cache = cached, True
        else:
            raw = fetch_bytes(location.join(MANIFEST_NAME), max_size=MAX_MANIFEST_BYTES, session=ctx.session,
                              offline=ctx.offline)
        manifest = verified(raw)
    else:
        path = location.path
        assert path is not None
        if path.is_dir():
            kind = "dir"
            raw = _read_directory_manifest(path, spec)
            manifest = verified(raw)
        elif path.is_file():
            kind = "bundle"
            reader = bundles.BundleReader(path, parse=verified)   # verified before any other member is read
            raw, manifest = reader.raw_manifest, reader.manifest
            held = [a for a in manifest.artifacts if reader.has(a)]
            if len(held) < len(manifest.artifacts):   # a signed manifest kept whole: resolve over what is here
                manifest = replace(manifest, artifacts=tuple(held))
        elif path.exists():
            raise ManifestError(f"repository {spec} is neither a directory nor a regular file (a bundle)",
                                fix="give an http(s) URL, a repository directory or a bundle file", repo=spec)
        else:
            raise ManifestError(f"repository {spec} does not exist",
                                fix="give an http(s) URL, a repository directory or a bundle file", repo=spec)
    if kind == "url" and not from_cache:
        _keep_manifest_copy(ctx, location, raw)
    return RepositoryView(location=location, kind=kind, manifest=manifest, raw=raw, from_cache=from_cache,
                          bundle=reader)
