"""Runtime cache: JIT-compiled cubins keyed by (module digest, arch, compiler, compiler version, driver).

    b"RTXPNVRC" | u32 version | u32 n_entries
    n x ( u32 key length | key JSON | u64 cubin length | cubin | 32s sha256(cubin) )
    32s sha256 of everything above

A module digest is the sha256 over the sorted kernel digests of the module (see kernels.py), so
each entry is keyed by every kernel digest it holds. ``parse`` never raises: a corrupt blob
(bad magic, truncated, checksum mismatch) gives an empty cache plus a reason; entries for
another arch or version are simply never looked up (kept, and reported as not matching).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

MAGIC = b"RTXPNVRC"
VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    module: str          # module digest
    arch: str            # "sm_90"
    compiler: str        # "nvrtc" (compiled here from source) | "ptx-jit" (driver JIT of the plan's PTX)
    compiler_version: str  # NVRTC version that made the cubin or the PTX, e.g. "13.0"
    driver: int          # cuDriverGetVersion(), e.g. 13000

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, separators=(",", ":"))


@dataclass
class RuntimeCache:
    entries: dict[CacheKey, bytes] = field(default_factory=dict)
    status: str = "empty"          # "empty" | "loaded N entries" | "ignored: <reason>"

    def get(self, key: CacheKey) -> bytes | None:
        return self.entries.get(key)

    def put(self, key: CacheKey, cubin: bytes) -> None:
        self.entries[key] = bytes(cubin)

    def serialize(self) -> bytes:
        out = bytearray(MAGIC + struct.pack("<II", VERSION, len(self.entries)))
        for key in sorted(self.entries, key=lambda k: k.to_json()):
            k = key.to_json().encode()
            blob = self.entries[key]
            out += struct.pack("<I", len(k)) + k + struct.pack("<Q", len(blob)) + blob + hashlib.sha256(blob).digest()
        out += hashlib.sha256(out).digest()
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes | None) -> "RuntimeCache":
        if not data:
            return cls()
        try:
            return cls(_parse(bytes(data)), status="")
        except ValueError as e:
            return cls(status=f"ignored: {e}")
        except (TypeError, KeyError, RecursionError, struct.error, OverflowError):
            # a checksum anyone can recompute: a well-summed blob with odd keys is still not ours
            return cls(status="ignored: malformed entry key")


def _parse(data: bytes) -> dict[CacheKey, bytes]:
    if data[:8] != MAGIC:
        raise ValueError("not an nvrtc runtime cache (bad magic)")
    if len(data) < 48 or hashlib.sha256(data[:-32]).digest() != data[-32:]:
        raise ValueError("checksum mismatch (corrupt or truncated)")
    version, n = struct.unpack_from("<II", data, 8)
    if version != VERSION:
        raise ValueError(f"cache format {version} is not {VERSION}")
    pos, end, entries = 16, len(data) - 32, {}
    for _ in range(n):
        (kl,) = struct.unpack_from("<I", data, pos)
        fields = json.loads(data[pos + 4:pos + 4 + kl])
        if not isinstance(fields, dict) or set(fields) != set(CacheKey.__dataclass_fields__) or not all(
                isinstance(fields[f], int if f == "driver" else str) for f in fields):
            raise ValueError("malformed entry key")
        key = CacheKey(**fields)
        pos += 4 + kl
        (bl,) = struct.unpack_from("<Q", data, pos)
        blob = data[pos + 8:pos + 8 + bl]
        sha = data[pos + 8 + bl:pos + 40 + bl]
        pos += 40 + bl
        if pos > end or hashlib.sha256(blob).digest() != sha:
            raise ValueError("entry checksum mismatch")
        entries[key] = blob
    return entries
