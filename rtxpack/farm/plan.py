"""Planning: models x targets x toolchains -> cells with stable ids, and skips decided before any build.

A cell id is a digest of everything that determines the output (model digest, profiles,
precision, target compute capabilities, backend + exact version, CUDA major, flags, os). Same id
-> the repository already has it -> no rebuild. Model digests are cached by (path, size,
mtime_ns) so an unchanged rebuild never re-hashes large ONNX files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


from ..core import registry
from ..core.device import detect_gpus
from ..core.digest import json_digest
from ..core.digest_cache import DigestCache
from ..core.errors import ConfigError
from . import toolchains as tcs
from .config import FarmConfig, ModelSpec, TargetSpec

CELL_FORMAT = "rtxpack-cell-v1"


@dataclass(frozen=True)
class Cell:
    id: str
    model: str
    target: str
    toolchain: str
    backend: str
    backend_version: str | None
    cuda: str | None
    compute_capabilities: tuple[str, ...]
    precision: str
    strip_weights: bool
    ptx: bool
    os: str | None
    profiles: dict[str, Any]
    onnx: str
    model_digest: str | None
    python: str | None = None
    skipped: str | None = None          # reason, when it cannot be built here

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "model", "target", "toolchain", "backend", "backend_version", "cuda",
                                            "precision", "strip_weights", "ptx", "os", "profiles", "onnx", "model_digest")}
        d["compute_capabilities"] = list(self.compute_capabilities)
        d["status"] = "skipped" if self.skipped else "planned"
        if self.skipped:
            d["reason"] = self.skipped
        return d


@dataclass
class Plan:
    config: FarmConfig
    cells: list[Cell]
    toolchains: list[tcs.Toolchain] = field(default_factory=list)

    @property
    def buildable(self) -> list[Cell]:
        return [c for c in self.cells if not c.skipped]

    @property
    def skipped(self) -> list[Cell]:
        return [c for c in self.cells if c.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {"config": str(self.config.path), "cells": [c.to_dict() for c in self.cells],
                "planned": len(self.buildable), "skipped": len(self.skipped),
                "toolchains": [t.to_dict() for t in self.toolchains]}


# ---- model digest cache ------------------------------------------------------------------------
# ---- rules -------------------------------------------------------------------------------------
def skip_reason(model: ModelSpec, target: TargetSpec, tc: tcs.Toolchain, gpu_ccs: Sequence[str]) -> str | None:
    """Why this cell cannot be built here (None: buildable). Pure; ``gpu_ccs`` are this node's GPUs."""
    if tc.problem:
        return tc.problem
    if not model.onnx.is_file():
        return f"ONNX file {model.onnx} (models '{model.name}'.onnx) does not exist; generate or fix the path"
    return registry.get(tc.backend).plan_problem(target.compute_capabilities, model.precision, target.strip_weights,
                                                 gpu_ccs, target.name)


def cell_id(*, model_digest_: str, model: ModelSpec, target: TargetSpec, tc: tcs.Toolchain) -> str:
    return json_digest({
        "format": CELL_FORMAT, "model_digest": model_digest_, "profiles": model.profiles_json(),
        "precision": model.precision, "compute_capabilities": list(target.compute_capabilities),
        "backend": tc.backend, "backend_version": tc.version, "cuda": tc.cuda,
        "flags": {"strip_weights": target.strip_weights, "ptx": target.ptx}, "os": target.os,
    })


def local_gpu_ccs() -> tuple[str, ...]:
    """Compute capabilities of this node's real GPUs (RTXPACK_DEVICE is ignored: it cannot build)."""
    gpus, _notes = detect_gpus()
    return tuple(g.compute_capability for g in gpus)


def make_plan(cfg: FarmConfig, *, gpu_ccs: Sequence[str] | None = None, digests: DigestCache | None = None,
              check_index: bool = True) -> Plan:
    """Expand the config into cells (buildable or skipped with the reason)."""
    digests = digests or DigestCache()
    if gpu_ccs is None:
        needs_gpu = any(t.strip_weights and registry.get(t.backend).strip_needs_gpu for t in cfg.targets)
        gpu_ccs = local_gpu_ccs() if needs_gpu else ()
    resolved: dict[Any, tcs.Toolchain] = {}
    for backend in sorted({t.backend for t in cfg.targets}):
        for spec in cfg.toolchains_for(backend):
            resolved[spec] = tcs.resolve(spec, check_index=check_index)
    cells: list[Cell] = []
    for model in cfg.models:
        md = digests.model(model.onnx) if model.onnx.is_file() else None
        for target in cfg.targets:
            for spec in cfg.toolchains_for(target.backend):
                tc = resolved[spec]
                reason = skip_reason(model, target, tc, gpu_ccs)
                cid = cell_id(model_digest_=md or "missing", model=model, target=target, tc=tc)
                cells.append(Cell(
                    id=cid, model=model.name, target=target.name, toolchain=tc.name, backend=tc.backend,
                    backend_version=tc.version, cuda=tc.cuda, compute_capabilities=target.compute_capabilities,
                    precision=model.precision, strip_weights=target.strip_weights, ptx=target.ptx, os=target.os,
                    profiles=model.profiles_json(), onnx=str(model.onnx), model_digest=md, python=tc.python,
                    skipped=reason))
    digests.save()
    return Plan(config=cfg, cells=cells, toolchains=list(resolved.values()))


def select(plan: Plan, ids: Iterable[str] | None) -> list[Cell]:
    """Cells named by id or unique id prefix (``--cell``); ConfigError for unknown ones."""
    if not ids:
        return list(plan.cells)
    out = []
    for want in ids:
        hits = [c for c in plan.cells if c.id == want or c.id.startswith(want)]
        if len(hits) != 1:
            raise ConfigError(f"--cell {want}: {'no' if not hits else len(hits)} cell(s) of {plan.config.path} match",
                              fix="list ids with `rtxpack plan CONFIG`; give a longer prefix", cell=want)
        out.append(hits[0])
    return out
