"""The published repository: a static directory any HTTP server can serve.

    manifest.json                  rtxpack manifest v1 (rewritten under ``.rtxpack.lock``)
    blobs/sha256/ab/abcdef...      content-addressed artifacts (temp file + os.replace)

Blobs are written before the manifest names them, and the manifest is read-merged-written under
a file lock, so parallel builds (threads, processes, or several ``rtxpack build`` runs) into one
repository never lose entries and a reader never sees an entry without its blob.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import filelock

from ..core.digest import file_hasher
from ..core.errors import ChecksumMismatch, ManifestError
from ..core.fsutil import AtomicFile, atomic_write, replace_into
from ..core.manifest import MANIFEST_NAME, Artifact, Manifest, blob_relpath, utcnow_iso

LOCK_NAME = ".rtxpack.lock"
_CHUNK = 1 << 20


class RepositoryWriter:
    """A repository directory the farm writes (blobs first, then the manifest, under one lock)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RepositoryWriter({str(self.root)!r})"

    # ---- reading ------------------------------------------------------------------------------
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def exists(self) -> bool:
        return self.manifest_path().is_file()

    def load(self) -> Manifest:
        """The manifest, or an empty one when the repository is new."""
        if not self.exists():
            return Manifest(created=None)
        return Manifest.load(self.manifest_path())

    def cells(self) -> dict[str, Artifact]:
        """Built cells: ``{cell id: artifact}``, counting only those whose blob is present."""
        out = {}
        for a in self.load():
            if a.cell and a.kind == "engine" and (self.root / a.path).is_file():
                out[a.cell] = a
        return out

    def lock(self) -> filelock.FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(str(self.root / LOCK_NAME))

    # ---- writing ------------------------------------------------------------------------------
    def tmp_dir(self) -> Path:
        d = self.root / ".tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add_blob_file(self, src: Path, *, move: bool = False) -> tuple[str, int]:
        """Put ``src`` in ``blobs/`` by content; returns (sha256, size). ``move`` consumes ``src``."""
        h = file_hasher(src)
        size = Path(src).stat().st_size
        sha = h.hexdigest()
        dest = self.root / blob_relpath(sha)
        if dest.is_file() and dest.stat().st_size == size:
            if move:
                src.unlink()
            return sha, size
        dest.parent.mkdir(parents=True, exist_ok=True)
        if move and src.parent.resolve() == self.tmp_dir().resolve():
            replace_into(src, dest, mode=0o644)
        else:
            copy_verified(src, dest, sha, size)
            if move:
                src.unlink()
        return sha, size

    def add_blob_bytes(self, data: bytes, *, expected_sha256: str | None = None) -> tuple[str, int]:
        """Put ``data`` in ``blobs/`` by content; returns (sha256, size). ``expected_sha256``: what the
        sender hashed (bytes that came over the network); a mismatch writes nothing."""
        sha = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise ChecksumMismatch(f"{len(data)} bytes received with sha256 {sha}, the sender hashed {expected_sha256}",
                                   fix="build the cell again; the transfer corrupted it", expected_sha256=expected_sha256,
                                   actual_sha256=sha, actual_size=len(data))
        dest = self.root / blob_relpath(sha)
        if not (dest.is_file() and dest.stat().st_size == len(data)):
            atomic_write(dest, data)
        return sha, len(data)

    def add_artifacts(self, artifacts: Iterable[Artifact], *, project: dict | None = None) -> Manifest:
        """Merge entries into manifest.json under the lock (ManifestError on a conflicting id)."""
        artifacts = list(artifacts)
        with self.lock():
            current = self.load()
            incoming = Manifest(artifacts=tuple(artifacts))
            merged = current.merge(incoming)
            changes = {"created": utcnow_iso(), "version": current.version + 1 if current.artifacts else 1}
            if project and not merged.project:
                changes["project"] = project
            merged = merged.with_artifacts(merged.artifacts, **changes)
            merged.save(self.manifest_path())
            return merged


def copy_verified(src: Path, dest: Path, sha256: str, size: int) -> None:
    """Copy ``src`` to ``dest`` atomically, checking size and sha256 before the rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.stat().st_size == size:
        return
    with AtomicFile(dest, hash=True) as out, open(src, "rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
        if out.size != size or out.sha256 != sha256:
            raise ChecksumMismatch(f"{src}: expected {size} bytes with sha256 {sha256}, got {out.size} bytes with "
                                   f"{out.sha256}", fix="rebuild that repository part; its blob is corrupt",
                                   path=str(src), expected_sha256=sha256, actual_sha256=out.sha256)
        out.commit()


def merge_repositories(parts: Sequence[str | os.PathLike[str]], dest: str | os.PathLike[str]) -> Manifest:
    """Merge repositories built on different machines into ``dest`` (which may already exist).

    All manifests are merged in memory first, so a conflict (same id, different content) is
    refused before anything is copied; then every blob is copied with its sha256 verified, and
    only then is the manifest written.
    """
    repo = RepositoryWriter(dest)
    manifests = []
    for p in parts:
        part = RepositoryWriter(p)
        if not part.exists():
            raise ManifestError(f"{p}: no manifest.json; not an rtxpack repository part",
                                fix="pass the directories `rtxpack build --repo` wrote", path=str(p))
        manifests.append((part, part.load()))
    with repo.lock():
        merged = repo.load()
        for part, m in manifests:
            try:
                merged = merged.merge(m)
            except ManifestError as e:
                raise ManifestError(f"merging {part.root}: {e.message}", fix=e.fix, path=str(part.root),
                                    artifact=e.artifact, differing_fields=e.differing_fields) from e
        for part, m in manifests:
            for a in m:
                src = part.root / a.path
                if not src.is_file():
                    raise ManifestError(f"{part.root}: artifact {a.id} names {a.path}, which is missing",
                                        fix="rebuild that part; its blob was not uploaded", path=str(part.root), artifact=a.id)
                copy_verified(src, repo.root / a.path, a.sha256, a.size)
        project = merged.project or next((m.project for _, m in manifests if m.project), None)
        merged = merged.with_artifacts(merged.artifacts, created=utcnow_iso(), project=project)
        merged.save(repo.manifest_path())
        return merged
