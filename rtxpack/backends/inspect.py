"""``rtxpack inspect``: what a plan file says about itself, without a GPU, and a cross-check with a manifest.

The backend is recognised by its plan magic (the registry's ``magic``); the backend then reads its
own header (TensorRT-RTX: 64-byte header; nvrtc: 512-byte header) without a GPU. :func:`cross_check`
compares the result with a manifest entry field by field.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..core import registry
from ..core.errors import BackendError
from ..core.versions import version_tuple

_MAX_READ = 4 << 30


def plan_info(data: bytes, source: str) -> dict[str, Any]:
    """Backend, version, compute capabilities, PTX and stripping of a plan's bytes (no GPU)."""
    spec = registry.sniff(data)
    if spec is None:
        known = ", ".join(f"{s.label} ({s.magic!r})" for s in registry.specs())
        raise BackendError(f"{source}: not a plan of any backend rtxpack knows (magics: {known})",
                           fix="pass an engine file built by rtxpack or TensorRT-RTX", path=source)
    info = spec.create().inspect(data)
    out: dict[str, Any] = {"backend": info.backend, "backend_version": info.backend_version,
                           "compute_capabilities": list(info.compute_capabilities), "ptx": bool(info.ptx)}
    if "header" in info.details:
        out["header"] = dict(info.details["header"])
    if "precision" in info.details:        # backends whose header says it (nvrtc)
        out["precision"] = info.details["precision"]
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
    if "precision" in info and getattr(artifact, "precision", info["precision"]) != info["precision"]:
        out.append(f"precision: plan is {info['precision']}, manifest says {artifact.precision}")
    if artifact.size != info["size"]:
        out.append(f"size: file has {info['size']} bytes, manifest says {artifact.size}")
    return out


def inspect_file(path: str | os.PathLike[str], manifest: Any = None, *, repo: str | None = None) -> dict[str, Any]:
    """Backend, version, compute capabilities (+ sha256, size) of a plan; with ``manifest``, a cross-check.

    The result's ``manifest`` key (only with ``manifest``) holds ``artifact`` (id or None when no entry
    has this sha256) and ``mismatches`` (list of strings; empty when consistent); ``repo`` names the
    repository the manifest came from in that record.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > _MAX_READ:
            raise BackendError(f"{p}: {size} bytes is too large to be a plan", fix="pass an engine file", path=str(p))
        data = p.read_bytes()
    except FileNotFoundError as e:
        raise BackendError(f"{p}: no such file", fix="pass the path of an engine/plan file", path=str(p)) from e
    info: dict[str, Any] = {"file": str(p), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    info.update(plan_info(data, str(p)))
    if manifest is not None:
        hits = [a for a in manifest if a.sha256 == info["sha256"]]
        if not hits:
            info["manifest"] = {"repo": repo, "artifact": None,
                                "mismatches": [f"no manifest entry has sha256 {info['sha256']}"]}
        else:
            a = hits[0]
            info["manifest"] = {"repo": repo, "artifact": a.id, "mismatches": cross_check(info, a)}
    return info


__all__ = ["cross_check", "inspect_file", "plan_info"]
