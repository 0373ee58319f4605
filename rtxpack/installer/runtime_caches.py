"""Runtime caches this machine persisted: one file per key, written atomically under a lock.

Key: (model, plan digest, GPU name, CC, OS, driver major, backend, backend version). The file is
``RTXPRC01`` + sha256(payload) + key digest + payload, so a torn, corrupt or foreign file is
recognised before a backend ever sees it, ignored, and replaced on the next save.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from ..core.digest import json_digest
from ..core.fsutil import atomic_write

MAGIC = b"RTXPRC01"
HEADER = len(MAGIC) + 32 + 32


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


def _dir(store) -> Path:
    d = store.state_dir("runtime-caches")
    d.mkdir(parents=True, exist_ok=True)
    return d


def path_for(store, key: CacheKey) -> Path:
    return _dir(store) / f"{key.digest[:40]}.rtcache"


def read(store, key: CacheKey) -> tuple[bytes | None, str]:
    """``(payload, why)``: payload None when absent, corrupt or made for another key."""
    p = path_for(store, key)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return None, "no runtime cache persisted on this machine yet"
    except OSError as e:
        return None, f"persisted runtime cache unreadable ({e}); ignored"
    if len(data) < HEADER or data[:8] != MAGIC:
        return None, f"persisted runtime cache {p.name} is corrupt (bad header); ignored and replaced on close"
    digest, keyd, payload = data[8:40], data[40:72], data[72:]
    if keyd != bytes.fromhex(key.digest):
        return None, f"persisted runtime cache {p.name} belongs to another key; ignored"
    if hashlib.sha256(payload).digest() != digest:
        return None, f"persisted runtime cache {p.name} is corrupt (checksum); ignored and replaced on close"
    return payload, f"runtime cache persisted on this machine ({len(payload)} bytes)"


def write(store, key: CacheKey, payload: bytes) -> Path:
    """Atomically replace the cache for ``key`` (temp file + fsync + os.replace, under a file lock)."""
    p = path_for(store, key)
    blob = MAGIC + hashlib.sha256(payload).digest() + bytes.fromhex(key.digest) + payload
    with FileLock(str(p) + ".lock"):
        atomic_write(p, blob)
    return p
