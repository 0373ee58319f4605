"""Read a TensorRT-RTX plan's 64-byte header without a GPU (and without tensorrt_rtx).

Observed layout (not documented; see shared FACTS.md): bytes 0..3 are ``b"vtrt"``, bytes 24..26
the TensorRT-RTX version (major, minor, patch), byte 32 a bitmask of target compute capabilities.
This is a cross-check: the manifest stays the source of truth.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import BackendError
from ...core.registry import TRT_RTX_CC_BITS

MAGIC = b"vtrt"
HEADER_SIZE = 64
#: bit -> compute capability, in bit order (the registry's table)
CC_BITS = TRT_RTX_CC_BITS
#: the mask a plan built with no compute capability set carries (8.0, 8.6, 8.9, 12.0, 12.1)
PORTABLE_DEFAULT_MASK = 0x3E


@dataclass(frozen=True)
class PlanHeader:
    version: str                            # "1.7.1" (the header has no build number)
    compute_capabilities: tuple[str, ...]   # ("8.6", "8.9", "12.0")
    cc_mask: int
    unknown_bits: int                       # mask bits this rtxpack does not know (newer GPUs)


def is_tensorrt_rtx_plan(data: bytes) -> bool:
    return len(data) >= HEADER_SIZE and data[:4] == MAGIC


def ccs_from_mask(mask: int) -> tuple[str, ...]:
    return tuple(cc for bit, cc in CC_BITS if mask & (1 << bit))


def mask_from_ccs(ccs: tuple[str, ...] | list[str]) -> int:
    lookup = {cc: bit for bit, cc in CC_BITS}
    mask = 0
    for cc in ccs:
        if cc not in lookup:
            raise ValueError(f"compute capability {cc} has no header bit")
        mask |= 1 << lookup[cc]
    return mask


def parse_header(data: bytes, *, source: str = "plan") -> PlanHeader:
    """Parse the first 64 bytes of a plan; BackendError if it is not a TensorRT-RTX plan."""
    if len(data) < HEADER_SIZE:
        raise BackendError(f"{source}: {len(data)} bytes is shorter than a TensorRT-RTX plan header ({HEADER_SIZE})",
                           fix="pass a complete .plan/.engine file", path=source)
    if data[:4] != MAGIC:
        raise BackendError(f"{source}: does not start with the TensorRT-RTX magic 'vtrt' (got {data[:4]!r})",
                           fix="pass a TensorRT-RTX engine; classic TensorRT and other formats are not read here",
                           path=source)
    version = f"{data[24]}.{data[25]}.{data[26]}"
    mask = data[32]
    known = 0
    for bit, _ in CC_BITS:
        known |= 1 << bit
    return PlanHeader(version=version, compute_capabilities=ccs_from_mask(mask), cc_mask=mask,
                      unknown_bits=mask & ~known)
