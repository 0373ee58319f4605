"""Offline bundles: one tar (plain or gzip) holding a manifest and the blobs it lists.

Layout inside the archive (no directory entries)::

    manifest.json                  only the selected artifacts (same schema as a repository)
    blobs/sha256/ab/abcdef...      each listed artifact, at its manifest ``path``

Reading is defensive, because a bundle is a file from somewhere else: before any byte is
written, every member is checked and :class:`BundleError` names the member and the problem for
absolute paths, ``..``, symbolic or hard links, device files / fifos / directories, members the
manifest does not list, duplicates, members larger than declared and totals beyond the
manifest's. Bytes are then streamed with a hard cap of the declared size and must hash to the
declared sha256 before they are moved into place (temp file + ``os.replace``).

Installer API (used by :mod:`rtxpack.installer.repository` for ``install --repo bundle.tar``;
bundles are written by :mod:`rtxpack.farm.bundle`):

* :func:`read_bundle_manifest(path) -> bytes` -- the validated manifest.json bytes.
* :func:`install_from_bundle(path, artifact, store=None) -> Path` -- copy one member into the
  local store by sha256 (verified), no network, no extraction of anything else.
* :func:`bundle_source(path, store=None) -> Path` -- alternatively, a directory repository
  (safe extraction into the store's ``state/bundles/``) that ``fetch_artifact(a, repo=dir)``
  or ``open_repository(dir)`` can use like any local repository.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import gzip
import tarfile
import zlib
import tempfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

import filelock

from ..core.errors import BundleError, ChecksumMismatch, ManifestError
from ..core.fsutil import AtomicFile, atomic_write
from ..core.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Artifact, Manifest
from .store import Store

_CHUNK = 1 << 20
#: members beyond the listed artifacts that a bundle may hold (just manifest.json)
_EXTRA_MEMBERS = 1


# ---- reading -----------------------------------------------------------------------------------
def _check_name(name: str, where: str) -> None:
    p = PurePosixPath(name)
    if not name or "\0" in name or "\\" in name:
        raise BundleError(f"{where}: member {name!r} has an empty name, a NUL or a backslash",
                          fix="do not use this bundle; recreate it with `rtxpack bundle`", member=name)
    if name.startswith("/") or p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{where}: member {name!r} is an absolute path",
                          fix="do not use this bundle; recreate it with `rtxpack bundle`", member=name)
    if any(part == ".." for part in p.parts):
        raise BundleError(f"{where}: member {name!r} contains '..' (it would escape the destination)",
                          fix="do not use this bundle; recreate it with `rtxpack bundle`", member=name)


def _kind(ti: tarfile.TarInfo) -> str:
    if ti.issym():
        return f"a symbolic link (-> {ti.linkname!r})"
    if ti.islnk():
        return f"a hard link (-> {ti.linkname!r})"
    if ti.ischr() or ti.isblk():
        return "a device file"
    if ti.isfifo():
        return "a fifo"
    if ti.isdir():
        return "a directory"
    return f"an unsupported member type {ti.type!r}"


class BundleReader:
    """An opened, validated bundle: ``manifest`` plus streaming access to each listed artifact."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        where = str(self.path)
        try:
            self._tar = tarfile.open(self.path, mode="r:*")
        except tarfile.ReadError as e:   # its message lists every decompressor tried, over several lines
            raise BundleError(f"{where}: not an rtxpack bundle (neither a tar nor a tar.gz archive) and not a "
                              "repository directory", fix="pass a file written by `rtxpack bundle` (.tar or .tar.gz), "
                              "a repository directory or an http(s) URL", path=where) from e
        except (tarfile.TarError, OSError, EOFError) as e:
            raise BundleError(f"{where}: not a readable tar bundle ({e})",
                              fix="pass a file written by `rtxpack bundle` (.tar or .tar.gz)", path=where) from e
        try:
            self.manifest, self.raw_manifest, self._members = self._validate(where)
        except BaseException:
            self._tar.close()
            raise

    def _validate(self, where: str) -> tuple[Manifest, bytes, dict[str, tarfile.TarInfo]]:
        members: dict[str, tarfile.TarInfo] = {}
        try:
            infos = []
            for ti in self._tar:
                infos.append(ti)
                _check_name(ti.name, where)
                if not ti.isreg():
                    raise BundleError(f"{where}: member {ti.name!r} is {_kind(ti)}; bundles hold regular files only",
                                      fix="do not use this bundle; recreate it with `rtxpack bundle`", member=ti.name)
                name = str(PurePosixPath(ti.name))
                if name in members:
                    raise BundleError(f"{where}: member {name!r} appears twice",
                                      fix="do not use this bundle; recreate it with `rtxpack bundle`", member=name)
                members[name] = ti
        except (tarfile.TarError, EOFError, zlib.error) as e:   # a .tar.gz cut short fails while listing
            raise BundleError(f"{where}: corrupt or truncated tar ({e})", fix="download or copy the bundle again",
                              path=where) from e
        if self._tar.fileobj is not None and not isinstance(self._tar.fileobj, gzip.GzipFile):
            # a plain tar cut short still lists its headers; its last member's bytes are missing
            size = self.path.stat().st_size
            short = next((ti for ti in members.values() if ti.offset_data + ti.size > size), None)
            if short is not None:
                raise BundleError(f"{where}: truncated: member {short.name!r} needs bytes up to "
                                  f"{short.offset_data + short.size}, the file has {size}",
                                  fix="download or copy the bundle again", path=where, member=short.name)
        mi = members.get(MANIFEST_NAME)
        if mi is None:
            raise BundleError(f"{where}: no {MANIFEST_NAME} inside", fix="pass a file written by `rtxpack bundle`",
                              path=where)
        if mi.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{where}: member {MANIFEST_NAME!r} is {mi.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                              fix="do not use this bundle", member=MANIFEST_NAME)
        f = self._tar.extractfile(mi)
        assert f is not None
        raw = f.read(MAX_MANIFEST_BYTES + 1)
        try:
            manifest = Manifest.from_json(raw, source=f"{where}:{MANIFEST_NAME}")
        except ManifestError as e:
            raise BundleError(f"{where}: its manifest is invalid: {e.args[0]}", fix="recreate the bundle",
                              member=MANIFEST_NAME) from e
        declared = {a.path: a for a in manifest}
        for name, ti in members.items():
            if name == MANIFEST_NAME:
                continue
            a = declared.get(name)
            if a is None:
                raise BundleError(f"{where}: member {name!r} is not listed in the bundle's manifest",
                                  fix="do not use this bundle; recreate it with `rtxpack bundle`", member=name)
            if ti.size > a.size:
                raise BundleError(f"{where}: member {name!r} is {ti.size} bytes, larger than the {a.size} declared "
                                  f"for {a.id}", fix="do not use this bundle; recreate it", member=name)
        if len(members) > len(declared) + _EXTRA_MEMBERS:
            raise BundleError(f"{where}: {len(members)} members for {len(declared)} artifacts",
                              fix="do not use this bundle", path=where)
        total = sum(ti.size for n, ti in members.items() if n != MANIFEST_NAME)
        limit = sum(a.size for a in manifest)
        if total > limit:
            raise BundleError(f"{where}: members hold {total} bytes, beyond the {limit} its manifest declares",
                              fix="do not use this bundle", path=where)
        return manifest, raw, members

    # -- access ----------------------------------------------------------------------------------
    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._tar.close()

    def has(self, artifact: Artifact) -> bool:
        return artifact.path in self._members

    def _member(self, artifact: Any) -> tarfile.TarInfo:
        ti = self._members.get(str(artifact.path))
        mine = next((a for a in self.manifest if a.path == artifact.path), None)
        if ti is None or mine is None:
            raise BundleError(f"{self.path}: artifact {getattr(artifact, 'id', artifact.path)} is not in this bundle",
                              fix="create a bundle that includes it (`rtxpack bundle --model ... --cc ...`)",
                              member=str(artifact.path))
        if mine.sha256 != artifact.sha256 or mine.size != artifact.size:
            raise BundleError(f"{self.path}: member {artifact.path!r} is declared with a different sha256/size",
                              fix="use the bundle's own manifest", member=str(artifact.path))
        return ti

    def copy_to(self, artifact: Any, out: IO[bytes]) -> str:
        """Stream one artifact into ``out`` (capped at its declared size); returns the sha256 (verified)."""
        ti = self._member(artifact)
        f = self._tar.extractfile(ti)
        assert f is not None
        h, n = hashlib.sha256(), 0
        while chunk := f.read(min(_CHUNK, artifact.size + 1 - n)):
            n += len(chunk)
            if n > artifact.size:
                raise BundleError(f"{self.path}: member {ti.name!r} is larger than the {artifact.size} bytes declared",
                                  fix="do not use this bundle", member=ti.name)
            h.update(chunk)
            out.write(chunk)
        if n != artifact.size or h.hexdigest() != artifact.sha256:
            raise ChecksumMismatch(f"{self.path}: member {ti.name!r} has {n} bytes with sha256 {h.hexdigest()}, "
                                   f"declared {artifact.size} bytes with {artifact.sha256}",
                                   fix="the bundle is corrupt: copy it again or recreate it", member=ti.name,
                                   expected_sha256=artifact.sha256, actual_sha256=h.hexdigest())
        return h.hexdigest()

    def extract_to(self, artifact: Any, dest: Path) -> Path:
        with AtomicFile(dest) as out:
            self.copy_to(artifact, out)
            return out.commit()


def open_bundle(path: str | os.PathLike[str]) -> tuple[Manifest, BundleReader]:
    """Validate a bundle and return (its manifest, a reader). Close the reader when done."""
    reader = BundleReader(path)
    return reader.manifest, reader


def bundle_member_paths(path: str | os.PathLike[str]) -> set[str]:
    """Repository paths of the artifacts a bundle holds (a signed manifest may list more)."""
    with BundleReader(path) as r:
        return {a.path for a in r.manifest if r.has(a)}


def read_bundle_manifest(path: str | os.PathLike[str]) -> bytes:
    """The bundle's manifest.json bytes, after checking every member (see the module docstring)."""
    with BundleReader(path) as r:
        return r.raw_manifest


def extract_bundle(path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Manifest:
    """Safely extract a bundle into ``dest`` as a directory repository (manifest.json + blobs)."""
    d = Path(dest)
    with BundleReader(path) as r:
        for a in r.manifest:
            target = d.joinpath(*PurePosixPath(a.path).parts)
            if d.resolve() not in target.resolve().parents:  # defence in depth after _check_name
                raise BundleError(f"{path}: member {a.path!r} would land outside {d}", fix="do not use this bundle",
                                  member=a.path)
            r.extract_to(a, target)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / MANIFEST_NAME, r.raw_manifest)
        return r.manifest


def install_from_bundle(path: str | os.PathLike[str], artifact: Any, *, store: Store | None = None) -> Path:
    """Copy one artifact from the bundle into the local store (by sha256, verified); its store path.

    No network: this is what ``rtxpack install --repo bundle.tar`` uses, also with RTXPACK_OFFLINE=1.
    """
    store = store if store is not None else Store()
    if store.has(artifact.sha256, artifact.size):
        p = store.get(artifact.sha256)
        if p is not None:
            return p
    with store.lock(artifact.sha256):
        if store.has(artifact.sha256, artifact.size):
            p = store.get(artifact.sha256)
            if p is not None:
                return p
        store.ensure_free_space(artifact.size, what=str(getattr(artifact, "id", artifact.sha256)))
        meta = {k: str(getattr(artifact, k)) for k in ("id", "model", "kind") if getattr(artifact, k, None)}
        meta["source"] = f"bundle:{path}"
        with store.new_blob(artifact.sha256) as out, BundleReader(path) as r:
            r.copy_to(artifact, out)
            return store.commit_blob(out, artifact.sha256, artifact.size, meta=meta)


def bundle_source(path: str | os.PathLike[str], *, store: Store | None = None) -> Path:
    """A local directory repository holding the bundle's contents (extracted safely, once).

    The directory lives in the store (``state/bundles/<key>``), keyed by the bundle's path, size
    and mtime, so repeated installs from the same bundle reuse it.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = hashlib.sha256(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    store = store if store is not None else Store()
    base = store.state_dir("bundles")
    dest = base / key
    with filelock.FileLock(str(base / f"{key}.lock")):
        if (dest / MANIFEST_NAME).is_file():
            return dest
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=base))
        try:
            extract_bundle(p, work)
            os.replace(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return dest


__all__ = ["BundleReader", "bundle_source", "extract_bundle", "install_from_bundle", "open_bundle",
           "read_bundle_manifest"]
