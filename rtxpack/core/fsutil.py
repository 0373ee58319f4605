"""Never write to a final path: the one streaming atomic writer every writer of a final file uses.

:class:`AtomicFile` creates an unpredictable temp name beside the destination (or in a given
folder of the same filesystem) with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a planted symbolic
link is never followed and a name is never shared; bytes are streamed in, optionally hashed;
``commit()`` fsyncs, sets the mode and renames over the destination (a reader sees the old file
or the new one, never a torn one); leaving the ``with`` block without ``commit()`` (an exception,
a check that failed) removes the temp file. :func:`atomic_write` is the one-shot form.

Reading is bounded and never blocks on a special file: :func:`read_regular` refuses a fifo, a
device, a directory (and, with ``follow_links=False``, a symbolic link) without reading it, and
a file larger than the caller's limit before reading it. :func:`write_error` turns an ``OSError``
of a write (disk full, read-only folder) into one :class:`StoreError` naming the path and what
was needed.
"""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

from .errors import StoreError

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: errno values that mean "this folder cannot be written" (read-only mount, another user's folder)
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: errno values that mean "no space" (disk full, quota, RLIMIT_FSIZE)
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class UnsafeFile(OSError):
    """A path that must be a regular file is something else, or is larger than allowed."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(errno.EINVAL, problem, os.fspath(path))
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.filename} {self.problem}"


def kind_of(mode: int) -> str:
    """What a ``st_mode`` is, for messages: 'a symbolic link', 'a directory', 'a fifo'..."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "an unknown kind of file"


def open_regular(path: str | os.PathLike[str], *, follow_links: bool = False, write: bool = False) -> int:
    """A descriptor of the regular file at ``path``, opened without blocking on a fifo and (by
    default) without following a symbolic link; :class:`UnsafeFile` when it is anything else.

    The kind is checked with ``lstat``/``stat`` before opening (a device is never opened) and again
    with ``fstat`` after (the name may have been swapped in between)."""
    st = os.stat(path) if follow_links else os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(path, f"is {kind_of(st.st_mode)}, not a regular file")
    flags = (os.O_RDWR if write else os.O_RDONLY) | _O_NONBLOCK | _O_BINARY | _O_CLOEXEC
    fd = os.open(path, flags | (0 if follow_links else _O_NOFOLLOW))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, f"is {kind_of(st.st_mode)}, not a regular file")
        if _O_NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], max_bytes: int, *, follow_links: bool = False) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    A fifo, device, directory or socket (or a symbolic link, unless ``follow_links``) is refused
    without reading, a file larger than ``max_bytes`` before reading (:class:`UnsafeFile`); a file
    that grows while it is read is refused too. ``FileNotFoundError`` passes through."""
    fd = open_regular(path, follow_links=follow_links)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise UnsafeFile(path, f"is {size} bytes, larger than the {max_bytes}-byte limit")
        chunks, n = [], 0
        while n <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
        if n > max_bytes:
            raise UnsafeFile(path, f"grew past the {max_bytes}-byte limit while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def remove_any(path: str | os.PathLike[str]) -> bool:
    """Remove whatever is at ``path`` (file, link, fifo: unlinked; directory: removed with its
    contents, links inside removed, never followed). True when something was there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
    return True


def is_writable(path: str | os.PathLike[str]) -> bool:
    """Whether this user may create files at ``path`` (its nearest existing ancestor): False on a
    read-only mount or in another account's folder."""
    p = Path(path)
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    return os.access(p, os.W_OK)


def write_error(e: OSError, path: str | os.PathLike[str], what: str, *, needed: int | None = None,
                folder: str | os.PathLike[str] | None = None) -> StoreError:
    """One clear :class:`StoreError` for a failed write of ``what`` at ``path`` (``needed`` bytes)."""
    where = Path(folder) if folder is not None else Path(path).parent
    why = e.strerror or str(e)
    if e.errno in NO_SPACE_ERRNOS:
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = None
        need = f"{needed} bytes needed" if needed is not None else "more space needed"
        have = f", {free} free" if free is not None else ""
        return StoreError(f"no space for {what}: writing {path} failed ({why}); {need}{have} in {where}; "
                          "nothing was left half-written",
                          fix="free disk space, run `rtxpack cache prune --max-size <size>`, or set RTXPACK_CACHE_DIR "
                              "to a larger disk", path=str(path), needed_bytes=needed, free_bytes=free)
    if e.errno in READ_ONLY_ERRNOS:
        return StoreError(f"cannot write {what}: the folder {where} is read-only for this user ({why})",
                          fix="set RTXPACK_CACHE_DIR to a writable directory (a read-only store still serves and "
                              "verifies what it holds)", path=str(path))
    return StoreError(f"cannot write {what} to {path}: {why}", fix="check the disk and the folder's permissions",
                      path=str(path))


def open_new(path: str | os.PathLike[str], mode: int = 0o600) -> int:
    """A new file at exactly ``path`` (never an existing file, never through a symbolic link)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, mode)


def temp_name(directory: Path, prefix: str) -> Path:
    return directory / f".{prefix}.{secrets.token_hex(8)}.tmp"


class AtomicFile:
    """A streaming atomic writer (see the module doc). ``hash=True`` keeps a sha256 of what was written."""

    def __init__(self, dest: str | os.PathLike[str], *, mode: int = 0o644, tmp_dir: str | os.PathLike[str] | None = None,
                 hash: bool = False, prefix: str | None = None) -> None:
        self.dest = Path(dest)
        self.mode = mode
        folder = Path(tmp_dir) if tmp_dir is not None else self.dest.parent
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(16):
            self.tmp = temp_name(folder, prefix or self.dest.name)
            try:
                self._fd = open_new(self.tmp)
                break
            except FileExistsError:  # someone planted this name: take another
                continue
        else:  # pragma: no cover - 16 collisions of 64 random bits
            raise FileExistsError(f"cannot create a temp file in {folder}")
        self._f = os.fdopen(self._fd, "wb", buffering=0)
        self._h = hashlib.sha256() if hash else None
        self.size = 0
        self.done = False

    # -- writing ---------------------------------------------------------------------------------
    def write(self, data: Any) -> int:
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            if not n:
                raise OSError(errno.ENOSPC, "no space left (short write)", str(self.tmp))
            if self._h is not None:
                self._h.update(view[:n])
            self.size += n
            view = view[n:]
        return len(data)

    def fileno(self) -> int:
        return self._f.fileno()

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    @property
    def sha256(self) -> str:
        if self._h is None:
            raise ValueError("AtomicFile(hash=False) keeps no digest")
        return self._h.hexdigest()

    # -- finishing -------------------------------------------------------------------------------
    def commit(self, dest: str | os.PathLike[str] | None = None) -> Path:
        """fsync, chmod, rename over the destination (``dest`` when the name is known only now, e.g.
        a content address). Returns the destination."""
        if dest is not None:
            self.dest = Path(dest)
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            if hasattr(os, "fchmod"):
                os.fchmod(self._f.fileno(), self.mode)
            ident = _identity(os.fstat(self._f.fileno()))
            self._f.close()
            os.replace(self.tmp, self.dest)
        except BaseException:
            self.abort()
            raise
        self.done = True
        check_moved(self.dest, ident)
        _fsync_dir(self.dest.parent)
        return self.dest

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        self.done = True

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.done:
            self.abort()


def atomic_write(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` atomically (temp beside it, fsync, rename); nothing is left on failure."""
    with AtomicFile(path, mode=mode) as f:
        f.write(data)
        return f.commit()


def store_file(path: str | os.PathLike[str], data: bytes, *, what: str, mode: int = 0o644) -> Path:
    """:func:`atomic_write` for a file inside a cache folder: whatever sits at ``path`` that is not a
    regular file (a planted link, a directory, a fifo) is removed first, and a failed write (disk
    full, read-only folder) is one :func:`write_error` naming the path and the bytes needed."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            remove_any(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise write_error(e, path, what, needed=len(data)) from e
    try:
        return atomic_write(path, data, mode=mode)
    except UnsafeFile as e:
        raise StoreError(f"cannot write {what}: {e}", fix="check who else writes into this cache folder",
                         path=str(path)) from e
    except OSError as e:
        raise write_error(e, path, what, needed=len(data)) from e


def replace_into(tmp: str | os.PathLike[str], dest: str | os.PathLike[str], *, mode: int | None = None,
                 identity: tuple[int, int] | None = None) -> Path:
    """Move a finished temp file (e.g. a resumed download) over ``dest``: fsync, chmod, rename.

    ``identity`` (device, inode) of the file the caller wrote: when the name ``tmp`` no longer
    holds that file (swapped by someone else), nothing is moved in (:class:`UnsafeFile`)."""
    fd = open_regular(tmp, write=True)
    try:
        ident = _identity(os.fstat(fd))
        if identity is not None and ident != identity:
            raise UnsafeFile(tmp, "was replaced by another file while it was written; not moved in")
        os.fsync(fd)
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    check_moved(dest, ident)
    _fsync_dir(Path(dest).parent)
    return Path(dest)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def check_moved(dest: str | os.PathLike[str], identity: tuple[int, int]) -> None:
    """After a rename: ``dest`` must be the very file that was renamed (a swap between the last
    check and the rename would otherwise put someone else's file, or a link, in place)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        raise UnsafeFile(dest, "vanished right after it was moved in") from None
    if not stat.S_ISREG(st.st_mode) or (identity[1] and _identity(st) != identity):
        try:
            os.unlink(dest)
        except OSError:
            pass
        raise UnsafeFile(dest, "is not the file that was moved in (swapped concurrently); removed")


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); best effort (not possible on Windows or some filesystems)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
