"""Never write to a final path: the one streaming atomic writer every writer of a final file uses.

:class:`AtomicFile` creates an unpredictable temp name beside the destination (or in a given
folder of the same filesystem) with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a planted symbolic
link is never followed and a name is never shared; bytes are streamed in, optionally hashed;
``commit()`` fsyncs, sets the mode and renames over the destination (a reader sees the old file
or the new one, never a torn one); leaving the ``with`` block without ``commit()`` (an exception,
a check that failed) removes the temp file. :func:`atomic_write` is the one-shot form.
"""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


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
            self._f.close()
            os.replace(self.tmp, self.dest)
        except BaseException:
            self.abort()
            raise
        self.done = True
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


def replace_into(tmp: str | os.PathLike[str], dest: str | os.PathLike[str], *, mode: int | None = None) -> Path:
    """Move a finished temp file (e.g. a resumed download) over ``dest``: fsync, chmod, rename."""
    fd = os.open(tmp, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
    try:
        os.fsync(fd)
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, dest)
    _fsync_dir(Path(dest).parent)
    return Path(dest)


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
