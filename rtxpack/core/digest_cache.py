"""Model and weights digests of local ONNX files, cached by file identity *and* content.

Hashing a 100 MB model (and parsing it for the weights digest) costs a second or more; apps
start often. But a file restored by ``cp -p``, rsync, tar or an installer keeps its size and
modification time, and a stale weights digest would pick a plan with the old weights baked in.
So an entry is reused only when, for the ONNX file and each external-data file it names:

1. the identity matches: device, inode, size, mtime_ns **and ctime_ns** (the change time, which
   no copy or restore tool can set: any rewrite of the bytes moves it), and
2. a content fingerprint matches: sha256 over the size and 20 sampled blocks (head, tail and
   18 spread between; ~150 KiB read, well under a millisecond from the page cache).

Where the identity is weaker (Windows: ``st_ctime`` is the creation time, which restores keep)
the full content is hashed on every lookup instead. When the identity changed (a ``touch``, a
copy of the same file) the full content is hashed once: unchanged bytes keep the entry (no
re-parse); changed bytes compute everything again. Digests are kept in the local store, shared
by the farm and the installer side; saving is best effort (a read-only store keeps working).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from . import config
from .digest import load_structure, model_digest_of, weights_digest, weights_digest_of_structure
from .errors import StoreError
from .fsutil import is_writable, read_regular, store_file, write_error
from .lockfile import LockFile

log = logging.getLogger(__name__)

#: the digest cache file is small; a larger one is ignored (never read) and rewritten
MAX_DIGESTS_BYTES = 16 << 20
#: POSIX change times cannot be set by copy/restore tools; Windows' st_ctime is the creation time
STRONG_IDENTITY = os.name != "nt"
_SAMPLE = 8 << 10
_SAMPLES = 20


def identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def fingerprint(path: Path, size: int) -> str:
    """sha256 over the size and _SAMPLES blocks of _SAMPLE bytes: head, tail and evenly spread."""
    h = hashlib.sha256(str(size).encode() + b"\0")
    with open(path, "rb", buffering=0) as f:
        if size <= _SAMPLE * _SAMPLES:
            h.update(f.read(size + 1))
            return h.hexdigest()
        step = (size - _SAMPLE) / (_SAMPLES - 1)
        for i in range(_SAMPLES):
            f.seek(int(i * step))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _probe(path: Path) -> list[Any]:
    st = os.stat(path)
    return [identity(st), fingerprint(path, st.st_size)]


class DigestCache:
    """sha256 digests of ONNX files (see the module doc), persisted in the store's ``state/``.

    ``find()`` gives the file to read (None: nothing to read), ``make()`` the file to write
    (creating its folder); the installer passes its store's checked paths, so a link planted in
    the store is never followed. The default is ``RTXPACK_CACHE_DIR/state/digests.json``."""

    def __init__(self, path: Path | None = None, *, find: Callable[[], Path | None] | None = None,
                 make: Callable[[], Path] | None = None) -> None:
        default = path or config.cache_dir() / "state" / "digests.json"
        self.path = default
        self._find = find or (lambda: default)
        self._make = make or (lambda: _made(default))
        self._data: dict[str, dict[str, Any]] | None = None
        self._dirty = False

    def _read(self) -> dict[str, Any]:
        path = self._find()
        if path is None:
            return {}
        try:
            data = json.loads(read_regular(path, MAX_DIGESTS_BYTES))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            self._data = {k: v for k, v in self._read().items() if isinstance(v, dict)}
        return self._data

    def _fresh(self, path: Path, entry: dict[str, Any]) -> bool:
        """The entry still describes the bytes at ``path`` (identity + fingerprint, or full content)."""
        files = entry.get("files")
        if not isinstance(files, dict) or "" not in files:
            return False
        try:
            probes = {name: _probe(path if not name else path.parent / name) for name in files}
        except OSError:
            return False
        if STRONG_IDENTITY and probes == files:
            return True
        # identity changed (or cannot be trusted): the full bytes decide
        try:
            same = model_digest_of(path, [n for n in files if n]) == entry.get("model")
        except OSError:
            return False
        if same:
            entry["files"] = probes
            self._dirty = True
        return same

    def _entry(self, path: Path) -> tuple[dict[str, Any], Any]:
        """The entry for ``path`` and, when it had to be made now, the parsed model (else None)."""
        p = path.resolve()
        data = self._load()
        entry = data.get(str(p))
        if entry is not None and isinstance(entry.get("model"), str) and self._fresh(p, entry):
            return entry, None
        files = {"": _probe(p)}
        model, externals = load_structure(p)
        files.update({name: _probe(p.parent / name) for name in externals})
        entry = {"files": files, "model": model_digest_of(p, externals)}
        data[str(p)] = entry
        self._dirty = True
        return entry, model

    def model(self, path: Path) -> str:
        return self._entry(path)[0]["model"]

    def weights(self, path: Path) -> str:
        entry, model = self._entry(path)
        if not isinstance(entry.get("weights"), str):
            p = path.resolve()
            entry["weights"] = weights_digest_of_structure(model, p) if model is not None else weights_digest(p)
            self._dirty = True
        return entry["weights"]

    def save(self) -> None:
        """Merge into the file on disk under its lock; best effort: a read-only store or a full disk
        logs why and leaves the cache as it was (the next start computes again)."""
        if not self._dirty:
            return
        try:
            path = self._make()
            with LockFile(path.with_name(path.name + ".lock"), timeout=60, what="the lock of the digest cache"):
                on_disk = {k: v for k, v in self._read().items() if isinstance(v, dict)}
                merged = {k: v for k, v in on_disk.items() if os.path.exists(k)}
                merged.update(self._data or {})
                store_file(path, json.dumps(merged).encode(), what="the digest cache")
        except StoreError as e:
            level = logging.WARNING if is_writable(self.path.parent) else logging.INFO
            log.log(level, "rtxpack: the digest cache was not saved: %s", e.message)
        self._dirty = False


def _made(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, path.parent, "the digest cache's folder") from e
    return path
