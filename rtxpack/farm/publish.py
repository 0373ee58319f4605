"""Publishing a repository to a static host: ``rtxpack publish --repo DIR --to URL``.

The destination is anything fsspec opens: a local or mounted folder, ``s3://bucket/prefix``
through s3fs (any S3-compatible store: AWS, R2, MinIO...), and the other stores fsspec supports
(``gs://``, ``az://``, ``sftp://``...) once their package is installed.

Order is what keeps clients safe: every blob the manifest names is uploaded first (those already
there with the same name and size are skipped: blob names are content addresses), then read back
and hashed (all, or a sample of the ones already there), and only then ``manifest.json`` (which
carries the signature) is written, last. A client therefore never sees a manifest that names a blob
not yet there. An interrupted publish leaves the old manifest in place; running it again skips
what arrived and finishes the rest. What is uploaded: the manifest and the blobs it names, nothing
else (no lock file, temp folder or orphaned blob).

Where the store keeps HTTP metadata (S3), blobs get ``Cache-Control: public, max-age=31536000,
immutable`` and the manifest a short ``max-age``, so a CDN caches blobs forever and picks up a new
manifest within a minute. A local folder keeps no headers: the web server in front sets them.
"""
from __future__ import annotations

import hashlib
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import ChecksumMismatch, ConfigError, FetchError, ManifestError
from ..core.fsutil import AtomicFile
from ..core.manifest import MANIFEST_NAME, Artifact, Manifest

BLOB_CACHE_CONTROL = "public, max-age=31536000, immutable"
MANIFEST_MAX_AGE = 60
SAMPLE = 16                   # blobs already there that --verify sample re-reads
_CHUNK = 1 << 20
#: per fsspec protocol: the keyword arguments of put_file/pipe_file that set HTTP metadata
_HEADERS: dict[str, Callable[[str, str], dict[str, str]]] = {
    "s3": lambda cache, ctype: {"CacheControl": cache, "ContentType": ctype},
}


@dataclass
class PublishReport:
    to: str
    uploaded: list[str] = field(default_factory=list)          # blob paths written by this run
    skipped: list[str] = field(default_factory=list)           # already there (same name and size)
    bytes_uploaded: int = 0
    verified: int = 0                                          # blobs read back and hashed
    manifest: str = "uploaded"                                 # uploaded | unchanged
    version: int = 0
    signed: bool = False
    cache_headers: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "uploaded": len(self.uploaded), "skipped": len(self.skipped),
                "bytes_uploaded": self.bytes_uploaded, "verified": self.verified, "manifest": self.manifest,
                "version": self.version, "signed": self.signed, "cache_headers": self.cache_headers,
                "seconds": round(self.seconds, 3), "uploaded_paths": self.uploaded}


class Destination:
    """Where a repository goes: an fsspec filesystem and a root path inside it."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as e:
            raise ConfigError("rtxpack publish needs fsspec", fix="pip install 'rtxpack[publish]'") from e
        self.url = url
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError as e:      # fsspec names the package a protocol needs (s3fs, gcsfs...)
            raise ConfigError(f"--to {url}: {e}", fix="pip install 'rtxpack[publish]' (s3fs) or the package "
                              "fsspec names for this store", value=url) from e
        except ValueError as e:
            raise ConfigError(f"--to {url}: {e}", fix="give a folder or a URL such as s3://bucket/prefix",
                              value=url) from e
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol
        self.local = protocol in ("file", "local")
        self.root = self.root.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    def headers(self, cache_control: str, content_type: str) -> dict[str, str]:
        make = _HEADERS.get(self.protocol)
        return make(cache_control, content_type) if make else {}

    def existing(self, prefix: str) -> dict[str, int]:
        """``{relative path: size}`` of the files under ``prefix`` (one listing, not one request per blob)."""
        base = self.path(prefix)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for name, info in found.items():
            if info.get("type", "file") != "file":
                continue
            rel = name[len(self.root) + 1:] if self.root and name.startswith(self.root + "/") else name
            out[rel.lstrip("/")] = int(info.get("size") or 0)
        return out

    def read(self, rel: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def put(self, src: Path, rel: str, headers: Mapping[str, str]) -> None:
        """Upload ``src`` to ``rel``; a reader sees the whole file or none (object stores write an
        object at once; a folder gets a temp file, fsync and a rename)."""
        if self.local:
            dest = Path(self.path(rel))
            with AtomicFile(dest, mode=0o644) as out, open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
                out.commit()
            return
        self.fs.put_file(str(src), self.path(rel), **headers)

    def put_bytes(self, data: bytes, rel: str, headers: Mapping[str, str]) -> None:
        if self.local:
            with AtomicFile(Path(self.path(rel)), mode=0o644) as out:
                out.write(data)
                out.commit()
            return
        self.fs.pipe_file(self.path(rel), data, **headers)

    def sha256(self, rel: str) -> tuple[str, int]:
        h, n = hashlib.sha256(), 0
        with self.fs.open(self.path(rel), "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass


def publish(repo: str | os.PathLike[str], to: str, *, verify: str = "sample", jobs: int = 4,
            storage_options: Mapping[str, Any] | None = None, manifest_max_age: int = MANIFEST_MAX_AGE,
            force: bool = False, progress: Callable[[str], None] | None = None) -> PublishReport:
    """Upload the repository directory ``repo`` to ``to`` (see the module doc for the order and checks).

    ``verify``: ``all`` re-reads every blob, ``sample`` the ones uploaded now plus up to
    :data:`SAMPLE` of those already there, ``none`` nothing. Without ``force`` a destination whose
    manifest.json is not an rtxpack manifest, or is a signed one of a newer or the same version
    (installers that saw it refuse an older one as a rollback), is refused before anything is written.
    """
    if verify not in ("all", "sample", "none"):
        raise ConfigError(f"--verify {verify!r}: use all, sample or none", fix="pass --verify all|sample|none",
                          value=verify, option="--verify")
    t0 = time.monotonic()
    say = progress or (lambda s: None)
    src = Path(repo)
    raw = (src / MANIFEST_NAME).read_bytes()
    manifest = Manifest.from_json(raw, source=str(src / MANIFEST_NAME))
    blobs = _local_blobs(src, manifest)
    dest = Destination(to, storage_options)
    report = PublishReport(to=to, version=manifest.version, signed=bool(manifest.signatures),
                           cache_headers=bool(dest.headers("", "")))

    remote_raw = dest.read(MANIFEST_NAME)
    if remote_raw == raw:
        report.manifest = "unchanged"
    elif remote_raw is not None and not force:
        _check_not_older(remote_raw, manifest, to)
    if dest.local:
        _drop_stale_temps(Path(dest.path("blobs")))

    have = dest.existing("blobs")
    todo = [(rel, p, a) for rel, (p, a) in blobs.items() if have.get(rel) != a.size]
    report.skipped = sorted(rel for rel in blobs if have.get(rel) == blobs[rel][1].size)
    headers = dest.headers(BLOB_CACHE_CONTROL, "application/octet-stream")
    say(f"{len(blobs)} blobs: {len(report.skipped)} already at {to}, {len(todo)} to upload")

    def upload(item: tuple[str, Path, Artifact]) -> tuple[str, int]:
        rel, path, art = item
        dest.put(path, rel, headers)
        return rel, art.size

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for rel, size in pool.map(upload, todo):
            done += 1
            report.uploaded.append(rel)
            report.bytes_uploaded += size
            say(f"[{done}/{len(todo)}] uploaded {rel} ({size} bytes)")

    check = _to_verify(verify, report, blobs)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for rel, problem in pool.map(lambda r: (r, _verify_blob(dest, r, blobs[r][1])), check):
            if problem:
                dest.remove(rel)          # the next run uploads it again
                a = blobs[rel][1]
                raise ChecksumMismatch(f"{to}: {rel} read back wrong ({problem}); the manifest was not published",
                                       fix="run `rtxpack publish` again (the bad copy was removed); if it repeats, "
                                           "check the store", path=rel, url=to, artifact=a.id,
                                       expected_sha256=a.sha256)
            report.verified += 1
    if check:
        say(f"verified {report.verified} blob(s) by reading them back")

    if report.manifest != "unchanged":
        dest.put_bytes(raw, MANIFEST_NAME,
                       dest.headers(f"public, max-age={int(manifest_max_age)}", "application/json"))
        if dest.read(MANIFEST_NAME) != raw:
            raise FetchError(f"{to}: {MANIFEST_NAME} read back differs from what was written",
                             fix="run `rtxpack publish` again; check the store", url=to)
        say(f"published {MANIFEST_NAME} (version {manifest.version}) at {to}")
    report.seconds = time.monotonic() - t0
    return report


def _local_blobs(src: Path, manifest: Manifest) -> dict[str, tuple[Path, Artifact]]:
    """Every blob the manifest names, checked present with its size (a repository missing one is
    not published at all)."""
    out: dict[str, tuple[Path, Artifact]] = {}
    for a in manifest:
        p = src / a.path
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise ManifestError(f"{src}: artifact {a.id} names {a.path}, which is missing; nothing was published",
                                fix="rebuild or re-merge the repository", repo=str(src), artifact=a.id) from None
        if size != a.size:
            raise ChecksumMismatch(f"{p}: {size} bytes, the manifest says {a.size}; nothing was published",
                                   fix="rebuild the repository; the blob is corrupt", path=str(p), artifact=a.id)
        out[a.path] = (p, a)
    return out


def _check_not_older(remote_raw: bytes, manifest: Manifest, to: str) -> None:
    try:
        remote = Manifest.from_json(remote_raw, source=f"{to}/{MANIFEST_NAME}")
    except ManifestError as e:    # someone else's manifest.json (a web app's?): it is not ours to replace
        raise ManifestError(f"{to}/{MANIFEST_NAME} exists and is not an rtxpack manifest ({e.message}); "
                            "not overwriting it", fix="publish to a folder or prefix of its own, or pass --force "
                            "to replace it", repo=to) from e
    if not remote.signatures:
        return                    # installers keep rollback state for signed manifests only
    if remote.version >= manifest.version:
        why = ("newer" if remote.version > manifest.version else "the same version with other content")
        raise ManifestError(f"{to} already has manifest version {remote.version}, {why} than this repository's "
                            f"version {manifest.version}; installers that saw it would refuse this one as a rollback",
                            fix="sign the repository again (`rtxpack sign` bumps the version past it), or pass "
                                "--force to publish it anyway", repo=to)


def _to_verify(mode: str, report: PublishReport, blobs: Mapping[str, tuple[Path, Artifact]]) -> list[str]:
    if mode == "none":
        return []
    if mode == "all":
        return sorted(blobs)
    rest = report.skipped
    return report.uploaded + random.sample(rest, min(SAMPLE, len(rest)))


def _verify_blob(dest: Destination, rel: str, a: Artifact) -> str | None:
    try:
        sha, size = dest.sha256(rel)
    except FileNotFoundError:
        return "it is not there"
    if size != a.size:
        return f"{size} bytes, expected {a.size}"
    if sha != a.sha256:
        return f"sha256 {sha}, expected {a.sha256}"
    return None


def _drop_stale_temps(blobs: Path) -> None:
    """Temp files a killed publish left in a folder destination (AtomicFile names start with '.')."""
    if not blobs.is_dir():
        return
    for p in blobs.rglob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass
