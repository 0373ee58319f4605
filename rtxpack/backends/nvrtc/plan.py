"""The nvrtc plan file: a versioned, little-endian binary container.

    offset 0   header (HEADER_SIZE bytes, fixed):
               magic b"RTXPNVRT" | u32 format version | u32 header size | 16s backend version
               | u32 flags (1 = weights stripped, 2 = has PTX, 4 = fp16 plan) | u16 nvrtc major | u16 nvrtc minor
               | u32 n_kernels | u32 n_ccs | 16 x u16 SM numbers (86 = CC 8.6) | 32s weights digest (raw sha256)
               | 64s model name (utf-8, NUL padded) | u32 n_sections
               | up to 6 x (4s tag, u64 offset, u64 length, 32s sha256)
    sections   GRPH: graph JSON (utf-8)
               KERN: u32 index length | index JSON | blobs (cubin per SM, optional PTX)
               WGHT: raw little-endian initializer bytes, each 256-byte aligned (offsets in GRPH):
                     every initializer in a full plan's ONNX that the host needs (shape data);
                     a stripped plan keeps only its non-floating-point (shape) initializers
               DWGT: (full plans only) the device tensors in device layout, BatchNorm already
                     folded, 256-byte aligned: one host-to-device copy at load

``inspect`` needs only the header. ``read_plan`` checks the sha256 of GRPH and KERN always, and of
the weight sections when asked (they are large; the artifact's own sha256 is checked on fetch).
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from ...core.errors import BackendError

MAGIC = b"RTXPNVRT"
FORMAT_VERSION = 1
HEADER_SIZE = 512
FLAG_STRIPPED, FLAG_PTX, FLAG_FP16 = 1, 2, 4
_HEAD = struct.Struct("<8sII16sIHHII16H32s64sI")
_SECT = struct.Struct("<4sQQ32s")
MAX_SECTIONS = 6  # header: 176 bytes + 6 x 52 fits in HEADER_SIZE
ALIGN = 256


def is_nvrtc_plan(data: bytes) -> bool:
    """True when ``data`` starts like an nvrtc plan (magic only; cheap enough to sniff files)."""
    return bytes(data[:8]) == MAGIC


@dataclass
class PlanHeader:
    format_version: int
    backend_version: str
    flags: int
    nvrtc_version: tuple[int, int]
    n_kernels: int
    sms: tuple[int, ...]
    weights_digest: str
    model_name: str
    sections: dict[str, tuple[int, int, str]]   # tag -> (offset, length, sha256 hex)

    @property
    def stripped(self) -> bool:
        return bool(self.flags & FLAG_STRIPPED)

    @property
    def ptx(self) -> bool:
        return bool(self.flags & FLAG_PTX)

    @property
    def precision(self) -> str:
        return "fp16" if self.flags & FLAG_FP16 else "fp32"


def _bad(msg: str) -> BackendError:
    return BackendError(f"not a valid nvrtc plan: {msg}", fix="rebuild the plan or re-download it (it may be truncated)")


def read_header(data: bytes) -> PlanHeader:
    if len(data) < HEADER_SIZE or not is_nvrtc_plan(data):
        raise _bad("bad magic or shorter than the header")
    f = _HEAD.unpack_from(data, 0)
    magic, fmt, hsize, bver, flags, vmaj, vmin, nkern, nccs = f[:9]
    sms = f[9:25]
    digest, name, nsect = f[25], f[26], f[27]
    if fmt != FORMAT_VERSION:
        raise BackendError(f"nvrtc plan format {fmt} is not supported (this rtxpack reads format {FORMAT_VERSION})",
                           fix="upgrade rtxpack or rebuild the plan", format_version=fmt)
    if nccs > 16 or nsect > MAX_SECTIONS or hsize != HEADER_SIZE:
        raise _bad("corrupt header")
    sections = {}
    for i in range(nsect):
        tag, off, ln, sha = _SECT.unpack_from(data, _HEAD.size + i * _SECT.size)
        sections[tag.decode()] = (off, ln, sha.hex())
    return PlanHeader(fmt, bver.rstrip(b"\0").decode(), flags, (vmaj, vmin), nkern, tuple(sms[:nccs]),
                      digest.hex() if any(digest) else "", name.rstrip(b"\0").decode(errors="replace"), sections)


def write_plan(*, backend_version: str, flags: int, nvrtc_version: tuple[int, int], n_kernels: int, sms: list[int],
               weights_digest: str, model_name: str, graph: Mapping[str, Any], kernel_index: Mapping[str, Any],
               kernel_blobs: bytes, weights_blob: bytes, device_blob: bytes | None = None) -> bytes:
    """Assemble a plan (sections 256-byte aligned so the weights can be viewed in place)."""
    graph_b = json.dumps(graph, sort_keys=True, separators=(",", ":")).encode()
    idx_b = json.dumps(kernel_index, sort_keys=True, separators=(",", ":")).encode()
    kern_b = struct.pack("<I", len(idx_b)) + idx_b + kernel_blobs
    body = bytearray()
    table = []
    pos = HEADER_SIZE
    sections = [("GRPH", graph_b), ("KERN", kern_b), ("WGHT", weights_blob)]
    if device_blob is not None:
        sections.append(("DWGT", device_blob))
    for tag, blob in sections:
        pad = (-pos) % ALIGN
        body += b"\0" * pad
        pos += pad
        table.append((tag, pos, len(blob), hashlib.sha256(blob).digest()))
        body += blob
        pos += len(blob)
    ccs = list(sms) + [0] * (16 - len(sms))
    head = _HEAD.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, backend_version.encode()[:16], flags, nvrtc_version[0],
                      nvrtc_version[1], n_kernels, len(sms), *ccs, bytes.fromhex(weights_digest) if weights_digest else b"\0" * 32,
                      model_name.encode()[:64], len(table))
    head += b"".join(_SECT.pack(t.encode(), o, n, s) for t, o, n, s in table)
    head += b"\0" * (HEADER_SIZE - len(head))
    return bytes(head) + bytes(body)


def read_plan(data: bytes, *, verify_weights: bool = True
              ) -> tuple[PlanHeader, dict[str, Any], dict[str, Any], memoryview, dict[str, memoryview]]:
    """Header, graph, kernel index, kernel blobs and weight sections (views into ``data``)."""
    h = read_header(data)
    mv = memoryview(data)
    secs = {}
    for tag in ("GRPH", "KERN", "WGHT", "DWGT"):
        if tag not in h.sections:
            if tag == "DWGT":
                continue
            raise _bad(f"missing section {tag}")
        off, ln, sha = h.sections[tag]
        if off + ln > len(data):
            raise _bad(f"section {tag} runs past the end of the file (truncated?)")
        blob = mv[off:off + ln]
        if (verify_weights or tag in ("GRPH", "KERN")) and hashlib.sha256(blob).hexdigest() != sha:
            raise _bad(f"section {tag} fails its sha256 check (corrupt)")
        secs[tag] = blob
    graph = json.loads(bytes(secs["GRPH"]))
    kern = secs["KERN"]
    (n,) = struct.unpack_from("<I", kern, 0)
    index = json.loads(bytes(kern[4:4 + n]))
    return h, graph, index, kern[4 + n:], {k: v for k, v in secs.items() if k in ("WGHT", "DWGT")}
