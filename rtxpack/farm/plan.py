"""Planning: models x targets x toolchains -> cells with stable ids, and skips decided before any build.

A cell id is a digest of everything that determines the output (model digest, profiles,
precision, target compute capabilities, backend + exact version, CUDA major, flags, os). Same id
-> the repository already has it -> no rebuild. Model digests are cached by (path, size,
mtime_ns) so an unchanged rebuild never re-hashes large ONNX files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import filelock

from ..digest import json_digest
from ..digest_cache import DigestCache
from ..manifest import parse_cc
from . import toolchains as tcs
from .config import FarmConfig, ModelSpec, TargetSpec

CELL_FORMAT = "rtxpack-cell-v1"
#: compute capabilities TensorRT-RTX can target (ComputeCapability enum; 9.0/Hopper is not supported)
TRT_RTX_CCS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")
#: lowest compute capability per precision (support matrix)
PRECISION_FLOOR = {"fp8": (8, 9), "fp4": (12, 0)}
NOT_ON_TURING = ("bf16", "int8", "int4")


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
    ccs = target.compute_capabilities
    if tc.problem:
        return tc.problem
    if not model.onnx.is_file():
        return f"ONNX file {model.onnx} (models '{model.name}'.onnx) does not exist; generate or fix the path"
    floor = PRECISION_FLOOR.get(model.precision)
    if floor:
        low = [cc for cc in ccs if parse_cc(cc) < floor]
        if low:
            return (f"{model.precision} needs compute capability {floor[0]}.{floor[1]} or newer; target "
                    f"'{target.name}' includes {', '.join(low)}: drop them or use another precision")
    if tc.backend == "tensorrt-rtx":
        bad = [cc for cc in ccs if cc not in TRT_RTX_CCS]
        if bad:
            return (f"TensorRT-RTX cannot target compute capability {', '.join(bad)} (supported: "
                    f"{', '.join(TRT_RTX_CCS)}; Hopper 9.0 is not an RTX GPU)")
        if "7.5" in ccs and len(ccs) > 1:
            return ("Turing (7.5) must be its own engine: TensorRT-RTX does not support mixing 7.5 with other "
                    f"compute capabilities; split target '{target.name}' into a 7.5-only target")
        if "7.5" in ccs and model.precision in NOT_ON_TURING:
            return f"{model.precision} is not supported on Turing (7.5)"
        if target.strip_weights:
            if len(ccs) != 1:
                return ("weight-stripped TensorRT-RTX engines are built for one compute capability on a GPU of it; "
                        f"target '{target.name}' lists {len(ccs)}")
            if ccs[0] not in gpu_ccs:
                have = ", ".join(gpu_ccs) or "no GPU"
                return (f"weight stripping (STRIP_PLAN) needs a GPU of compute capability {ccs[0]} on the build node "
                        f"(this node: {have}); run this cell on such a node (--cell) or set strip_weights = false")
    return None


def cell_id(*, model_digest_: str, model: ModelSpec, target: TargetSpec, tc: tcs.Toolchain) -> str:
    return json_digest({
        "format": CELL_FORMAT, "model_digest": model_digest_, "profiles": model.profiles_json(),
        "precision": model.precision, "compute_capabilities": list(target.compute_capabilities),
        "backend": tc.backend, "backend_version": tc.version, "cuda": tc.cuda,
        "flags": {"strip_weights": target.strip_weights, "ptx": target.ptx}, "os": target.os,
    })


def local_gpu_ccs() -> tuple[str, ...]:
    """Compute capabilities of this node's real GPUs (RTXPACK_DEVICE is ignored: it cannot build)."""
    try:
        from ..device import detect_gpus
    except ImportError:
        return ()
    gpus, _notes = detect_gpus()
    return tuple(g.compute_capability for g in gpus)


def make_plan(cfg: FarmConfig, *, gpu_ccs: Sequence[str] | None = None, digests: DigestCache | None = None,
              check_index: bool = True) -> Plan:
    """Expand the config into cells (buildable or skipped with the reason)."""
    digests = digests or DigestCache()
    if gpu_ccs is None:
        needs_gpu = any(t.strip_weights and t.backend == "tensorrt-rtx" for t in cfg.targets)
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
    from ..errors import ConfigError

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
