"""Runtime caches this machine persisted: one file per key, written atomically under a lock.

Key: (model, plan digest, GPU name, CC, OS, driver major, backend, backend version). The file is
``RTXPRC01`` + sha256(payload) + key digest + payload, so a torn, corrupt or foreign file is
recognised before a backend ever sees it, ignored, and replaced on the next save.

A runtime cache is an optimisation, so reading is cautious: a file larger than
:data:`MAX_RUNTIME_CACHE_BYTES` is ignored without being read (an app under a memory limit must
not die on an optional cache), a link, fifo or directory at its name is ignored, and reading
never creates folders or takes locks (a read-only store works). A failed save is a StoreError
the caller turns into a warning.
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.digest import json_digest
from ..core.fsutil import kind_of

MAGIC = b"RTXPRC01"
HEADER = len(MAGIC) + 32 + 32
#: runtime caches are kilobytes to a few hundred megabytes; anything larger is ignored, unread
MAX_RUNTIME_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class CacheKey:
    model: str
    plan_sha256: str
    gpu_name: str
    cc: str
    os: str
    driver_major: int | None
    backend: str
    backend_version: str

    @property
    def digest(self) -> str:
        return json_digest(asdict(self))


def _name(key: CacheKey) -> str:
    return f"{key.digest[:40]}.rtcache"


def path_for(store: Any, key: CacheKey) -> Path:
    """Where the cache for ``key`` is saved (the folder is created)."""
    return store.state_dir("runtime-caches") / _name(key)


def read(store: Any, key: CacheKey) -> tuple[bytes | None, str]:
    """``(payload, why)``: payload None when absent, too large, corrupt or made for another key."""
    folder = store.find_state_dir("runtime-caches")
    if folder is None:
        return None, "no runtime cache persisted on this machine yet"
    p = folder / _name(key)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None, "no runtime cache persisted on this machine yet"
    except OSError as e:
        return None, f"persisted runtime cache unreadable ({e}); ignored"
    if not stat.S_ISREG(st.st_mode):
        return None, f"persisted runtime cache {p.name} is {kind_of(st.st_mode)}; ignored and replaced on close"
    if st.st_size > MAX_RUNTIME_CACHE_BYTES + HEADER:
        return None, (f"persisted runtime cache {p.name} is {st.st_size} bytes, over the "
                      f"{MAX_RUNTIME_CACHE_BYTES}-byte limit; ignored without reading it, replaced on close")
    data = store.read_state(p, MAX_RUNTIME_CACHE_BYTES + HEADER)
    if data is None:
        return None, f"persisted runtime cache {p.name} unreadable; ignored"
    if len(data) < HEADER or data[:8] != MAGIC:
        return None, f"persisted runtime cache {p.name} is corrupt (bad header); ignored and replaced on close"
    digest, keyd, payload = data[8:40], data[40:72], data[72:]
    if keyd != bytes.fromhex(key.digest):
        return None, f"persisted runtime cache {p.name} belongs to another key; ignored"
    if hashlib.sha256(payload).digest() != digest:
        return None, f"persisted runtime cache {p.name} is corrupt (checksum); ignored and replaced on close"
    return payload, f"runtime cache persisted on this machine ({len(payload)} bytes)"


def write(store: Any, key: CacheKey, payload: bytes) -> Path:
    """Atomically replace the cache for ``key`` (temp file + fsync + os.replace, under a file lock).
    StoreError when it cannot be written (read-only store, disk full); nothing half-written remains."""
    p = path_for(store, key)
    blob = MAGIC + hashlib.sha256(payload).digest() + bytes.fromhex(key.digest) + payload
    with store.state_lock(p, "the runtime cache"):
        store.write_state(p, blob, "the runtime cache")
    return p
