"""The local artifact store: content-addressed by sha256, safe under many processes.

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
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import filelock

from ..core import config
from ..core.digest import sha256_file
from ..core.errors import ChecksumMismatch, ConfigError, StoreError
from ..core.fsutil import AtomicFile, atomic_write, replace_into

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
#: temp files older than this are leftovers of a crashed writer; prune() removes them
STALE_TEMP_SECONDS = 24 * 3600

_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in ``"2GiB"``, ``"500M"``, ``"1.5G"``, ``"10MB"`` or ``"1024"``.

    Bare ``K``/``M``/``G``/``T`` and ``KiB``... are powers of 1024; ``KB``/``MB``/``GB``/``TB`` are
    powers of 1000 (IEC). Anything else raises :class:`ConfigError`.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"size {text} is negative", fix="give a size such as 500M or 2GiB", value=text)
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise ConfigError(
            f"{text!r} is not a size",
            fix="give a size such as 1024, 500M, 2GiB or 10GB",
            value=str(text),
        )
    return int(float(m.group(1)) * _UNITS[unit])


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


class Store:
    """Content-addressed local store; see the module docstring for the layout and the rules."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else config.cache_dir()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        s = check_sha256(sha256)
        return self.root / "blobs" / "sha256" / s[:2] / s

    def _meta_path(self, sha256: str) -> Path:
        s = check_sha256(sha256)
        return self.root / "meta" / "sha256" / s[:2] / f"{s}.json"

    @property
    def tmp_dir(self) -> Path:
        return self._mkdir(self.root / "tmp")

    def partial_path(self, sha256: str) -> Path:
        """Where a resumable download of ``sha256`` keeps its bytes so far (inside ``tmp/``)."""
        return self.tmp_dir / f"{check_sha256(sha256)}.partial"

    def new_blob(self, sha256: str | None = None) -> AtomicFile:
        """A streaming writer for a blob (a new temp file in ``tmp/``, hashed as it is written); finish it
        with :meth:`commit_blob` (leaving its ``with`` block otherwise removes the temp file)."""
        prefix = check_sha256(sha256)[:16] if sha256 else "blob"
        return AtomicFile(self.tmp_dir / prefix, tmp_dir=self.tmp_dir, hash=True, prefix=prefix)

    def commit_blob(self, writer: AtomicFile, sha256: str, size: int, *, meta: Mapping[str, Any] | None = None) -> Path:
        """Check a :meth:`new_blob` writer's size and sha256, then move it into place (ChecksumMismatch
        and nothing installed when they differ)."""
        sha = check_sha256(sha256)
        if writer.size != size or writer.sha256 != sha:
            writer.abort()
            raise self._mismatch(sha, size, writer.size, writer.sha256 if writer.size == size else None)
        dest = self.blob_path(sha)
        self._mkdir(dest.parent)
        try:
            writer.commit(dest)
        except OSError as e:
            raise StoreError(f"cannot move a download into {dest}: {e.strerror or e}",
                             fix="check permissions of RTXPACK_CACHE_DIR", path=str(dest)) from e
        if meta:
            self.set_meta(sha, meta)
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

    def state_dir(self, name: str) -> Path:
        """A directory for small mutable files owned by another module (created on demand)."""
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ConfigError(f"{name!r} is not a valid state name", fix="use a plain name such as 'runtime-caches'")
        return self._mkdir(self.root / "state" / name)

    def state_path(self, filename: str) -> Path:
        """A small state file directly under ``state/`` (e.g. the digest cache)."""
        if not filename or "/" in filename or "\\" in filename or filename in (".", ".."):
            raise ConfigError(f"{filename!r} is not a valid state file name", fix="use a plain file name")
        return self._mkdir(self.root / "state") / filename

    def _mkdir(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create store directory {path}: {e.strerror or e}",
                fix="set RTXPACK_CACHE_DIR to a writable directory",
                path=str(path),
            ) from e
        return path

    # -- queries -------------------------------------------------------------------------------
    def has(self, sha256: str, size: int | None = None) -> bool:
        """The blob exists (and has ``size`` bytes when given). Does not re-hash."""
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def get(self, sha256: str) -> Path | None:
        """Path of the blob, marking it as just used (for LRU); None when absent."""
        path = self.blob_path(sha256)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except OSError:
            pass  # read-only store: still usable, LRU just does not move
        return path

    def lock(self, sha256: str) -> filelock.FileLock:
        """The per-blob file lock (a context manager). Not re-entrant across lock objects:
        :meth:`add_bytes`, :meth:`add_file` and :meth:`commit_temp` never take it themselves."""
        locks = self._mkdir(self.root / "locks")
        return filelock.FileLock(str(locks / f"{check_sha256(sha256)}.lock"))

    def meta(self, sha256: str) -> dict[str, Any]:
        try:
            return json.loads(self._meta_path(sha256).read_text())
        except (OSError, ValueError):
            return {}

    def set_meta(self, sha256: str, meta: Mapping[str, Any]) -> None:
        """Record what the blob is (kind, model, original name...); written atomically."""
        path = self._meta_path(sha256)
        self._mkdir(path.parent)
        atomic_write(path, json.dumps(dict(meta), sort_keys=True, default=str).encode(), mode=0o644)

    # -- writes --------------------------------------------------------------------------------
    def ensure_free_space(self, nbytes: int, what: str = "artifact") -> None:
        """Raise :class:`StoreError` when the store's disk has fewer than ``nbytes`` free."""
        if nbytes <= 0:
            return
        self._mkdir(self.root)
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
    ) -> Path:
        """Check ``tmp_path`` (a finished file inside the store's ``tmp/``, e.g. a resumed download)
        and move it to its blob path.

        ``actual_sha256`` is the digest the caller computed while writing the same bytes (saves
        re-reading a large file); without it the file is hashed here. On a wrong size or digest the
        temp file is deleted and :class:`ChecksumMismatch` is raised; nothing is installed.
        """
        sha = check_sha256(sha256)
        tmp = Path(tmp_path)
        try:
            actual_size = tmp.stat().st_size
        except FileNotFoundError as e:
            raise StoreError(f"temp file {tmp} vanished before commit", fix="retry the download", path=str(tmp)) from e
        digest = (actual_sha256.lower() if actual_sha256 else _hash_file(tmp)) if actual_size == size else None
        if actual_size != size or digest != sha:
            _unlink(tmp)
            raise self._mismatch(sha, size, actual_size, digest)
        dest = self.blob_path(sha)
        self._mkdir(dest.parent)
        try:
            replace_into(tmp, dest, mode=0o644)   # mkstemp-style temps are 0600; blobs are plain readable files
        except OSError as e:
            _unlink(tmp)
            raise StoreError(f"cannot move {tmp} to {dest}: {e}", fix="check permissions of RTXPACK_CACHE_DIR",
                             path=str(dest)) from e
        os.utime(dest)
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
        with self.new_blob(sha) as w:
            w.write(data)
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
        with self.new_blob(sha256) as w:
            with open(src, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    w.write(chunk)
            path = self.commit_blob(w, sha256 or w.sha256, size, meta=meta)
        if move:
            _unlink(src)
        return path

    def remove(self, sha256: str) -> bool:
        """Delete a blob and its sidecar; True if the blob existed."""
        existed = _unlink(self.blob_path(sha256))
        _unlink(self._meta_path(sha256))
        return existed

    # -- maintenance ---------------------------------------------------------------------------
    def entries(self) -> list[Entry]:
        """Every blob in the store (temp files and partial downloads are never entries)."""
        out: list[Entry] = []
        base = self.root / "blobs" / "sha256"
        if not base.is_dir():
            return out
        for sub in sorted(base.iterdir()):
            if not sub.is_dir():
                continue
            for p in sorted(sub.iterdir()):
                if not _SHA_RE.match(p.name) or p.name[:2] != sub.name:
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue  # removed concurrently
                out.append(Entry(p.name, st.st_size, p, st.st_mtime, self.meta(p.name)))
        return out

    def total_size(self) -> int:
        return sum(e.size for e in self.entries())

    def verify(self) -> list[VerifyResult]:
        """Re-hash every blob; corrupt ones are removed (so they are fetched again) and reported."""
        results = []
        for e in self.entries():
            try:
                digest = _hash_file(e.path)
            except OSError as err:
                results.append(VerifyResult(e, False, f"unreadable: {err}; removed"))
                self.remove(e.sha256)
                continue
            if digest == e.sha256:
                results.append(VerifyResult(e, True, "ok"))
            else:
                self.remove(e.sha256)
                results.append(VerifyResult(e, False, f"sha256 is {digest}; removed, will be fetched again"))
        return results

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
            except filelock.Timeout:
                continue
            try:
                if self.remove(e.sha256):
                    removed.append(e)
                total -= e.size
            finally:
                lock.release()
        return removed

    def _clean_stale_temp(self) -> None:
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        cutoff = time.time() - STALE_TEMP_SECONDS
        for p in tmp.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass


def _hash_file(path: Path) -> str:
    return sha256_file(path)


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
