"""Open a repository given as an http(s) URL, a local directory or an offline bundle file.

The manifest of every URL repository that was read successfully is kept in the local store
(``state/manifests``), so ``RTXPACK_OFFLINE=1`` can still resolve against what was last seen.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from . import config
from .errors import ManifestError, OfflineError
from .manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest

_URL = re.compile(r"^https?://", re.I)

#: hook for signature/expiry/rollback checks (set by rtxpack.trust); called with (manifest, raw, repo, options)
Verifier = Callable[[Manifest, bytes, str, dict], None]
_verifiers: list[Verifier] = []


def register_verifier(fn: Verifier) -> None:
    if fn not in _verifiers:
        _verifiers.append(fn)


def is_url(repo: str | os.PathLike[str]) -> bool:
    return isinstance(repo, str) and bool(_URL.match(repo))


def normalize(repo: str | os.PathLike[str]) -> str:
    """A repository's canonical spelling: URL without trailing slash, or an absolute path."""
    if is_url(repo):
        return str(repo).rstrip("/")
    s = str(repo)
    if s.startswith("file://"):
        s = s[len("file://"):]
    return str(Path(s).expanduser().resolve())


@dataclass
class Repository:
    """A manifest plus where its artifacts come from."""

    spec: str                      # as normalized
    kind: str                      # "url" | "dir" | "bundle"
    manifest: Manifest
    raw: bytes
    from_cache: bool = False       # offline: the manifest came from the local store

    @property
    def fetch_root(self) -> str:
        """What rtxpack.fetch takes as ``repo``: the URL or the directory."""
        return self.spec


def _manifest_cache_path(spec: str) -> Path:
    from .store import Store

    key = hashlib.sha256(spec.encode()).hexdigest()[:32]
    return Store().state_dir("manifests") / f"{key}.json"


def _remember(spec: str, raw: bytes) -> None:
    from .fsutil import atomic_write

    atomic_write(_manifest_cache_path(spec), raw)


def open_repository(repo: str | os.PathLike[str], *, offline: bool | None = None, **verify_options: Any) -> Repository:
    """Read and validate a repository's manifest (and run registered verifiers: signatures etc.)."""
    offline = config.offline() if offline is None else offline
    spec = normalize(repo)
    from_cache = False
    if is_url(spec):
        kind = "url"
        if offline:
            cached = _manifest_cache_path(spec)
            if not cached.exists():
                raise OfflineError(f"offline (RTXPACK_OFFLINE=1) and the manifest of {spec} was never downloaded",
                                   fix=f"run `rtxpack install --repo {spec} ...` once while online, "
                                       "or install from an offline bundle (`rtxpack install --repo FILE.tar`)",
                                   repo=spec)
            raw, from_cache = cached.read_bytes(), True
        else:
            from .fetch import fetch_bytes

            raw = fetch_bytes(f"{spec}/{MANIFEST_NAME}", max_size=MAX_MANIFEST_BYTES)
    else:
        path = Path(spec)
        if path.is_file():
            from .bundle import read_bundle_manifest

            kind, raw = "bundle", read_bundle_manifest(path)
        elif path.is_dir():
            kind = "dir"
            mp = path / MANIFEST_NAME
            if not mp.exists():
                raise ManifestError(f"{path} has no {MANIFEST_NAME}", fix="build it with `rtxpack build` or check --repo",
                                    repo=spec)
            if mp.stat().st_size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{mp} is larger than {MAX_MANIFEST_BYTES} bytes", fix="check the repository", repo=spec)
            raw = mp.read_bytes()
        else:
            raise ManifestError(f"repository {repo} does not exist",
                                fix="give an http(s) URL, a repository directory or a bundle file", repo=str(repo))
    manifest = Manifest.from_json(raw, source=f"{spec} ({MANIFEST_NAME})")
    for verify in _verifiers:
        verify(manifest, raw, spec, dict(verify_options))
    if kind == "bundle":
        from .bundle import bundle_member_paths

        held = bundle_member_paths(Path(spec))
        if len(held) < len(manifest.artifacts):   # a signed manifest kept whole: resolve over what is here
            manifest = replace(manifest, artifacts=tuple(a for a in manifest.artifacts if a.path in held))
    if kind == "url" and not from_cache:
        _remember(spec, raw)
    return Repository(spec=spec, kind=kind, manifest=manifest, raw=raw, from_cache=from_cache)


def fetch(repo: Repository, artifact: Any, *, progress: bool | None = None, store: Any = None, **kw: Any) -> Path:
    """Bring one artifact of ``repo`` into the local store (verified) and return its path."""
    if repo.kind == "bundle":
        from .bundle import install_from_bundle

        return install_from_bundle(Path(repo.spec), artifact, store=store)
    from .fetch import fetch_artifact

    return fetch_artifact(artifact, repo=repo.fetch_root, store=store, progress=progress, **kw)


from . import trust  # noqa: E402,F401  registers the signature / expiry / rollback verifier
