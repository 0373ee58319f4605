"""``rtxpack inspect``: what a plan file says about itself, without a GPU, cross-checked with a manifest.

TensorRT-RTX plans are read from their 64-byte header (``backends/tensorrt_rtx/header.py``);
NVRTC plans through ``rtxpack.backends.nvrtc`` (imported only when the file is not a TensorRT-RTX
plan). With ``repo``, the manifest entry with the same sha256 is compared field by field.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from .backends.tensorrt_rtx.header import is_tensorrt_rtx_plan, parse_header
from .errors import BackendError
from .manifest import version_tuple

_MAX_READ = 4 << 30


def _plan_info(data: bytes, source: str) -> dict[str, Any]:
    if is_tensorrt_rtx_plan(data):
        h = parse_header(data, source=source)
        return {"backend": "tensorrt-rtx", "backend_version": h.version, "compute_capabilities": list(h.compute_capabilities),
                "ptx": False, "header": {"cc_mask": f"0x{h.cc_mask:02x}", "unknown_cc_bits": h.unknown_bits}}
    try:
        from .backends import nvrtc as nv
    except ImportError as e:
        raise BackendError(f"{source}: not a TensorRT-RTX plan, and the nvrtc backend is not available to check ({e})",
                           fix="pass a TensorRT-RTX or rtxpack NVRTC plan; pip install rtxpack[gpu]", source=source) from e
    if not nv.is_nvrtc_plan(data):
        raise BackendError(f"{source}: neither a TensorRT-RTX plan (magic 'vtrt') nor an rtxpack NVRTC plan",
                           fix="pass an engine file built by rtxpack or TensorRT-RTX", source=source)
    info = nv.NvrtcBackend().inspect(data)
    out = {"backend": info.backend, "backend_version": info.backend_version,
           "compute_capabilities": list(info.compute_capabilities), "ptx": bool(info.ptx)}
    if info.stripped:
        out["stripped"] = True
    if info.weights_digest:
        out["weights_digest"] = info.weights_digest
    return out


def _version_matches(from_plan: str, declared: str) -> bool:
    """The header carries major.minor.patch only: compare as a prefix of the exact version."""
    p, d = version_tuple(from_plan), version_tuple(declared)
    return bool(p) and d[: len(p)] == p


def cross_check(info: dict[str, Any], artifact: Any) -> list[str]:
    """Mismatches between what the plan says and its manifest entry (empty: consistent)."""
    out = []
    if artifact.backend != info["backend"]:
        out.append(f"backend: plan is {info['backend']}, manifest says {artifact.backend}")
    if not _version_matches(info["backend_version"], artifact.backend_version):
        out.append(f"backend_version: plan is {info['backend_version']}, manifest says {artifact.backend_version}")
    if sorted(info["compute_capabilities"]) != sorted(artifact.compute_capabilities):
        out.append(f"compute_capabilities: plan targets {', '.join(info['compute_capabilities'])}, manifest says "
                   f"{', '.join(artifact.compute_capabilities)}")
    if bool(info.get("ptx")) != bool(artifact.ptx):
        out.append(f"ptx: plan {'has' if info.get('ptx') else 'has no'} PTX, manifest says ptx={artifact.ptx}")
    if artifact.size != info["size"]:
        out.append(f"size: file has {info['size']} bytes, manifest says {artifact.size}")
    return out


def inspect_file(path: str | os.PathLike[str], repo: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Backend, version, compute capabilities (+ sha256, size) of a plan; with ``repo``, a cross-check.

    The result's ``manifest`` key (only with ``repo``) holds ``artifact`` (id or None when no entry
    has this sha256) and ``mismatches`` (list of strings; empty when consistent).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _MAX_READ:
            raise BackendError(f"{p}: {size} bytes is too large to be a plan", fix="pass an engine file", source=str(p))
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise BackendError(f"{p}: no such file", fix="pass the path of an engine/plan file", source=str(p)) from e
    info: dict[str, Any] = {"file": str(p), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    info.update(_plan_info(data, str(p)))
    if repo is not None:
        manifest = _load_manifest(repo)
        hits = [a for a in manifest if a.sha256 == info["sha256"]]
        if not hits:
            info["manifest"] = {"repo": str(repo), "artifact": None,
                                "mismatches": [f"no manifest entry has sha256 {info['sha256']}"]}
        else:
            a = hits[0]
            info["manifest"] = {"repo": str(repo), "artifact": a.id, "mismatches": cross_check(info, a)}
    return info


def _load_manifest(repo: str | os.PathLike[str]) -> Any:
    """A local repository directory is read directly (the farm's own output); URLs and bundles go
    through the installer's ``open_repository`` (signature checks, bundle validation)."""
    from .manifest import Manifest

    if Path(repo).is_dir():
        return Manifest.load(repo)
    from .repository import open_repository

    return open_repository(repo).manifest


__all__ = ["cross_check", "inspect_file"]
