"""Offline bundles: one tar (plain or gzip) holding a manifest and the blobs it lists.

Layout inside the archive (no directory entries)::

    manifest.json                  the first member: only the selected artifacts (same schema as a
                                   repository), or a signed repository's manifest kept whole
    blobs/sha256/ab/abcdef...      each listed artifact, at its manifest ``path``

Reading is defensive, because a bundle is a file from somewhere else. The file is opened once
(:class:`BundleReader`; one install keeps one reader). ``manifest.json`` must come first, so
that every later member is checked against what the manifest declares *before* any work is done
for it: :class:`BundleError` names the member and the problem for absolute paths, ``..``,
symbolic or hard links, device files / fifos / directories, members the manifest does not list,
duplicates, more members than listed artifacts, members larger than declared and totals beyond
the manifest's. The archive stream itself is capped: bytes read or skipped (decompressed, for
.tar.gz) can never exceed the manifest plus the declared artifact sizes plus header slack, so a
gzip bomb, a huge PAX header or a lying size header stops at the cap; a truncated or malformed
archive (plain or gzip, headers included) is one BundleError. Bytes are then streamed with a
hard cap of the declared size and must hash to the declared sha256 before they are moved into
place (temp file + ``os.replace``).

Installer API (used by :mod:`rtxpack.installer.repository` for ``install --repo bundle.tar``;
bundles are written by :mod:`rtxpack.farm.bundle`):

* :class:`BundleReader(path, parse=...)` -- the validated bundle; ``parse(raw) -> Manifest`` lets
  the caller verify the manifest's signature on its raw bytes before it is parsed.
* :func:`read_bundle_manifest(path) -> bytes` -- the validated manifest.json bytes.
* :func:`install_from_bundle(reader_or_path, artifact, store=None) -> Path` -- copy one member
  into the local store by sha256 (verified), no network, no extraction of anything else.
* :func:`bundle_source(path, store=None) -> Path` -- alternatively, a directory repository
  (safe extraction into the store's ``state/bundles/``) that ``fetch_artifact(a, repo=dir)``
  or ``open_repository(dir)`` can use like any local repository.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable

from ..core.errors import BundleError, ChecksumMismatch, ManifestError
from ..core.fsutil import AtomicFile, UnsafeFile, atomic_write, open_regular, remove_any, write_error
from ..core.lockfile import LockFile
from ..core.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Artifact, Manifest
from .store import STATE_LOCK_SECONDS, Store

_CHUNK = 1 << 20
#: members beyond the listed artifacts that a bundle may hold (just manifest.json)
_EXTRA_MEMBERS = 1
#: tar header bytes allowed per member (a 512-byte header, PAX records, long names)
_HEADER_SLACK = 16 << 10
#: errors of a damaged archive, raised from inside tarfile / gzip / zlib
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, UnicodeDecodeError)
_FIX_RECREATE = "do not use this bundle; recreate it with `rtxpack bundle`"


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


class _OverCap(Exception):
    """The archive stream would go past what the manifest allows."""


class _Capped(io.RawIOBase):
    """A read-only view of the archive stream (the file, or its gzip decompression) that refuses
    to read or seek past ``cap`` bytes: tarfile never inflates or buffers more than allowed."""

    def __init__(self, f: Any, cap: int) -> None:
        self.f, self.cap, self.pos = f, cap, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset if whence == 1 else None
        if target is None:
            raise io.UnsupportedOperation("seek from the end of a bundle stream")
        if target > self.cap:
            raise _OverCap(target)
        self.pos = self.f.seek(target)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.cap - self.pos + 1
        if self.pos + n > self.cap:
            if self.pos >= self.cap:
                raise _OverCap(self.pos + n)
            n = self.cap - self.pos + 1    # one byte over: the next read raises
        data = self.f.read(n)
        self.pos += len(data)
        if self.pos > self.cap:
            raise _OverCap(self.pos)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _round_block(n: int) -> int:
    return (n + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE


class BundleReader:
    """An opened, validated bundle: ``manifest`` plus streaming access to each listed artifact.

    ``parse(raw) -> Manifest`` turns the manifest bytes into a Manifest (default
    :meth:`Manifest.from_json`); the installer passes its signature check here, so a manifest is
    verified on its raw bytes before it is parsed and before any other member is looked at."""

    def __init__(self, path: str | os.PathLike[str], *, parse: Callable[[bytes], Manifest] | None = None) -> None:
        self.path = Path(path)
        where = str(self.path)
        try:
            fd = open_regular(self.path, follow_links=True)
        except (UnsafeFile, OSError) as e:
            raise BundleError(f"{where}: cannot open the bundle ({e})", fix="pass a bundle file (.tar or .tar.gz)",
                              path=where) from e
        self._file = os.fdopen(fd, "rb")
        self._size = os.fstat(fd).st_size
        self._gz: gzip.GzipFile | None = None
        try:
            magic = self._file.read(2)
            self._file.seek(0)
            if magic == b"\x1f\x8b":
                self._gz = gzip.GzipFile(fileobj=self._file, mode="rb")
                self._stream = _Capped(self._gz, 3 * tarfile.BLOCKSIZE + MAX_MANIFEST_BYTES + _HEADER_SLACK)
            else:
                self._stream = _Capped(self._file, self._size)
            self._tar = tarfile.open(fileobj=self._stream, mode="r:")
        except _OverCap as e:
            self.close()
            raise self._damaged(where, e) from e
        except _DAMAGED as e:
            self.close()
            raise BundleError(f"{where}: not an rtxpack bundle (not a readable .tar or .tar.gz archive: "
                              f"{type(e).__name__}: {e}) and not a repository directory",
                              fix="pass a file written by `rtxpack bundle` (.tar or .tar.gz; copy it again if it was "
                                  "cut short), a repository directory or an http(s) URL", path=where) from e
        except BaseException:
            self.close()
            raise
        try:
            self.manifest, self.raw_manifest, self._members = self._validate(where, parse or (
                lambda raw: Manifest.from_json(raw, source=f"{where}:{MANIFEST_NAME}")))
        except BaseException:
            self.close()
            raise

    def _damaged(self, where: str, e: BaseException) -> BundleError:
        if isinstance(e, _OverCap):
            return BundleError(f"{where}: the archive holds more bytes than its manifest declares (a member or header "
                               "larger than declared, or a decompression bomb)", fix=_FIX_RECREATE, path=where)
        return BundleError(f"{where}: truncated or malformed archive ({type(e).__name__}: {e})",
                           fix="copy or download the bundle again, or recreate it with `rtxpack bundle`", path=where)

    def _next(self, where: str) -> tarfile.TarInfo | None:
        try:
            return self._tar.next()
        except (_OverCap, *_DAMAGED) as e:
            raise self._damaged(where, e) from e

    def _check_member(self, ti: tarfile.TarInfo, where: str) -> str:
        _check_name(ti.name, where)
        if not ti.isreg():
            raise BundleError(f"{where}: member {ti.name!r} is {_kind(ti)}; bundles hold regular files only",
                              fix=_FIX_RECREATE, member=ti.name)
        if self._gz is None and ti.offset_data + ti.size > self._size:
            raise BundleError(f"{where}: member {ti.name!r} claims {ti.size} bytes, past the end of the file "
                              "(truncated, or a lying size header)", fix="copy the bundle again or recreate it",
                              member=ti.name)
        return str(PurePosixPath(ti.name))

    def _validate(self, where: str, parse: Callable[[bytes], Manifest]
                  ) -> tuple[Manifest, bytes, dict[str, tarfile.TarInfo]]:
        mi = self._next(where)
        if mi is None:
            raise BundleError(f"{where}: an empty archive, no {MANIFEST_NAME} inside",
                              fix="pass a file written by `rtxpack bundle`", path=where)
        name = self._check_member(mi, where)
        if name != MANIFEST_NAME:
            raise BundleError(f"{where}: no {MANIFEST_NAME} as the first member (found {mi.name!r}; bundles written by "
                              "`rtxpack bundle` start with it, so everything after it is checked before it is read)",
                              fix=_FIX_RECREATE, member=mi.name)
        if mi.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{where}: member {MANIFEST_NAME!r} is {mi.size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
                              fix="do not use this bundle", member=MANIFEST_NAME)
        try:
            f = self._tar.extractfile(mi)
            assert f is not None
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        except (_OverCap, *_DAMAGED) as e:
            raise self._damaged(where, e) from e
        if len(raw) != mi.size:
            raise BundleError(f"{where}: {MANIFEST_NAME} is cut short ({len(raw)} of {mi.size} bytes)",
                              fix="copy the bundle again or recreate it", member=MANIFEST_NAME)
        try:
            manifest = parse(raw)
        except ManifestError as e:
            if type(e) is not ManifestError:      # a SignatureError stays what it is
                raise
            raise BundleError(f"{where}: its manifest is invalid: {e.args[0]}", fix="recreate the bundle",
                              member=MANIFEST_NAME) from e
        declared = {a.path: a for a in manifest}
        limit = sum(a.size for a in manifest)
        # from here on the stream may hold the manifest, the declared bytes and header slack, no more
        self._stream.cap = min(self._stream.cap if self._gz is None else 1 << 62,
                               mi.offset_data + _round_block(mi.size) + sum(_round_block(a.size) for a in manifest)
                               + (len(declared) + 2) * _HEADER_SLACK)
        members: dict[str, tarfile.TarInfo] = {MANIFEST_NAME: mi}
        total = 0
        while (ti := self._next(where)) is not None:
            name = self._check_member(ti, where)
            if name in members:
                raise BundleError(f"{where}: member {name!r} appears twice", fix=_FIX_RECREATE, member=name)
            a = declared.get(name)
            if a is None:
                raise BundleError(f"{where}: member {name!r} is not listed in the bundle's manifest",
                                  fix=_FIX_RECREATE, member=name)
            if ti.size > a.size:
                raise BundleError(f"{where}: member {name!r} is {ti.size} bytes, larger than the {a.size} declared "
                                  f"for {a.id}", fix="do not use this bundle; recreate it", member=name)
            total += ti.size
            if total > limit:
                raise BundleError(f"{where}: members hold {total} bytes, beyond the {limit} its manifest declares",
                                  fix="do not use this bundle", path=where)
            members[name] = ti
            if len(members) > len(declared) + _EXTRA_MEMBERS:
                raise BundleError(f"{where}: {len(members)} members for {len(declared)} artifacts",
                                  fix="do not use this bundle", path=where)
        return manifest, raw, members

    # -- access ----------------------------------------------------------------------------------
    def __enter__(self) -> "BundleReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for f in (getattr(self, "_tar", None), self._gz, self._file):
            if f is not None:
                try:
                    f.close()
                except (OSError, *_DAMAGED):
                    pass

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
        h, n = hashlib.sha256(), 0
        try:
            f = self._tar.extractfile(ti)
            assert f is not None
        except (_OverCap, *_DAMAGED) as e:
            raise self._damaged(str(self.path), e) from e
        while True:
            try:
                chunk = f.read(min(_CHUNK, artifact.size + 1 - n))
            except (_OverCap, *_DAMAGED) as e:
                raise self._damaged(str(self.path), e) from e
            if not chunk:
                break
            n += len(chunk)
            if n > artifact.size:
                raise BundleError(f"{self.path}: member {ti.name!r} is larger than the {artifact.size} bytes declared",
                                  fix="do not use this bundle", member=ti.name)
            h.update(chunk)
            out.write(chunk)                      # a disk error here is the caller's (never "damaged")
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


def install_from_bundle(bundle: "BundleReader | str | os.PathLike[str]", artifact: Any, *,
                        store: Store | None = None, verify_stored: bool = False) -> Path:
    """Copy one artifact from the bundle into the local store (by sha256, verified); its store path.

    ``bundle`` is an open :class:`BundleReader` (one install opens the file once) or a path.
    ``verify_stored``: a copy already in the store is re-hashed, not trusted by its size. No
    network: this is what ``rtxpack install --repo bundle.tar`` uses, also with RTXPACK_OFFLINE=1.
    """
    store = store if store is not None else Store()
    sha, size = artifact.sha256, artifact.size

    def stored() -> Path | None:
        if verify_stored:
            return store.verified_path(sha, size)
        return store.get(sha) if store.has(sha, size) else None

    if (p := stored()) is not None:
        return p
    with store.lock(sha):
        if (p := stored()) is not None:
            return p
        store.ensure_free_space(size, what=str(getattr(artifact, "id", sha)))
        meta = {k: str(getattr(artifact, k)) for k in ("id", "model", "kind") if getattr(artifact, k, None)}
        reader = bundle if isinstance(bundle, BundleReader) else BundleReader(bundle)
        meta["source"] = f"bundle:{reader.path}"
        try:
            with store.new_blob(sha, size) as out:
                try:
                    reader.copy_to(artifact, out)
                except (BundleError, ChecksumMismatch):
                    raise
                except OSError as e:
                    raise write_error(e, out.tmp, f"a copy of {getattr(artifact, 'id', sha)}", needed=size) from e
                return store.commit_blob(out, sha, size, meta=meta)
        finally:
            if reader is not bundle:
                reader.close()


def bundle_source(path: str | os.PathLike[str], *, store: Store | None = None) -> Path:
    """A local directory repository holding the bundle's contents (extracted safely, once).

    The directory lives in the store (``state/bundles/<key>``), keyed by the bundle's path and file
    identity (device, inode, size, mtime and change time: a bundle replaced by one with the same
    size and modification time is a new key), so repeated installs from the same bundle reuse it.
    """
    p = Path(path).resolve()
    st = p.stat()
    ident = f"{p}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:32]
    store = store if store is not None else Store()
    base = store.state_dir("bundles")
    dest = base / key
    with LockFile(base / f"{key}.lock", timeout=STATE_LOCK_SECONDS, what="the lock of an extracted bundle"):
        if store.find_state_dir("bundles") == base and _is_real_dir(dest) and (dest / MANIFEST_NAME).is_file():
            return dest
        remove_any(dest)                       # a half-extracted folder, or something planted at the name
        work = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=base))
        try:
            extract_bundle(p, work)
            os.replace(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return dest


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


__all__ = ["BundleReader", "bundle_source", "extract_bundle", "install_from_bundle", "open_bundle",
           "read_bundle_manifest"]
