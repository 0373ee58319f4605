"""Getting artifacts from a repository (HTTP(S) URL or local directory) into the local store.

:func:`fetch_artifact` tries, in order: the local store (no network), ``repo/<artifact.path>``,
then each of ``artifact.mirrors``. Per HTTP source it retries transient failures (connection
errors, timeouts, 5xx, 429, a body cut short) with exponential backoff, resuming the partial
download with ``Range: bytes=N-`` after re-hashing the N bytes already on disk. sha256 is computed
while streaming; bytes that do not match are never installed. One file lock per blob makes
concurrent processes download it once. ``RTXPACK_OFFLINE=1`` makes no network call at all.

:func:`fetch_bytes` fetches small documents (``manifest.json``) with a size cap.

Bounds: every read waits at most ``RTXPACK_READ_TIMEOUT``; each whole fetch (every attempt,
source, backoff and ``Retry-After`` wait, and the wait for another process's lock) ends by
``RTXPACK_DOWNLOAD_DEADLINE``: a watchdog shuts the transfer's socket at the deadline, so a
server that trickles headers or body a byte at a time cannot hold ``install`` or ``load()``
longer. Local sources are read only up to their declared size and never block on a fifo. The
resumable ``tmp/<sha256>.partial`` is opened without following links, only when it is our own
regular file with one link; anything else at that name is removed and the download starts
over. URLs are shown and stored without their credentials.
"""
from __future__ import annotations

import email.utils
import errno
import hashlib
import json
import os
import http.client
import queue
import random
import re
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator


if TYPE_CHECKING:  # pragma: no cover
    import requests

from ..core import config
from ..core.errors import ChecksumMismatch, FetchError, OfflineError, StoreError
from ..core.fsutil import (UnsafeFile, open_new, open_regular, read_regular, remove_any, store_file,
                           write_error)
from ..core.location import Location, redact, redact_text
from ..core.lockfile import LockTimeout
from .store import Store, check_sha256

#: bytes per read from the socket / file; large reads keep Python overhead per byte low
CHUNK = 4 << 20
_BACKOFF_CAP = 8.0
_RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HEADERS = {"Accept-Encoding": "identity", "User-Agent": "rtxpack"}
#: errors raised while reading a response body: the connection is gone, try again (resume)
def _requests() -> Any:
    """requests, imported on the first HTTP transfer (70 ms at start-up that local installs and the
    farm's commands do not need)."""
    import requests

    return requests


def _body_errors() -> tuple[type[BaseException], ...]:
    import urllib3.exceptions

    return (_requests().RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
            ConnectionError, TimeoutError)
_BUNDLE_FIX = "run `rtxpack install ...` while online, or install from a bundle with `rtxpack install --repo bundle.tar`"


@dataclass
class FetchStats:
    """Counters filled in by :func:`fetch_artifact` / :func:`fetch_bytes` (pass ``stats=``)."""

    requests: int = 0               # HTTP requests sent
    bytes_downloaded: int = 0       # body bytes received over HTTP (or copied from a directory)
    resumed_from: int = 0           # offset of the last Range resume (0: never resumed)
    restarts: int = 0               # resumes abandoned (200 to a Range, 416, bad partial)
    retries: int = 0                # attempts after the first, over all sources
    from_store: bool = False        # answered by the local store, no source touched
    source: str | None = None       # URL or path the bytes finally came from
    errors: list[str] = field(default_factory=list)  # every failed attempt, "source: reason"


def _is_http(location: str) -> bool:
    return Location.parse(location).is_http


def _local_path(location: str) -> Path:
    path = Location.parse(location).path
    assert path is not None
    return path


def _label(artifact: Any) -> str:
    parts = [str(getattr(artifact, a)) for a in ("id", "model", "kind") if getattr(artifact, a, None)]
    name = " ".join(dict.fromkeys(parts)) if parts else "artifact"
    return f"{name} (sha256 {artifact.sha256[:12]}…, {artifact.size} bytes)"


def check_settings() -> None:
    """Read every network setting now (each validated by :mod:`rtxpack.core.config`): a bad value is
    one ConfigError before anything is fetched, not a surprise at the first retry."""
    config.connect_timeout(), config.read_timeout(), config.download_deadline()
    config.max_retries(), config.retry_backoff()


# -- the overall deadline ------------------------------------------------------------------------
class Deadline:
    """The end of one fetch (``RTXPACK_DOWNLOAD_DEADLINE`` seconds from its start, all attempts included)."""

    def __init__(self, seconds: float | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = config.download_deadline() if seconds is None else seconds
        self._clock = clock
        self.end = clock() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.end - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self.end

    def error(self, what: str, errors: list[str], **details: Any) -> FetchError:
        return FetchError(
            f"{what} did not finish within the {self.seconds:g} s deadline (RTXPACK_DOWNLOAD_DEADLINE); "
            "a server that sends too slowly, or a stalled network"
            + (": " + "; ".join(errors[-3:]) if errors else ""),
            fix="check the network or the mirror; raise RTXPACK_DOWNLOAD_DEADLINE (seconds) for very large "
                "artifacts on slow links", errors=errors, **details)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, min(seconds, self.remaining())))


class _Watch:
    """Shuts the sockets of one transfer down when its deadline passes: a blocked read (headers or
    body trickled one byte per read timeout) then fails at once instead of going on for ever.

    Connections report their socket objects when connected or taken from the pool (see
    :func:`_adapter_class`). A TLS handshake needs no help: CPython bounds a whole handshake by
    the socket's (connect) timeout."""

    def __init__(self, seconds: float) -> None:
        self._socks: list[Any] = []
        self._lock = threading.Lock()
        self.fired = False
        self._done = False
        self._timer = threading.Timer(seconds, self.fire)
        self._timer.daemon = True

    def add(self, sock: Any) -> None:
        with self._lock:
            if self._done:
                return
            self._socks.append(sock)
            if self.fired:
                self._cut(sock)

    def fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for sock in self._socks:
                self._cut(sock)

    @staticmethod
    def _cut(sock: Any) -> None:
        """shutdown(2): the peer's bytes stop, the blocked read returns; the owner still closes it."""
        try:
            if sock.fileno() >= 0:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> "_Watch":
        _CURRENT.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._done = True
            self._socks.clear()
        self._timer.cancel()
        _CURRENT.watch = None


_CURRENT = threading.local()


def _watching() -> "_Watch | None":
    return getattr(_CURRENT, "watch", None)


_ADAPTER: list[type] = []


def _adapter_class() -> type:
    """A requests adapter whose connections report their sockets to the current :class:`_Watch`."""
    if _ADAPTER:
        return _ADAPTER[0]
    import requests.adapters
    import urllib3.connection as uc
    import urllib3.connectionpool as cp

    def watched(conn_cls: type) -> type:
        class Conn(conn_cls):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                super().connect()
                watch = _watching()
                if watch is not None:
                    watch.add(self.sock)             # the socket the response is read from (TLS or not)
        return Conn

    def pool(pool_cls: type, conn_cls: type) -> type:
        class Pool(pool_cls):  # type: ignore[misc, valid-type]
            ConnectionCls = watched(conn_cls)

            def _get_conn(self, timeout: float | None = None) -> Any:
                conn = super()._get_conn(timeout)
                watch = _watching()
                if watch is not None and getattr(conn, "sock", None) is not None:
                    watch.add(conn.sock)             # a kept-alive connection from the pool
                return conn
        return Pool

    classes = {"http": pool(cp.HTTPConnectionPool, uc.HTTPConnection),
               "https": pool(cp.HTTPSConnectionPool, uc.HTTPSConnection)}

    class WatchedAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kw: Any) -> None:
            super().init_poolmanager(*args, **kw)
            self.poolmanager.pool_classes_by_scheme = dict(classes)

        def proxy_manager_for(self, proxy: str, **kw: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **kw)
            manager.pool_classes_by_scheme = dict(classes)
            return manager

    _ADAPTER.append(WatchedAdapter)
    return WatchedAdapter


def _session(session: Any = None) -> Any:
    """``session`` (or a new requests.Session) with the watched adapter mounted for http and https."""
    cls = _adapter_class()
    sess = session if session is not None else _requests().Session()
    for prefix in ("http://", "https://"):
        if not isinstance(sess.adapters.get(prefix), cls):
            sess.mount(prefix, cls())
    return sess


def _backoff(attempt: int, deadline: Deadline) -> None:
    base = config.retry_backoff()
    if base > 0:
        delay = min(_BACKOFF_CAP, base * (2 ** attempt))
        deadline.sleep(delay * (0.75 + 0.5 * random.random()))


def _wait_before_retry(e: "_Retry", attempt: int, deadline: Deadline, what: str, errors: list[str],
                       **details: Any) -> None:
    """Sleep before the next attempt: the server's Retry-After when it gave one (up to the
    deadline: one that asks for longer ends the fetch now), else exponential backoff."""
    if e.retry_after is not None:
        if e.retry_after > deadline.remaining():
            raise FetchError(
                f"{what}: the server asks to retry after {e.retry_after:g} s, beyond what is left of the "
                f"{deadline.seconds:g} s deadline (RTXPACK_DOWNLOAD_DEADLINE): " + "; ".join(errors[-3:]),
                fix="try again later, or raise RTXPACK_DOWNLOAD_DEADLINE", errors=errors, **details)
        deadline.sleep(e.retry_after)
    else:
        _backoff(attempt, deadline)


class _Retry(Exception):
    """A transient failure: try this source again (partial bytes are kept)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NextSource(Exception):
    """This source cannot deliver the artifact (404, 403...): go to the next one without retrying."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# -- artifacts -----------------------------------------------------------------------------------
def fetch_artifact(
    artifact: Any,
    *,
    repo: str | os.PathLike[str] | Location | None,
    store: Store | None = None,
    progress: bool | None = None,
    session: requests.Session | None = None,
    stats: FetchStats | None = None,
    offline: bool | None = None,
    verify_stored: bool = False,
) -> Path:
    """Make ``artifact`` (attributes ``sha256``, ``size``, ``path``, ``mirrors``) present and
    verified in the local store; return its path there.

    ``progress``: None shows a tqdm bar only when stderr is a terminal; callers printing
    ``--json`` pass False. ``verify_stored``: a copy already in the store is re-hashed now (and
    fetched again when it was damaged); without it, a stored copy of the right size is trusted.
    Raises :class:`OfflineError`, :class:`ChecksumMismatch` (some source served wrong bytes and
    none served right ones) or :class:`FetchError`.
    """
    store = store if store is not None else Store()
    stats = stats if stats is not None else FetchStats()
    sha = check_sha256(artifact.sha256)
    size = int(artifact.size)
    label = _label(artifact)
    check_settings()
    deadline = Deadline()

    path = _from_store(store, sha, size, verify_stored)
    if path is not None:
        stats.from_store = True
        return path

    offline = config.offline() if offline is None else offline
    locations: list[str] = []
    if repo is not None:
        locations.append(Location.parse(repo).join(artifact.path))
    locations.extend(str(m) for m in (getattr(artifact, "mirrors", None) or ()))
    if offline:
        locations = [loc for loc in locations if not _is_http(loc)]
        if not any(_local_path(loc).is_file() for loc in locations):
            raise OfflineError(
                f"{label} is not in the local store and RTXPACK_OFFLINE=1 forbids downloading it",
                fix=_BUNDLE_FIX, sha256=sha, size=size, artifact=str(getattr(artifact, "id", "") or sha),
                store=str(store.root),
            )
    if not locations:
        raise FetchError(f"{label} is not in the local store and no repository or mirror was given",
                         fix="pass --repo URL|DIR", sha256=sha)

    meta = {k: str(getattr(artifact, k)) for k in ("id", "model", "kind") if getattr(artifact, k, None)}
    if getattr(artifact, "path", None):
        meta["name"] = Path(str(artifact.path)).name
    own_session = session is None
    lock = store.lock(sha)
    try:
        lock.acquire(timeout=deadline.remaining())
    except LockTimeout as e:
        raise deadline.error(f"waiting for another process to fetch {label}", [e.message], sha256=sha) from e
    try:
        # Another process may have finished it while we waited for the lock.
        path = _from_store(store, sha, size, verify_stored)
        if path is not None:
            stats.from_store = True
            return path
        if any(_is_http(loc) for loc in locations):
            session = _session(session)
        try:
            return _fetch_locked(store, sha, size, label, locations, meta, session, progress, stats, deadline)
        finally:
            if own_session and session is not None:
                session.close()
    finally:
        lock.release()


def _from_store(store: Store, sha: str, size: int, verify: bool) -> Path | None:
    if verify:
        return store.verified_path(sha, size)
    return store.get(sha) if store.has(sha, size) else None


def _fetch_locked(store: Store, sha: str, size: int, label: str, locations: list[str],
                  meta: dict[str, str], session: requests.Session | None, progress: bool | None,
                  stats: FetchStats, deadline: Deadline) -> Path:
    mismatch: ChecksumMismatch | None = None
    errors: list[str] = []
    attempts = 1 + max(0, config.max_retries())
    sources = [redact(x) for x in locations]
    for loc in locations:
        shown = redact(loc)
        last: _Retry | None = None
        for attempt in range(attempts):
            if deadline.expired:
                raise deadline.error(f"fetching {label}", errors, sha256=sha, sources=sources)
            if attempt:
                stats.retries += 1
                assert last is not None
                _wait_before_retry(last, attempt - 1, deadline, f"fetching {label}", errors, sha256=sha,
                                   sources=sources)
            try:
                if _is_http(loc):
                    assert session is not None
                    with _Watch(deadline.remaining()) as watch:
                        try:
                            path = _download_http(store, sha, size, loc, session, progress, stats, meta)
                        except _Retry as e:
                            if watch.fired:
                                raise _Retry(f"{e} (cut at the deadline)") from e
                            raise
                else:
                    path = _copy_local(store, sha, size, _local_path(loc), stats, meta)
                stats.source = shown
                return path
            except ChecksumMismatch as e:
                mismatch = e
                errors.append(redact_text(f"{shown}: {e}"))
                stats.errors.append(errors[-1])
                break  # this source serves wrong bytes; the partial is gone; try the next source
            except _NextSource as e:
                errors.append(redact_text(f"{shown}: {e}"))
                stats.errors.append(errors[-1])
                break
            except _Retry as e:
                last = e
                errors.append(redact_text(f"{shown}: {e}"))
                stats.errors.append(errors[-1])
                if deadline.expired:
                    raise deadline.error(f"fetching {label}", errors, sha256=sha, sources=sources) from e
            except (StoreError, OfflineError):
                raise
    if mismatch is not None:
        raise ChecksumMismatch(
            f"{label}: every source failed and at least one served wrong bytes; nothing was installed. "
            + summarize(errors),
            fix="the repository or mirror is corrupt or was changed after publishing; re-publish it or use another mirror",
            sha256=sha, expected_sha256=sha, actual_sha256=mismatch.actual_sha256,
            url=redact(mismatch.url) if mismatch.url else None, sources=sources, errors=errors,
        )
    raise FetchError(
        f"could not fetch {label} from any source: " + summarize(errors),
        fix="check the repository URL and your network, or " + _BUNDLE_FIX.split(", or ")[-1],
        sha256=sha, sources=sources, errors=errors,
    )


#: write() size. Measured on this project's VMs (ext4, 512 MiB from loopback nginx): 32 KiB writes
#: ran 1.3-1.5x curl's speed where 256 KiB writes ran 0.5-0.7x, with half the CPU time; curl
#: itself writes 16 KiB at a time. Large writes into fresh page-cache pages are the slow part.
WRITE_SLICE = 32 << 10


def _write_all(f: Any, data: memoryview) -> None:
    """Write ``data`` in WRITE_SLICE pieces; a short write (disk full, RLIMIT_FSIZE) is retried
    until it is complete or raises, and a zero-length write is reported as disk full."""
    while data:
        n = f.write(data[:WRITE_SLICE])
        if not n:
            raise OSError(errno.ENOSPC, "no space left (short write)")
        data = data[n:]


def _disk_error(e: OSError, path: Path, size: int) -> StoreError:
    return write_error(e, path, f"a download of {size} bytes", needed=size)


def _copy_local(store: Store, sha: str, size: int, src: Path, stats: FetchStats, meta: dict[str, str]) -> Path:
    """Copy a file of a directory repository: a regular file only (a fifo or device is refused
    without being read), exactly its declared size (a file that grows is refused at size + 1)."""
    try:
        fd = open_regular(src, follow_links=True)
    except FileNotFoundError:
        raise _NextSource(f"{src} does not exist") from None
    except UnsafeFile as e:
        raise _NextSource(f"{src} {e.problem}") from e
    except OSError as e:
        raise _NextSource(f"{src}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb", buffering=0) as fin:
        actual_size = os.fstat(fin.fileno()).st_size
        if actual_size != size:
            raise ChecksumMismatch(f"{src} has {actual_size} bytes, expected {size}", sha256=sha,
                                   expected_sha256=sha, expected_size=size, actual_size=actual_size, url=str(src))
        store.ensure_free_space(size, what=f"sha256 {sha[:12]}…")
        buf = bytearray(min(CHUNK, size + 1))
        view = memoryview(buf)
        with store.new_blob(sha, size) as out:
            try:
                while out.size <= size and (n := fin.readinto(view[:min(len(buf), size + 1 - out.size)])):
                    try:
                        _write_all(out, view[:n])
                    except OSError as e:
                        raise _disk_error(e, out.tmp, size) from e
                    stats.bytes_downloaded += n
            except StoreError:
                raise
            except OSError as e:
                raise _Retry(f"reading {src}: {e}") from e
            try:
                return store.commit_blob(out, sha, size, meta=meta)
            except ChecksumMismatch as e:
                raise e.with_details(url=str(src))


def _open_partial(store: Store, sha: str, size: int, stats: FetchStats) -> tuple[BinaryIO, int, Any]:
    """The resumable download file, opened safely: (file, bytes already there, sha256 of them).

    Our own regular file with one link is resumed (its bytes re-hashed through the same
    descriptor); anything else at that name (a planted link, a directory, a fifo, a hard link to
    a file elsewhere, another user's file, more bytes than the artifact) is removed and a new
    file is created with O_EXCL | O_NOFOLLOW."""
    path = store.partial_path(sha)
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        own = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and own and st.st_size <= size:
            try:
                fd = open_regular(path, write=True)
            except OSError:
                fd = -1
            if fd >= 0:
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino, fst.st_nlink) == (st.st_dev, st.st_ino, 1):
                    f = os.fdopen(fd, "r+b", buffering=0)
                    h, have = _hash_prefix(f, size)
                    return f, have, h
                os.close(fd)
        stats.restarts += 1
        _drop(path, _info_path(path))
    for _ in range(4):
        try:
            fd = open_new(path)
        except FileExistsError:
            _drop(path)                               # planted between our check and the create
            continue
        except OSError as e:
            raise _disk_error(e, path, size) from e
        return os.fdopen(fd, "wb", buffering=0), 0, hashlib.sha256()
    raise StoreError(f"cannot create {path}: something keeps creating that name",
                     fix="check who else writes into this cache folder (RTXPACK_CACHE_DIR)", path=str(path))


def _hash_prefix(f: BinaryIO, size: int) -> tuple[Any, int]:
    h, n = hashlib.sha256(), 0
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n < size and (k := f.readinto(view[:min(len(buf), size - n)])):  # type: ignore[attr-defined]
        h.update(view[:k])
        n += k
    return h, n


def _restart(f: BinaryIO, info_path: Path, stats: FetchStats) -> tuple[Any, int]:
    """Throw the partial's bytes away (through our own descriptor) and start from zero."""
    stats.restarts += 1
    f.seek(0)
    f.truncate()
    _drop(info_path)
    return hashlib.sha256(), 0


def _info_path(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _download_http(store: Store, sha: str, size: int, url: str, session: requests.Session,
                   progress: bool | None, stats: FetchStats, meta: dict[str, str]) -> Path:
    partial = store.partial_path(sha)
    info_path = _info_path(partial)
    shown = redact(url)
    f, have, h = _open_partial(store, sha, size, stats)
    identity = (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
    clean_try_left = True
    try:
        while True:
            if have == size:  # complete from an earlier run; no request needed
                f.close()
                try:
                    return store.commit_temp(partial, sha, size, actual_sha256=h.hexdigest(), meta=meta,
                                             identity=identity)
                except ChecksumMismatch:
                    stats.restarts += 1
                    _drop(partial, info_path)
                    f, have, h = _open_partial(store, sha, size, stats)
                    identity = (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
                    continue
            store.ensure_free_space(size - have, what=f"sha256 {sha[:12]}…")
            resumed = 0
            headers = dict(_HEADERS)
            if have:
                headers["Range"] = f"bytes={have}-"
                info = _read_info(store, info_path)
                if info.get("url") == shown and isinstance(info.get("etag"), str):
                    headers["If-Range"] = info["etag"]
            resp = _get(session, url, headers, stats)
            try:
                if have and resp.status_code == 416:
                    # The server thinks our partial is past the end: the partial is not what it serves.
                    h, have = _restart(f, info_path, stats)
                    continue
                _check_status(resp, url)
                if have and resp.status_code == 206:
                    start = _content_range_start(resp.headers.get("Content-Range"))
                    if start != have:
                        h, have = _restart(f, info_path, stats)
                        continue
                    stats.resumed_from = resumed = have
                elif have:
                    # 200 to a Range request: the body is the whole file; start over cleanly from zero.
                    h, have = _restart(f, info_path, stats)
                _write_info(info_path, shown, resp.headers.get("ETag"))
                bar = _progress_bar(progress, size, have, meta)
                try:
                    def received(n: int) -> None:
                        nonlocal have
                        if have + n > size:
                            raise ChecksumMismatch(
                                f"{shown} sent more than the expected {size} bytes", sha256=sha,
                                expected_sha256=sha, expected_size=size, url=shown)
                        have += n
                        stats.bytes_downloaded += n
                        if bar is not None:
                            bar.update(n)

                    try:
                        _stream_body(resp, h, f, received)
                    except _WriteFailed as e:
                        _drop(partial, info_path)       # disk full: free what the partial holds
                        raise _disk_error(e.error, partial, size) from e.error
                except ChecksumMismatch:
                    _drop(partial, info_path)
                    raise
                except _body_errors() as e:
                    raise _Retry(redact_text(f"connection lost after {have} of {size} bytes "
                                             f"({type(e).__name__}: {e})")) from e
                finally:
                    if bar is not None:
                        bar.close()
            finally:
                resp.close()
            if have < size:
                raise _Retry(f"body ended after {have} of {size} bytes")
            f.close()
            try:
                path = store.commit_temp(partial, sha, size, actual_sha256=h.hexdigest(), meta=meta,
                                         identity=identity)
            except ChecksumMismatch as e:
                _drop(partial, info_path)
                if resumed and clean_try_left:
                    # The bad bytes may be the old partial's (e.g. written from another server): one clean try.
                    clean_try_left = False
                    stats.restarts += 1
                    f, have, h = _open_partial(store, sha, size, stats)
                    identity = (os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
                    continue
                raise e.with_details(url=shown)
            _drop(info_path)
            return path
    finally:
        f.close()


#: read the body with http.client's readinto into reused buffers (see _stream_body); tests turn
#: it off to cover the portable urllib3 read1 path too
FAST_BODY = True
_BUFFER = 256 << 10   # small enough that the hasher and write() find the bytes still in L2/L3
_NBUFFERS = 16        # at most 4 MiB in flight between the reading, writing and hashing threads


class _WriteFailed(Exception):
    """Writing the partial file failed (disk full...): not a network problem, never retried."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _stream_body(resp: requests.Response, h: Any, f: Any, received: Callable[[int], None]) -> None:
    """Write the body to ``f`` and hash it into ``h``, each in its own thread, while this thread
    reads from the socket; ``received(n)`` is called (here) for every piece before it is handed on.

    hashlib and file writes release the GIL, so on two cores socket reads, the disk write and the
    sha256 overlap; measured, a write in the reading thread (even with hashing moved off it)
    stays well behind curl on ext4, this does not. Buffers are reused (no allocation per read) and
    small (256 KiB: still in cache when written and hashed; measured faster than 1-2 MiB). A cut
    connection loses nothing already received; a killed process or a read timeout loses at most
    the reads in flight, which the resume fetches again. Both workers are joined before returning,
    so the partial file then holds every byte passed to ``received`` unless a write failed.
    """
    fp = getattr(resp.raw, "_fp", None)
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    fast = FAST_BODY and isinstance(fp, http.client.HTTPResponse) and not encoded
    free: queue.Queue[bytearray] = queue.Queue()
    # bounded: the read1 path hands over fresh bytes objects, which must not pile up in memory
    to_hash: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=_NBUFFERS)
    to_write: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=_NBUFFERS)
    pending: dict[int, int] = {}
    pending_lock = threading.Lock()
    hash_failed: list[BaseException] = []
    write_failed: list[OSError] = []

    def done_with(buf: Any) -> None:
        if not fast:
            return
        with pending_lock:
            pending[id(buf)] -= 1
            last = pending[id(buf)] == 0
        if last:
            free.put(buf)

    # Neither worker dies early: after an error it keeps draining, so the reader never blocks on it.
    def hasher() -> None:
        while (item := to_hash.get()) is not None:
            buf, n = item
            if not hash_failed:
                try:
                    h.update(memoryview(buf)[:n])
                except BaseException as e:  # noqa: BLE001 - re-raised in the reading thread
                    hash_failed.append(e)
            done_with(buf)

    def writer() -> None:
        while (item := to_write.get()) is not None:
            buf, n = item
            if not write_failed:
                try:
                    _write_all(f, memoryview(buf)[:n])
                except OSError as e:
                    write_failed.append(e)
            done_with(buf)

    workers = [threading.Thread(target=hasher, name="rtxpack-sha256", daemon=True),
               threading.Thread(target=writer, name="rtxpack-write", daemon=True)]
    for w in workers:
        w.start()
    try:
        if fast:
            for _ in range(_NBUFFERS):
                free.put(bytearray(_BUFFER))
            while not write_failed:
                buf = free.get()
                n = fp.readinto(buf)  # honours Content-Length / chunked; IncompleteRead if cut
                if not n:
                    break
                received(n)
                with pending_lock:
                    pending[id(buf)] = 2
                to_write.put((buf, n))
                to_hash.put((buf, n))
        else:
            raw = resp.raw
            read1 = getattr(raw, "read1", None)
            while not write_failed:
                chunk = read1(_BUFFER * 4, decode_content=False) if read1 else raw.read(_BUFFER, decode_content=False)
                if not chunk:
                    break
                received(len(chunk))
                to_write.put((chunk, len(chunk)))
                to_hash.put((chunk, len(chunk)))
    finally:
        to_write.put(None)
        to_hash.put(None)
        for w in workers:
            w.join()
    if write_failed:
        raise _WriteFailed(write_failed[0])
    if hash_failed:
        raise hash_failed[0]


def _iter_body(resp: requests.Response) -> Iterator[bytes]:
    """The body in pieces as they arrive (small documents)."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)
    while True:
        chunk = read1(CHUNK, decode_content=False) if read1 else raw.read(1 << 20, decode_content=False)
        if not chunk:
            return
        yield chunk


def _get(session: requests.Session, url: str, headers: dict[str, str], stats: FetchStats) -> requests.Response:
    shown = redact(url)
    if config.offline():  # defensive: callers filter http sources out when offline
        raise OfflineError(f"RTXPACK_OFFLINE=1 forbids fetching {shown}", fix=_BUNDLE_FIX, url=shown)
    connect, read = config.connect_timeout(), config.read_timeout()
    stats.requests += 1
    try:
        return session.get(url, headers=headers, stream=True, timeout=(connect, read))
    except _requests().Timeout as e:
        raise _Retry(f"timed out ({type(e).__name__}: connect {connect:g} s, read {read:g} s; "
                     "set RTXPACK_READ_TIMEOUT to wait longer)") from e
    except _requests().RequestException as e:
        raise _Retry(redact_text(_request_error(e, url))) from e


def _request_error(e: BaseException, url: str) -> str:
    """A connection failure in a few words ("cannot connect to host:port: connection refused"),
    not urllib3's nested repr of its retry pool."""
    from urllib.parse import urlsplit

    cause: Any = getattr(e.args[0], "reason", None) if e.args else None
    text = str(cause if cause is not None else e)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if m is None and ("Failed to resolve" in text or "NameResolutionError" in text):
        why = "the host name does not resolve"
    elif m is not None:
        why = m.group(1).strip().rstrip(".").lower()
    else:
        return f"{type(e).__name__}: {text}"
    parts = urlsplit(url)
    where = parts.hostname or "?"
    if parts.port:
        where += f":{parts.port}"
    return f"cannot connect to {where}: {why}"


def summarize(errors: list[str]) -> str:
    """Failed attempts in one line, each distinct reason once (with how many times it happened)."""
    counts: dict[str, int] = {}
    for e in errors:
        counts[e] = counts.get(e, 0) + 1
    return "; ".join(e if n == 1 else f"{e} ({n} attempts)" for e, n in counts.items())


def _check_status(resp: requests.Response, url: str) -> None:
    code = resp.status_code
    if code in (200, 206):
        return
    if code in _RETRYABLE_STATUS:
        after = retry_after(resp.headers.get("Retry-After")) if code in (429, 503) else None
        raise _Retry(f"HTTP {code}" + (f" (Retry-After: {after:g} s)" if after is not None else ""), retry_after=after)
    raise _NextSource(f"HTTP {code}", status=code)


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date); None when absent
    or unparsable (the normal backoff applies)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        assert value is not None
        unit, rng = value.split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit.strip().lower() == "bytes" else None
    except (AssertionError, ValueError):
        return None


#: the partial's info file holds a URL (without credentials) and an ETag: a few hundred bytes
_MAX_INFO_BYTES = 16 << 10


def _read_info(store: Store, path: Path) -> dict[str, Any]:
    data = store.read_state(path, _MAX_INFO_BYTES)
    try:
        info = json.loads(data) if data is not None else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _write_info(path: Path, url: str, etag: str | None) -> None:
    """Best effort (resuming works without it): the URL without credentials and the ETag."""
    try:
        store_file(path, json.dumps({"url": redact(url), "etag": etag}).encode(), what="a download's info file")
    except StoreError:
        pass


def _drop(*paths: Path) -> None:
    for p in paths:
        try:
            remove_any(p)
        except OSError:
            pass


def _progress_bar(progress: bool | None, total: int, initial: int, meta: dict[str, str]) -> Any:
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    # what the user asked for, not the blob's hash: "mlp engine" (model and artifact kind)
    label = " ".join(dict.fromkeys(v for v in (meta.get("model"), meta.get("kind")) if v)) or meta.get("id") or "artifact"
    label = "".join(c if c.isprintable() else "?" for c in label)
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, file=sys.stderr, leave=False, dynamic_ncols=True)


# -- small documents -----------------------------------------------------------------------------
def fetch_bytes(
    url_or_path: str | os.PathLike[str],
    *,
    max_size: int,
    session: requests.Session | None = None,
    stats: FetchStats | None = None,
    offline: bool | None = None,
) -> bytes:
    """The bytes of a small document (``manifest.json``...) at a URL, ``file://`` URL or path.

    More than ``max_size`` bytes is a :class:`FetchError` (a hostile or broken server cannot fill
    memory); a local fifo, device or directory is refused without being read. HTTP gets the same
    timeouts, retries and overall deadline as artifacts; offline mode only reads files.
    """
    stats = stats if stats is not None else FetchStats()
    check_settings()
    loc = os.fspath(url_or_path)
    if not _is_http(loc):
        path = _local_path(loc)
        try:
            data = read_regular(path, max_size, follow_links=True)
        except FileNotFoundError as e:
            raise FetchError(f"{path} does not exist", fix="check the --repo path", path=str(path), http_status=404) from e
        except UnsafeFile as e:
            raise FetchError(f"{e}; refused without reading it", fix="check the --repo path", path=str(path),
                             max_bytes=max_size) from e
        except OSError as e:
            raise FetchError(f"cannot read {path}: {e.strerror or e}", fix="check the --repo path and its permissions",
                             path=str(path)) from e
        stats.bytes_downloaded += len(data)
        return data
    shown = redact(loc)
    if config.offline() if offline is None else offline:
        raise OfflineError(f"RTXPACK_OFFLINE=1 forbids fetching {shown}", fix=_BUNDLE_FIX, url=shown)
    own = session is None
    sess = _session(session)
    errors: list[str] = []
    deadline = Deadline()
    last: _Retry | None = None
    try:
        for attempt in range(1 + max(0, config.max_retries())):
            if attempt:
                stats.retries += 1
                assert last is not None
                _wait_before_retry(last, attempt - 1, deadline, f"fetching {shown}", errors, url=shown)
            if deadline.expired:
                break
            try:
                with _Watch(deadline.remaining()) as watch:
                    try:
                        return _fetch_document(sess, loc, max_size, stats)
                    except _Retry as e:
                        if watch.fired:
                            raise _Retry(f"{e} (cut at the deadline)") from e
                        raise
            except _NextSource as e:
                raise FetchError(f"{shown}: {e}", fix="check the repository URL", url=shown,
                                 http_status=e.status) from e
            except _Retry as e:
                last = e
                errors.append(str(e))
                stats.errors.append(f"{shown}: {e}")
            if deadline.expired:
                break
    finally:
        if own:
            sess.close()
    if deadline.expired:
        raise deadline.error(f"fetching {shown}", errors, url=shown)
    raise FetchError(f"could not fetch {shown}: " + summarize(errors),
                     fix="check the repository URL and your network", url=shown, errors=errors)


def _fetch_document(sess: Any, loc: str, max_size: int, stats: FetchStats) -> bytes:
    resp = _get(sess, loc, dict(_HEADERS), stats)
    try:
        _check_status(resp, loc)
        length = resp.headers.get("Content-Length")
        if length and length.isdigit():
            _check_cap(int(length), max_size, loc)
        buf = bytearray()
        for chunk in _iter_body(resp):
            buf += chunk
            _check_cap(len(buf), max_size, loc)
        if length and length.isdigit() and len(buf) < int(length):
            raise _Retry(f"body ended after {len(buf)} of {length} bytes")
        stats.bytes_downloaded += len(buf)
        stats.source = redact(loc)
        return bytes(buf)
    except _body_errors() as e:
        raise _Retry(redact_text(f"{type(e).__name__}: {e}")) from e
    finally:
        resp.close()


def _check_cap(n: int, max_size: int, where: str) -> None:
    if n > max_size:
        raise FetchError(f"{redact(where)} is larger than the {max_size}-byte limit for this document",
                         fix="check that the URL points at the right document", url=redact(where), max_bytes=max_size)


__all__ = ["CHUNK", "Deadline", "FetchStats", "fetch_artifact", "fetch_bytes", "retry_after"]
