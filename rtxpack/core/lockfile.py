"""One lock file per protected thing (a blob being fetched, a state file being rewritten).

Why not ``filelock``: a lock lives in a cache folder that other accounts may share, so opening it
must never follow a planted symbolic link, never truncate or write through it, never block on a
fifo, and never open a device; and a lock that cannot be taken must be one clear
:class:`StoreError` (who holds it, for how long we waited, what to do), not a traceback.

:class:`LockFile` opens ``path`` with ``O_CREAT | O_NOFOLLOW | O_NONBLOCK`` (no ``O_TRUNC``), checks
with ``fstat`` that it is a regular file, and takes an exclusive ``flock`` (``msvcrt.locking`` on
Windows). Anything else at the lock's name (a link, a fifo, a directory) belongs to nobody: it is
removed and the lock file created in its place. Waiting is bounded by ``timeout`` seconds. The
lock is compatible with ``filelock`` on the same file (both use ``flock``).
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import READ_ONLY_ERRNOS, kind_of, remove_any, write_error

_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
          | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class LockTimeout(StoreError):
    """The lock is held by someone else for longer than the caller may wait."""


class LockFile:
    """An exclusive inter-process lock on ``path`` (see the module doc); a context manager.

    ``what`` names the protected thing in messages; ``timeout`` bounds the wait (seconds; 0: one
    try). Not re-entrant: one object, one holder."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float, what: str = "a lock",
                 timeout_fix: str | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.what = what
        self.timeout_fix = timeout_fix
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        for _ in range(8):
            try:
                st = os.lstat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and not stat.S_ISREG(st.st_mode):
                self._heal(kind_of(st.st_mode))
                continue
            try:
                fd = os.open(self.path, _FLAGS, 0o666)
            except FileNotFoundError:
                continue                                   # removed between lstat and open
            except OSError as e:
                if e.errno in READ_ONLY_ERRNOS:
                    fd = self._open_existing_read_only()   # flock needs no write access
                    if fd is not None:
                        return fd
                    raise write_error(e, self.path, self.what) from e
                try:
                    st = os.lstat(self.path)
                except OSError:
                    raise write_error(e, self.path, self.what) from e
                if stat.S_ISREG(st.st_mode):
                    raise write_error(e, self.path, self.what) from e
                self._heal(kind_of(st.st_mode))          # swapped for a link/fifo/directory meanwhile
                continue
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
            self._heal("not a regular file")
        raise StoreError(f"cannot create the lock file {self.path}: something keeps replacing it",
                         fix="check who else writes into this cache folder (RTXPACK_CACHE_DIR)", path=str(self.path))

    def _open_existing_read_only(self) -> int | None:
        try:
            fd = os.open(self.path, (_FLAGS & ~(os.O_RDWR | os.O_CREAT)) | os.O_RDONLY)
        except OSError:
            return None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        return None

    def _heal(self, kind: str) -> None:
        try:
            remove_any(self.path)
        except OSError as e:
            raise StoreError(f"the lock file {self.path} is {kind} and cannot be removed ({e.strerror or e})",
                             fix=f"remove {self.path} (rtxpack never follows links inside its store)",
                             path=str(self.path)) from e

    def acquire(self, timeout: float | None = None) -> "LockFile":
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this object")
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + max(0.0, limit)
        delay = 0.01
        while True:
            fd = self._open()
            try:
                if _try_lock(fd) and self._still_ours(fd):
                    self._fd = fd
                    return self
            except OSError as e:
                os.close(fd)
                raise StoreError(f"cannot lock {self.path}: {e.strerror or e}",
                                 fix="check the cache folder's filesystem (it must support file locks)",
                                 path=str(self.path)) from e
            os.close(fd)
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeout(
                    f"{self.what} ({self.path}) is held by another process; waited {limit:g} s",
                    fix=self.timeout_fix or "wait for the other rtxpack process to finish, or stop it",
                    path=str(self.path))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.25)

    def _still_ours(self, fd: int) -> bool:
        """The name still refers to the file we locked (not removed or replaced by a healer)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            _unlock(fd)
            return False
        fst = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            _unlock(fd)
            return False
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "LockFile":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"LockFile({str(self.path)!r}, locked={self.is_locked})"
