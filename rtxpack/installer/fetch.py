"""Getting artifacts from a repository (HTTP(S) URL or local directory) into the local store.

:func:`fetch_artifact` tries, in order: the local store (no network), ``repo/<artifact.path>``,
then each of ``artifact.mirrors``. Per HTTP source it retries transient failures (connection
errors, timeouts, 5xx, 429, a body cut short) with exponential backoff, resuming the partial
download with ``Range: bytes=N-`` after re-hashing the N bytes already on disk. sha256 is computed
while streaming; bytes that do not match are never installed. One file lock per blob makes
concurrent processes download it once. ``RTXPACK_OFFLINE=1`` makes no network call at all.

:func:`fetch_bytes` fetches small documents (``manifest.json``) with a size cap.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import http.client
import queue
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator


if TYPE_CHECKING:  # pragma: no cover
    import requests

from ..core import config
from ..core.digest import file_hasher
from ..core.errors import ChecksumMismatch, FetchError, OfflineError, StoreError
from ..core.fsutil import atomic_write
from ..core.location import Location, redact
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


def _backoff(attempt: int) -> None:
    base = config.retry_backoff()
    if base > 0:
        delay = min(_BACKOFF_CAP, base * (2 ** attempt))
        time.sleep(delay * (0.75 + 0.5 * random.random()))


class _Retry(Exception):
    """A transient failure: try this source again (partial bytes are kept)."""


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
) -> Path:
    """Make ``artifact`` (attributes ``sha256``, ``size``, ``path``, ``mirrors``) present and
    verified in the local store; return its path there.

    ``progress``: None shows a tqdm bar only when stderr is a terminal; callers printing
    ``--json`` pass False. Raises :class:`OfflineError`, :class:`ChecksumMismatch` (some source
    served wrong bytes and none served right ones) or :class:`FetchError`.
    """
    store = store if store is not None else Store()
    stats = stats if stats is not None else FetchStats()
    sha = check_sha256(artifact.sha256)
    size = int(artifact.size)
    label = _label(artifact)

    if store.has(sha, size):
        path = store.get(sha)
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
    with lock:
        # Another process may have finished it while we waited for the lock.
        if store.has(sha, size):
            stats.from_store = True
            path = store.get(sha)
            assert path is not None
            return path
        if own_session and any(_is_http(loc) for loc in locations):
            session = _requests().Session()
        try:
            return _fetch_locked(store, sha, size, label, locations, meta, session, progress, stats)
        finally:
            if own_session and session is not None:
                session.close()


def _fetch_locked(store: Store, sha: str, size: int, label: str, locations: list[str],
                  meta: dict[str, str], session: requests.Session | None, progress: bool | None,
                  stats: FetchStats) -> Path:
    mismatch: ChecksumMismatch | None = None
    errors: list[str] = []
    attempts = 1 + max(0, config.max_retries())
    for loc in locations:
        for attempt in range(attempts):
            if attempt:
                stats.retries += 1
                _backoff(attempt - 1)
            try:
                if _is_http(loc):
                    assert session is not None
                    path = _download_http(store, sha, size, loc, session, progress, stats, meta)
                else:
                    path = _copy_local(store, sha, size, _local_path(loc), stats, meta)
                stats.source = loc
                return path
            except ChecksumMismatch as e:
                mismatch = e
                errors.append(f"{loc}: {e}")
                stats.errors.append(errors[-1])
                break  # this source serves wrong bytes; the partial is gone; try the next source
            except _NextSource as e:
                errors.append(f"{loc}: {e}")
                stats.errors.append(errors[-1])
                break
            except _Retry as e:
                errors.append(f"{loc}: {e}")
                stats.errors.append(errors[-1])
            except (StoreError, OfflineError):
                raise
    if mismatch is not None:
        raise ChecksumMismatch(
            f"{label}: every source failed and at least one served wrong bytes; nothing was installed. "
            + summarize(errors),
            fix="the repository or mirror is corrupt or was changed after publishing; re-publish it or use another mirror",
            sha256=sha, expected_sha256=sha, actual_sha256=mismatch.actual_sha256, url=mismatch.url,
            sources=[redact(x) for x in locations], errors=errors,
        )
    raise FetchError(
        f"could not fetch {label} from any source: " + summarize(errors),
        fix="check the repository URL and your network, or " + _BUNDLE_FIX.split(", or ")[-1],
        sha256=sha, sources=[redact(x) for x in locations], errors=errors,
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
    return StoreError(f"writing {path}: {e.strerror or e}", path=str(path),
                      fix=f"free disk space in the rtxpack store (it needs {size} bytes) or set RTXPACK_CACHE_DIR "
                          "to a larger disk; nothing was installed")


def _copy_local(store: Store, sha: str, size: int, src: Path, stats: FetchStats, meta: dict[str, str]) -> Path:
    try:
        actual_size = src.stat().st_size
    except FileNotFoundError:
        raise _NextSource(f"{src} does not exist") from None
    except OSError as e:
        raise _NextSource(f"{src}: {e}") from e
    if actual_size != size:
        raise ChecksumMismatch(f"{src} has {actual_size} bytes, expected {size}", sha256=sha,
                               expected_sha256=sha, expected_size=size, actual_size=actual_size, url=str(src))
    store.ensure_free_space(size, what=f"sha256 {sha[:12]}…")
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with store.new_blob(sha) as out:
        try:
            with open(src, "rb", buffering=0) as fin:
                while n := fin.readinto(buf):
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


def _download_http(store: Store, sha: str, size: int, url: str, session: requests.Session,
                   progress: bool | None, stats: FetchStats, meta: dict[str, str]) -> Path:
    partial = store.partial_path(sha)
    info_path = partial.with_name(partial.name + ".json")
    h = hashlib.sha256()
    have = 0
    if partial.exists():
        have = partial.stat().st_size
        if have > size:
            stats.restarts += 1
            _drop(partial, info_path)
            have = 0
        else:
            h = _rehash(partial)
            if have == size:  # complete from an earlier run; no request needed
                try:
                    return store.commit_temp(partial, sha, size, actual_sha256=h.hexdigest(), meta=meta)
                except ChecksumMismatch:
                    stats.restarts += 1
                    _drop(partial, info_path)
                    h, have = hashlib.sha256(), 0
    store.ensure_free_space(size - have, what=f"sha256 {sha[:12]}…")

    resumed = 0
    headers = dict(_HEADERS)
    if have:
        headers["Range"] = f"bytes={have}-"
        etag = _read_info(info_path).get("etag") if _read_info(info_path).get("url") == url else None
        if etag:
            headers["If-Range"] = etag
    resp = _get(session, url, headers, stats)
    try:
        if have and resp.status_code == 416:
            # The server thinks our partial is past the end: the partial is not what it serves.
            stats.restarts += 1
            _drop(partial, info_path)
            resp.close()
            return _download_http(store, sha, size, url, session, progress, stats, meta)
        _check_status(resp, url)
        if have and resp.status_code == 206:
            start = _content_range_start(resp.headers.get("Content-Range"))
            if start != have:
                stats.restarts += 1
                _drop(partial, info_path)
                resp.close()
                return _download_http(store, sha, size, url, session, progress, stats, meta)
            stats.resumed_from = resumed = have
        elif have:
            # 200 to a Range request: the body is the whole file; start over cleanly from zero.
            stats.restarts += 1
            h, have = hashlib.sha256(), 0
        _write_info(info_path, url, resp.headers.get("ETag"))
        mode = "ab" if have else "wb"
        bar = _progress_bar(progress, size, have, meta)
        try:
            with open(partial, mode, buffering=0) as f:
                def received(n: int) -> None:
                    nonlocal have
                    if have + n > size:
                        raise ChecksumMismatch(
                            f"{redact(url)} sent more than the expected {size} bytes", sha256=sha,
                            expected_sha256=sha, expected_size=size, url=redact(url))
                    have += n
                    stats.bytes_downloaded += n
                    if bar is not None:
                        bar.update(n)

                try:
                    _stream_body(resp, h, f, received)
                except _WriteFailed as e:
                    raise _disk_error(e.error, partial, size) from e.error
        except ChecksumMismatch:
            _drop(partial, info_path)
            raise
        except _body_errors() as e:
            raise _Retry(f"connection lost after {have} of {size} bytes ({type(e).__name__}: {e})") from e
        finally:
            if bar is not None:
                bar.close()
    finally:
        resp.close()
    if have < size:
        raise _Retry(f"body ended after {have} of {size} bytes")
    try:
        path = store.commit_temp(partial, sha, size, actual_sha256=h.hexdigest(), meta=meta)
    except ChecksumMismatch as e:
        _drop(partial, info_path)
        if resumed:
            # The bad bytes may be the old partial's (e.g. written from another server): one clean try.
            stats.restarts += 1
            return _download_http(store, sha, size, url, session, progress, stats, meta)
        raise e.with_details(url=redact(url))
    info_path.unlink(missing_ok=True)
    return path


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
    if config.offline():  # defensive: callers filter http sources out when offline
        raise OfflineError(f"RTXPACK_OFFLINE=1 forbids fetching {url}", fix=_BUNDLE_FIX, url=url)
    stats.requests += 1
    try:
        return session.get(url, headers=headers, stream=True,
                           timeout=(config.connect_timeout(), config.read_timeout()))
    except _requests().Timeout as e:
        raise _Retry(f"timed out ({type(e).__name__}: connect {config.connect_timeout()} s, "
                     f"read {config.read_timeout()} s; set RTXPACK_READ_TIMEOUT to wait longer)") from e
    except _requests().RequestException as e:
        raise _Retry(_request_error(e, url)) from e


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
        raise _Retry(f"HTTP {code}")
    raise _NextSource(f"HTTP {code}", status=code)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        assert value is not None
        unit, rng = value.split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit.strip().lower() == "bytes" else None
    except (AssertionError, ValueError):
        return None


def _rehash(path: Path) -> "hashlib._Hash":
    return file_hasher(path)


def _read_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_info(path: Path, url: str, etag: str | None) -> None:
    try:
        atomic_write(path, json.dumps({"url": redact(url), "etag": etag}).encode(), mode=0o600)
    except OSError:
        pass


def _drop(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _progress_bar(progress: bool | None, total: int, initial: int, meta: dict[str, str]) -> Any:
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    # what the user asked for, not the blob's hash: "mlp engine" (model and artifact kind)
    label = " ".join(dict.fromkeys(v for v in (meta.get("model"), meta.get("kind")) if v)) or meta.get("id") or "artifact"
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
    memory). HTTP gets the same timeouts and retries as artifacts; offline mode only reads files.
    """
    stats = stats if stats is not None else FetchStats()
    loc = os.fspath(url_or_path)
    if not _is_http(loc):
        path = _local_path(loc)
        try:
            with open(path, "rb") as f:
                data = f.read(max_size + 1)
        except FileNotFoundError as e:
            raise FetchError(f"{path} does not exist", fix="check the --repo path", path=str(path), http_status=404) from e
        except OSError as e:
            raise FetchError(f"cannot read {path}: {e}", fix="check the --repo path and its permissions",
                             path=str(path)) from e
        _check_cap(len(data), max_size, str(path))
        stats.bytes_downloaded += len(data)
        return data
    if config.offline() if offline is None else offline:
        raise OfflineError(f"RTXPACK_OFFLINE=1 forbids fetching {redact(loc)}", fix=_BUNDLE_FIX, url=redact(loc))
    own = session is None
    sess = session or _requests().Session()
    errors: list[str] = []
    try:
        for attempt in range(1 + max(0, config.max_retries())):
            if attempt:
                stats.retries += 1
                _backoff(attempt - 1)
            try:
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
                    stats.source = loc
                    return bytes(buf)
                except _body_errors() as e:
                    raise _Retry(f"{type(e).__name__}: {e}") from e
                finally:
                    resp.close()
            except _NextSource as e:
                raise FetchError(f"{redact(loc)}: {e}", fix="check the repository URL", url=redact(loc),
                                 http_status=e.status) from e
            except _Retry as e:
                errors.append(str(e))
                stats.errors.append(f"{loc}: {e}")
    finally:
        if own:
            sess.close()
    raise FetchError(f"could not fetch {redact(loc)}: " + summarize(errors),
                     fix="check the repository URL and your network", url=redact(loc), errors=errors)


def _check_cap(n: int, max_size: int, where: str) -> None:
    if n > max_size:
        raise FetchError(f"{redact(where)} is larger than the {max_size}-byte limit for this document",
                         fix="check that the URL points at the right document", url=redact(where), max_bytes=max_size)


__all__ = ["CHUNK", "FetchStats", "fetch_artifact", "fetch_bytes"]
