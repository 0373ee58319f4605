"""The local artifact store: content-addressed by sha256, safe under many processes and accounts.

Layout under ``root`` (``RTXPACK_CACHE_DIR`` or platformdirs' user cache dir)::

    blobs/sha256/ab/abcdef...        the verified bytes, named by their sha256
    meta/sha256/ab/abcdef....json    optional sidecar: what the blob is (kind, model, name, ...)
    tmp/                             unique temp files and ``<sha256>.partial`` resumable downloads
    locks/<sha256>.lock              one file lock per blob
    state/<name>/                    small mutable files kept by other modules (runtime caches, ...)

Rules: nothing is ever written to a final path. Bytes go to a temp file inside ``tmp/`` (same
filesystem), are checked for size and sha256, and only then moved in with ``os.replace``; a
half-written file therefore never shows up as an entry. The last-use time used for LRU pruning is
the blob's mtime, refreshed by :meth:`Store.get`.

The folder may be shared with other accounts, read-only, or full. Below ``root`` nothing is
followed: every folder on a path is checked with ``lstat`` to be a real directory (a planted
symbolic link is a :class:`StoreError` on write and "absent" on read), files are opened with
``O_NOFOLLOW`` and never block on a fifo, entries are regular files only, and after a rename the
destination must be the file that was written. What does not belong (links, directories where
files go, fifos, stray names, garbage metadata) is listed by :meth:`Store.anomalies` and removed
by :meth:`Store.heal` (``rtxpack cache verify`` and ``prune`` run it). Reads never write: a
read-only store still serves and verifies what it holds; a write there, or on a full disk, is one
:class:`StoreError` naming the folder and what was needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple

from ..core import config
from ..core.config import parse_size
from ..core.errors import ChecksumMismatch, ConfigError, StoreError
from ..core.fsutil import (AtomicFile, UnsafeFile, is_writable, kind_of, open_regular, read_regular, remove_any,
                           replace_into, store_file, write_error)
from ..core.lockfile import LockFile, LockTimeout

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_FAN_RE = re.compile(r"^[0-9a-f]{2}$")
_CHUNK = 1 << 20
#: temp files older than this are leftovers of a crashed writer; prune() removes them
STALE_TEMP_SECONDS = 24 * 3600
#: a metadata sidecar is a few hundred bytes; anything beyond this is garbage, never read
MAX_META_BYTES = 64 << 10
#: the longest wait for the lock of a small state file (rewritten in milliseconds by its holder)
STATE_LOCK_SECONDS = 60.0
_TOP = ("blobs", "meta", "tmp", "locks", "state")

__all__ = ["Entry", "Healed", "Store", "VerifyResult", "check_sha256", "parse_size"]


def check_sha256(sha256: str) -> str:
    """``sha256`` lower-cased, or :class:`ConfigError` if it is not 64 hex digits."""
    s = str(sha256).strip().lower()
    if not _SHA_RE.match(s):
        raise ConfigError(f"{sha256!r} is not a sha256 hex digest", fix="pass 64 hexadecimal digits", value=str(sha256))
    return s


@dataclass(frozen=True)
class Entry:
    """One verified blob in the store."""

    sha256: str
    size: int
    path: Path
    last_used: float                                   # epoch seconds (blob mtime)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


class VerifyResult(NamedTuple):
    entry: Entry
    ok: bool
    reason: str


class Healed(NamedTuple):
    """Something in the store that did not belong, and what :meth:`Store.heal` did about it."""

    path: Path
    problem: str
    action: str            # "removed" | "could not remove: <why>"


class Store:
    """Content-addressed local store; see the module docstring for the layout and the rules."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else config.cache_dir()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- folders: real directories only ------------------------------------------------------------
    def _dir(self, *parts: str, create: bool = True) -> Path | None:
        """``root/parts...`` with every component a real directory (``lstat``: a link is not one).

        ``create``: missing folders are made; a link, file or fifo in the way is a StoreError.
        Without ``create`` (reads): None when a component is missing or is not a real directory."""
        p = self.root
        if create:
            try:
                p.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(e, p, "the rtxpack store", folder=p.parent) from e
        for part in parts:
            p = p / part
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(p)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise write_error(e, p, f"the store folder {part}/") from e
                st = os.lstat(p)
            except OSError:
                if not create:
                    return None
                raise
            if not stat.S_ISDIR(st.st_mode):
                if not create:
                    return None
                raise StoreError(f"{p} is {kind_of(st.st_mode)}, not a directory; rtxpack never follows links or "
                                 "writes through other files inside its store",
                                 fix="run `rtxpack cache verify` (it removes what does not belong in the store), "
                                     f"or remove {p}", path=str(p))
        return p

    # -- paths ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        s = check_sha256(sha256)
        return self.root / "blobs" / "sha256" / s[:2] / s

    def _meta_path(self, sha256: str) -> Path:
        s = check_sha256(sha256)
        return self.root / "meta" / "sha256" / s[:2] / f"{s}.json"

    @property
    def tmp_dir(self) -> Path:
        d = self._dir("tmp")
        assert d is not None
        return d

    def partial_path(self, sha256: str) -> Path:
        """Where a resumable download of ``sha256`` keeps its bytes so far (inside ``tmp/``)."""
        return self.tmp_dir / f"{check_sha256(sha256)}.partial"

    def new_blob(self, sha256: str | None = None, size: int | None = None) -> AtomicFile:
        """A streaming writer for a blob (a new temp file in ``tmp/``, hashed as it is written); finish it
        with :meth:`commit_blob` (leaving its ``with`` block otherwise removes the temp file)."""
        prefix = check_sha256(sha256)[:16] if sha256 else "blob"
        tmp = self.tmp_dir
        try:
            return AtomicFile(tmp / prefix, tmp_dir=tmp, hash=True, prefix=prefix)
        except OSError as e:
            raise write_error(e, tmp / prefix, "a temp file for a download", needed=size) from e

    def commit_blob(self, writer: AtomicFile, sha256: str, size: int, *, meta: Mapping[str, Any] | None = None) -> Path:
        """Check a :meth:`new_blob` writer's size and sha256, then move it into place (ChecksumMismatch
        and nothing installed when they differ)."""
        sha = check_sha256(sha256)
        if writer.size != size or writer.sha256 != sha:
            writer.abort()
            raise self._mismatch(sha, size, writer.size, writer.sha256 if writer.size == size else None)
        dest = self._blob_dest(sha, writer)
        try:
            writer.commit(dest)
        except UnsafeFile as e:
            raise StoreError(f"cannot install sha256 {sha[:12]}…: {e}", fix="check who else writes into RTXPACK_CACHE_DIR",
                             path=str(dest)) from e
        except OSError as e:
            raise write_error(e, dest, f"blob sha256 {sha[:12]}…", needed=size) from e
        if meta:
            self.set_meta(sha, meta)
        return dest

    def _blob_dest(self, sha: str, writer: AtomicFile | None = None) -> Path:
        """The blob's path, its fan-out folder checked; a directory or other non-file at the name is removed."""
        try:
            folder = self._dir("blobs", "sha256", sha[:2])
        except StoreError:
            if writer is not None:
                writer.abort()
            raise
        assert folder is not None
        dest = folder / sha
        try:
            if not stat.S_ISREG(os.lstat(dest).st_mode):
                remove_any(dest)
        except FileNotFoundError:
            pass
        except OSError as e:
            if writer is not None:
                writer.abort()
            raise write_error(e, dest, f"blob sha256 {sha[:12]}…") from e
        return dest

    @staticmethod
    def _mismatch(sha: str, size: int, actual_size: int, digest: str | None) -> ChecksumMismatch:
        if actual_size != size:
            return ChecksumMismatch(
                f"size mismatch for {sha[:16]}…: expected {size} bytes, got {actual_size}; not installed",
                fix="retry; if it persists the repository entry or mirror is corrupt",
                sha256=sha, expected_size=size, actual_size=actual_size, expected_sha256=sha)
        return ChecksumMismatch(
            f"sha256 mismatch: expected {sha}, got {digest}; not installed",
            fix="retry; if it persists the repository entry or mirror is corrupt",
            sha256=sha, expected_sha256=sha, actual_sha256=digest, expected_size=size, actual_size=actual_size)

    @staticmethod
    def _check_state_name(name: str, what: str) -> None:
        if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
            raise ConfigError(f"{name!r} is not a valid state {what}", fix="use a plain name such as 'runtime-caches'")

    def state_dir(self, name: str) -> Path:
        """A directory for small mutable files owned by another module (created on demand)."""
        self._check_state_name(name, "name")
        d = self._dir("state", name)
        assert d is not None
        return d

    def find_state_dir(self, name: str) -> Path | None:
        """:meth:`state_dir` for readers: never created; None when missing or not a real directory."""
        self._check_state_name(name, "name")
        return self._dir("state", name, create=False)

    def state_path(self, filename: str) -> Path:
        """A small state file directly under ``state/`` (e.g. the digest cache); the folder is created."""
        self._check_state_name(filename, "file name")
        d = self._dir("state")
        assert d is not None
        return d / filename

    def find_state_path(self, filename: str) -> Path | None:
        """:meth:`state_path` for readers: None when ``state/`` is missing or not a real directory."""
        self._check_state_name(filename, "file name")
        d = self._dir("state", create=False)
        return None if d is None else d / filename

    def state_lock(self, path: Path, what: str) -> LockFile:
        """The lock beside a state file (``<path>.lock``), waited for at most STATE_LOCK_SECONDS."""
        return LockFile(path.with_name(path.name + ".lock"), timeout=STATE_LOCK_SECONDS, what=f"the lock of {what}")

    def read_state(self, path: Path | None, max_bytes: int) -> bytes | None:
        """A state file's bytes: None when absent or not a regular file; larger than ``max_bytes``: None
        (never read). Never follows a link, never blocks on a fifo, never writes."""
        if path is None:
            return None
        try:
            return read_regular(path, max_bytes)
        except (OSError, ValueError):
            return None

    def write_state(self, path: Path, data: bytes, what: str) -> Path:
        """Atomically replace a state file (see :func:`rtxpack.core.fsutil.store_file`)."""
        return store_file(path, data, what=what)

    def writable(self) -> bool:
        """Whether this user may write into the store (False on a read-only mount or another
        account's folder; True for a store that does not exist yet but can be created)."""
        return is_writable(self.root)

    # -- queries -------------------------------------------------------------------------------
    def _entry_stat(self, sha256: str) -> tuple[Path, os.stat_result] | None:
        s = check_sha256(sha256)
        folder = self._dir("blobs", "sha256", s[:2], create=False)
        if folder is None:
            return None
        path = folder / s
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (path, st) if stat.S_ISREG(st.st_mode) else None

    def has(self, sha256: str, size: int | None = None) -> bool:
        """The blob exists as a regular file inside the store (and has ``size`` bytes when given).
        Does not re-hash."""
        found = self._entry_stat(sha256)
        return found is not None and (size is None or found[1].st_size == size)

    def get(self, sha256: str) -> Path | None:
        """Path of the blob, marking it as just used (for LRU); None when absent."""
        found = self._entry_stat(sha256)
        if found is None:
            return None
        try:
            if os.utime in os.supports_follow_symlinks:
                os.utime(found[0], follow_symlinks=False)
            else:  # pragma: no cover - Windows
                os.utime(found[0])
        except OSError:
            pass  # read-only store: still usable, LRU just does not move
        return found[0]

    def verified_path(self, sha256: str, size: int) -> Path | None:
        """The blob's path after re-hashing it now: None when absent; a blob whose bytes are not
        ``sha256`` (damaged since it was installed, same size or not) is removed and None returned."""
        found = self._entry_stat(sha256)
        if found is None:
            return None
        sha = check_sha256(sha256)
        if found[1].st_size == size:
            try:
                if _hash_file(found[0]) == sha:
                    return self.get(sha)
            except OSError:
                pass
        try:
            self.remove(sha)
        except StoreError:
            pass   # read-only: the damaged blob stays, but is never reported as verified
        return None

    def read_blob(self, sha256: str, size: int) -> bytes | None:
        """The blob's bytes when they are exactly ``size`` bytes hashing to ``sha256`` (read once,
        at most ``size`` + 1 bytes); None otherwise."""
        found = self._entry_stat(sha256)
        if found is None or found[1].st_size != size:
            return None
        try:
            data = read_regular(found[0], size)
        except (OSError, ValueError):
            return None
        return data if hashlib.sha256(data).hexdigest() == check_sha256(sha256) else None

    def lock(self, sha256: str) -> LockFile:
        """The per-blob file lock (a context manager; waits at most RTXPACK_DOWNLOAD_DEADLINE). Not
        re-entrant: :meth:`add_bytes`, :meth:`add_file` and :meth:`commit_temp` never take it themselves."""
        locks = self._dir("locks")
        assert locks is not None
        s = check_sha256(sha256)
        return LockFile(locks / f"{s}.lock", timeout=config.download_deadline(),
                        what=f"the lock of blob sha256 {s[:12]}…",
                        timeout_fix="another rtxpack process is fetching the same artifact: let it finish or stop "
                                    "it (the wait is bounded by RTXPACK_DOWNLOAD_DEADLINE)")

    def meta(self, sha256: str) -> dict[str, Any]:
        """The blob's sidecar (a JSON object of at most MAX_META_BYTES); {} when absent or garbage."""
        s = check_sha256(sha256)
        folder = self._dir("meta", "sha256", s[:2], create=False)
        data = self.read_state(None if folder is None else folder / f"{s}.json", MAX_META_BYTES)
        if data is None:
            return {}
        try:
            meta = json.loads(data)
        except ValueError:
            return {}
        return meta if isinstance(meta, dict) else {}

    def set_meta(self, sha256: str, meta: Mapping[str, Any]) -> None:
        """Record what the blob is (kind, model, original name...); written atomically."""
        s = check_sha256(sha256)
        folder = self._dir("meta", "sha256", s[:2])
        assert folder is not None
        data = json.dumps(dict(meta), sort_keys=True, default=str).encode()
        store_file(folder / f"{s}.json", data, what=f"the metadata of blob sha256 {s[:12]}…")

    # -- writes --------------------------------------------------------------------------------
    def ensure_free_space(self, nbytes: int, what: str = "artifact") -> None:
        """Raise :class:`StoreError` when the store's disk has fewer than ``nbytes`` free."""
        if nbytes <= 0:
            return
        self._dir()
        free = shutil.disk_usage(self.root).free
        if free < nbytes:
            raise StoreError(
                f"not enough disk space for {what}: {nbytes} bytes needed, {free} free in {self.root}",
                fix="free disk space, run `rtxpack cache prune --max-size <size>`, "
                "or set RTXPACK_CACHE_DIR to a larger disk",
                needed_bytes=nbytes, free_bytes=free, path=str(self.root),
            )

    def commit_temp(
        self,
        tmp_path: Path | str,
        sha256: str,
        size: int,
        *,
        actual_sha256: str | None = None,
        meta: Mapping[str, Any] | None = None,
        identity: tuple[int, int] | None = None,
    ) -> Path:
        """Check ``tmp_path`` (a finished file inside the store's ``tmp/``, e.g. a resumed download)
        and move it to its blob path.

        ``actual_sha256`` is the digest the caller computed while writing the same bytes (saves
        re-reading a large file); without it the file is hashed here. ``identity`` (device, inode)
        of the file the caller wrote: a name that no longer holds it is never moved in. On a wrong
        size or digest the temp file is deleted and :class:`ChecksumMismatch` is raised; nothing is
        installed.
        """
        sha = check_sha256(sha256)
        tmp = Path(tmp_path)
        try:
            st = os.lstat(tmp)
        except FileNotFoundError as e:
            raise StoreError(f"temp file {tmp} vanished before commit", fix="retry the download", path=str(tmp)) from e
        actual_size = st.st_size if stat.S_ISREG(st.st_mode) else -1
        digest = (actual_sha256.lower() if actual_sha256 else _hash_file(tmp)) if actual_size == size else None
        if actual_size != size or digest != sha:
            _unlink(tmp)
            raise self._mismatch(sha, size, actual_size, digest)
        dest = self._blob_dest(sha)
        try:
            replace_into(tmp, dest, mode=0o644, identity=identity)   # temps are 0600; blobs are plain readable files
        except UnsafeFile as e:
            _unlink(tmp)
            raise StoreError(f"cannot install sha256 {sha[:12]}…: {e}", fix="check who else writes into RTXPACK_CACHE_DIR",
                             path=str(dest)) from e
        except OSError as e:
            _unlink(tmp)
            raise write_error(e, dest, f"blob sha256 {sha[:12]}…", needed=size) from e
        if meta:
            self.set_meta(sha, meta)
        return dest

    def add_bytes(self, data: bytes, sha256: str | None = None, *, meta: Mapping[str, Any] | None = None) -> Path:
        """Store ``data``; when ``sha256`` is given it must match (else :class:`ChecksumMismatch`)."""
        digest = hashlib.sha256(data).hexdigest()
        sha = check_sha256(sha256) if sha256 else digest
        if digest == sha and self.has(sha, len(data)):
            path = self.get(sha)
            assert path is not None
            if meta:
                self.set_meta(sha, meta)
            return path
        self.ensure_free_space(len(data))
        with self.new_blob(sha, len(data)) as w:
            try:
                w.write(data)
            except OSError as e:
                raise write_error(e, w.tmp, f"blob sha256 {sha[:12]}…", needed=len(data)) from e
            return self.commit_blob(w, sha, len(data), meta=meta)

    def add_file(
        self,
        src_path: Path | str,
        sha256: str | None = None,
        move: bool = False,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Store a copy of ``src_path`` (or move it in when ``move`` and on the same filesystem)."""
        src = Path(src_path)
        size = src.stat().st_size
        if sha256 and self.has(sha256, size):
            path = self.get(sha256)
            assert path is not None
            if move:
                _unlink(src)
            return path
        if move:
            tmp = self.tmp_dir / f".{os.urandom(8).hex()}.move"
            try:
                os.replace(src, tmp)  # same filesystem: instant; otherwise fall back to copying
            except OSError:
                pass
            else:
                digest = _hash_file(tmp)
                return self.commit_temp(tmp, sha256 or digest, size, actual_sha256=digest, meta=meta)
        self.ensure_free_space(size)
        with self.new_blob(sha256, size) as w:
            fd = open_regular(src, follow_links=True)
            with os.fdopen(fd, "rb", buffering=0) as fin:
                while chunk := fin.read(min(_CHUNK, size + 1 - w.size)):
                    try:
                        w.write(chunk)
                    except OSError as e:
                        raise write_error(e, w.tmp, f"a copy of {src}", needed=size) from e
                    if w.size > size:
                        break
            path = self.commit_blob(w, sha256 or w.sha256, size, meta=meta)
        if move:
            _unlink(src)
        return path

    def remove(self, sha256: str) -> bool:
        """Delete a blob and its sidecar; True if the blob existed. Never through a linked folder
        (a fan-out folder that is a link: nothing is removed there). A read-only store: StoreError."""
        s = check_sha256(sha256)
        existed = False
        for parts, name, what in ((("blobs", "sha256", s[:2]), s, "blob"),
                                  (("meta", "sha256", s[:2]), f"{s}.json", "metadata")):
            folder = self._dir(*parts, create=False)
            if folder is None:
                continue
            try:
                gone = remove_any(folder / name)
            except OSError as e:
                raise write_error(e, folder / name, f"the removal of {what} sha256 {s[:12]}…") from e
            existed = existed or (gone and what == "blob")
        return existed

    # -- maintenance ---------------------------------------------------------------------------
    def _scan(self, *parts: str) -> Iterator[os.DirEntry[str]]:
        folder = self._dir(*parts, create=False)
        if folder is None:
            return
        try:
            with os.scandir(folder) as it:
                yield from sorted(it, key=lambda d: d.name)
        except OSError:
            return

    def entries(self) -> list[Entry]:
        """Every blob in the store (temp files, partial downloads, links and other strays are never entries)."""
        out: list[Entry] = []
        for sub in self._scan("blobs", "sha256"):
            if not _FAN_RE.match(sub.name) or not sub.is_dir(follow_symlinks=False):
                continue
            for p in self._scan("blobs", "sha256", sub.name):
                if not _SHA_RE.match(p.name) or p.name[:2] != sub.name or not p.is_file(follow_symlinks=False):
                    continue
                try:
                    st = p.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed concurrently
                out.append(Entry(p.name, st.st_size, Path(p.path), st.st_mtime, self.meta(p.name)))
        return out

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())

    def anomalies(self) -> list[tuple[Path, str]]:
        """What does not belong in the store, with the problem: (path, problem). Read-only."""
        found: list[tuple[Path, str]] = []

        def odd(d: os.DirEntry[str], problem: str) -> None:
            found.append((Path(d.path), problem))

        def kind(d: os.DirEntry[str]) -> str:
            try:
                return kind_of(d.stat(follow_symlinks=False).st_mode)
            except OSError:
                return "unreadable"

        for top in self._scan():
            if top.name in _TOP and not top.is_dir(follow_symlinks=False):
                odd(top, f"is {kind(top)} where the store's {top.name}/ folder belongs")
        for sub in self._scan("blobs"):
            if sub.name != "sha256":
                odd(sub, "is a stray name in blobs/")
        for sub in self._scan("blobs", "sha256"):
            if not sub.is_dir(follow_symlinks=False):
                odd(sub, f"is {kind(sub)} where a blob fan-out folder belongs")
                continue
            if not _FAN_RE.match(sub.name):
                odd(sub, "is a stray folder in blobs/sha256/")
                continue
            for p in self._scan("blobs", "sha256", sub.name):
                if not _SHA_RE.match(p.name) or p.name[:2] != sub.name:
                    odd(p, "is a stray name among the blobs")
                elif not p.is_file(follow_symlinks=False):
                    odd(p, f"is {kind(p)} where a blob belongs")
        for sub in self._scan("meta", "sha256"):
            if not sub.is_dir(follow_symlinks=False) or not _FAN_RE.match(sub.name):
                odd(sub, f"is {kind(sub)} where a metadata fan-out folder belongs")
                continue
            for p in self._scan("meta", "sha256", sub.name):
                sha = p.name[:-5] if p.name.endswith(".json") else ""
                if not _SHA_RE.match(sha) or sha[:2] != sub.name:
                    odd(p, "is a stray name among the metadata")
                elif not p.is_file(follow_symlinks=False):
                    odd(p, f"is {kind(p)} where a metadata file belongs")
                elif not self.has(sha):
                    odd(p, "is the metadata of a blob that is not in the store")
                elif not self.meta(sha):
                    odd(p, "is garbage metadata (not a JSON object of at most 64 KiB)")
        for folder in ("tmp", "locks"):
            for p in self._scan(folder):
                if not p.is_file(follow_symlinks=False):
                    odd(p, f"is {kind(p)} in {folder}/ (only regular files belong there)")
        for sub in self._scan("state"):
            if sub.is_symlink() or not (sub.is_dir(follow_symlinks=False) or sub.is_file(follow_symlinks=False)):
                odd(sub, f"is {kind(sub)} in state/")
            elif sub.is_dir(follow_symlinks=False):
                for p in self._scan("state", sub.name):
                    if p.is_symlink() or not (p.is_file(follow_symlinks=False) or p.is_dir(follow_symlinks=False)):
                        odd(p, f"is {kind(p)} in state/{sub.name}/")
        return found

    def heal(self) -> list[Healed]:
        """Remove everything :meth:`anomalies` lists (links are removed, never followed); each with
        the action taken ("could not remove: ..." on a read-only store)."""
        out: list[Healed] = []
        for path, problem in self.anomalies():
            try:
                remove_any(path)
                action = "removed"
            except OSError as e:
                action = f"could not remove: {e.strerror or e}"
            out.append(Healed(path, problem, action))
        return out

    def verify(self) -> list[VerifyResult]:
        """Re-hash every blob; corrupt ones are removed (so they are fetched again) and reported.
        Reads only, except that removal; on a read-only store corrupt blobs are reported as such."""
        results = []
        for e in self.entries():
            try:
                digest = _hash_file(e.path)
            except OSError as err:
                results.append(VerifyResult(e, False, f"unreadable: {err}; {self._remove_for(e)}"))
                continue
            if digest == e.sha256:
                results.append(VerifyResult(e, True, "ok"))
            else:
                results.append(VerifyResult(e, False, f"sha256 is {digest}; {self._remove_for(e)}"))
        return results

    def _remove_for(self, e: Entry) -> str:
        try:
            self.remove(e.sha256)
        except StoreError as err:
            return f"could not remove it ({err.message})"
        return "removed, will be fetched again"

    def prune(self, max_size: int | str) -> list[Entry]:
        """Remove least recently used blobs until the store holds at most ``max_size`` bytes.

        A blob whose lock is held (being fetched or used by another process) is never removed.
        Stale temp files of crashed writers are removed too. Returns the removed entries.
        """
        limit = parse_size(max_size)
        self._clean_stale_temp()
        entries = sorted(self.entries(), key=lambda e: (e.last_used, e.sha256))
        total = sum(e.size for e in entries)
        removed: list[Entry] = []
        for e in entries:
            if total <= limit:
                break
            lock = self.lock(e.sha256)
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                continue
            try:
                if self.remove(e.sha256):
                    removed.append(e)
                total -= e.size
            finally:
                lock.release()
        return removed

    def _clean_stale_temp(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for p in self._scan("tmp"):
            try:
                if p.stat(follow_symlinks=False).st_mtime < cutoff:
                    remove_any(p.path)
            except OSError:
                pass


def _hash_file(path: Path) -> str:
    """sha256 of a regular file inside the store (never through a link, never blocking on a fifo)."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    fd = open_regular(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        return remove_any(path)
