"""Model and weights digests of local ONNX files, cached by file identity.

Hashing a 100 MB model (and parsing it for the weights digest) costs a second or more; apps
start often. Digests are kept in the local store keyed by (path, size, mtime_ns) of the ONNX file
and of the files beside it (external data), shared by the farm and the installer side.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import filelock

from . import config
from .digest import model_digest, weights_digest
from .fsutil import atomic_write


class DigestCache:
    """sha256 digests of files keyed by (path, size, mtime_ns), persisted under the cache dir."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config.cache_dir() / "state" / "digests.json"
        self._data: dict[str, dict[str, str]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, dict[str, str]]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self._data = {}
        return self._data

    @staticmethod
    def _key(path: Path) -> str:
        # the ONNX file plus its siblings: external-data weights live beside it, so changing them
        # (without touching the .onnx) must change the key too
        p = path.resolve()
        st = p.stat()
        sib = hashlib.sha256()
        for other in sorted(p.parent.iterdir()):
            if other != p and other.is_file() and not other.name.startswith("."):
                o = other.stat()
                sib.update(f"{other.name}|{o.st_size}|{o.st_mtime_ns}\n".encode())
        return f"{p}|{st.st_size}|{st.st_mtime_ns}|{sib.hexdigest()[:16]}"

    def _get(self, path: Path, kind: str, compute: Callable[[Path], str]) -> str:
        data = self._load()
        key = self._key(path)
        entry = data.setdefault(key, {})
        if kind not in entry:
            entry[kind] = compute(path)
            self._dirty = True
        return entry[kind]

    def model(self, path: Path) -> str:
        return self._get(path, "model", model_digest)

    def weights(self, path: Path) -> str:
        return self._get(path, "weights", weights_digest)

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(self.path) + ".lock"):
            try:
                on_disk = json.loads(self.path.read_text())
            except (OSError, ValueError):
                on_disk = {}
            live = {k for k in on_disk if os.path.exists(k.split("|", 1)[0])}
            merged = {k: v for k, v in on_disk.items() if k in live}
            for k, v in (self._data or {}).items():
                merged.setdefault(k, {}).update(v)
            atomic_write(self.path, json.dumps(merged).encode())
        self._dirty = False
