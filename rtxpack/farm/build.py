"""Executing a plan: each cell in its own worker process, in parallel, publishing into a repository.

A cell whose id is already in the repository is "up-to-date" and costs no builder work. A cell
the builder rejects fails alone with the builder's message; the others carry on. Each toolchain
runs in its own interpreter (see ``toolchains``), so one node builds for several TensorRT-RTX
versions and CUDA majors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import BuildError, RtxpackError
from ..manifest import Artifact, artifact_id, blob_relpath
from . import toolchains as tcs
from .config import FarmConfig, load_config
from .plan import Cell, DigestCache, Plan, make_plan, select
from .repo import Repository

WORKER_TIMEOUT_S = 3600
_TRT_WORKER = Path(__file__).resolve().parent.parent / "backends" / "tensorrt_rtx" / "build_worker.py"
_PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)


@dataclass
class CellResult:
    cell: Cell
    status: str                      # built | up-to-date | skipped | failed
    artifact: Artifact | None = None
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.cell.id, "model": self.cell.model, "target": self.cell.target,
                             "toolchain": self.cell.toolchain, "compute_capabilities": list(self.cell.compute_capabilities),
                             "status": self.status, "seconds": round(self.seconds, 3)}
        if self.artifact:
            d.update(artifact=self.artifact.id, sha256=self.artifact.sha256, size=self.artifact.size, path=self.artifact.path)
        if self.error:
            d["error" if self.status == "failed" else "reason"] = self.error
        return d


@dataclass
class BuildReport:
    repo: str
    results: list[CellResult] = field(default_factory=list)
    builder_runs: int = 0            # worker processes started: 0 for an unchanged rebuild
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "built": self.count("built"), "up_to_date": self.count("up-to-date"),
                "skipped": self.count("skipped"), "failed": self.count("failed"), "builder_runs": self.builder_runs,
                "seconds": round(self.seconds, 3), "cells": [r.to_dict() for r in self.results]}


def _worker_command(cell: Cell, python: str) -> list[str]:
    if cell.backend == "tensorrt-rtx":
        return [python, "-I", str(_TRT_WORKER)]
    return [python, "-m", "rtxpack.farm.worker"]


def _run_worker(cell: Cell, python: str, out: Path) -> dict[str, Any]:
    req = {"backend": cell.backend, "onnx": cell.onnx, "out": str(out), "precision": cell.precision,
           "compute_capabilities": list(cell.compute_capabilities), "strip_weights": cell.strip_weights,
           "profiles": cell.profiles}
    env = dict(os.environ)
    if cell.backend != "tensorrt-rtx":
        env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(_worker_command(cell, python), input=json.dumps(req), capture_output=True, text=True,
                              env=env, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"worker timed out after {WORKER_TIMEOUT_S} s"}
    except OSError as e:
        return {"ok": False, "error": f"cannot start worker {python}: {e}"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        return {"ok": False, "error": f"worker crashed (exit {proc.returncode}): {tail or proc.stdout[-500:]}"}
    return json.loads(lines[-1])


def _artifact(cell: Cell, cfg: FarmConfig, reply: dict[str, Any], sha: str, size: int, weights: str) -> Artifact:
    model = next(m for m in cfg.models if m.name == cell.model)
    extra: dict[str, Any] = {"target": cell.target, "toolchain": cell.toolchain}
    if model.warmup:
        extra["warmup"] = [{k: list(v) for k, v in w.items()} for w in model.warmup]
    backend_version = reply.get("version") or cell.backend_version or "0"
    return Artifact(
        id=artifact_id("engine", cell.model, cell.id), kind="engine", model=cell.model,
        model_digest=cell.model_digest or "", weights_digest=weights, backend=cell.backend,
        backend_version=backend_version, compute_capabilities=cell.compute_capabilities, size=size, sha256=sha,
        path=blob_relpath(sha), ptx=bool(reply.get("ptx", cell.ptx if cell.backend == "nvrtc" else False)),
        os=cell.os,
        # CUDA minor-version compatibility: a toolchain of CUDA major N runs on any driver of major >= N
        min_driver_version=f"{cell.cuda}.0" if cell.cuda else None,
        precision=cell.precision, stripped=cell.strip_weights, cuda=cell.cuda, cell=cell.id,
        profiles=cell.profiles or None, extra=extra)


def build(config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *, jobs: int = 1,
          cells: Iterable[str] | None = None, progress: Callable[[str], None] | None = None,
          plan: Plan | None = None) -> BuildReport:
    """Build the selected cells of ``config`` into ``repo`` (skipping those already there)."""
    t0 = time.monotonic()
    cfg = config if isinstance(config, FarmConfig) else load_config(config)
    digests = DigestCache()
    plan = plan or make_plan(cfg, digests=digests)
    chosen = select(plan, list(cells) if cells else None)
    repository = Repository(repo)
    have = repository.cells()
    report = BuildReport(repo=str(repository.root))
    say = progress or (lambda s: None)
    todo: list[Cell] = []
    total = len(chosen)
    for cell in chosen:
        if cell.skipped:
            report.results.append(CellResult(cell, "skipped", error=cell.skipped))
            say(f"[skip] {_label(cell)}: {cell.skipped}")
        elif cell.id in have:
            report.results.append(CellResult(cell, "up-to-date", artifact=have[cell.id]))
            say(f"[ok]   {_label(cell)}: up to date ({have[cell.id].id})")
        else:
            todo.append(cell)
    if not todo:
        report.seconds = time.monotonic() - t0
        return report

    # toolchains first, sequentially (a venv install is I/O heavy and must happen once)
    pythons: dict[str, str | BaseException] = {}
    by_name = {t.name: t for t in plan.toolchains}
    for name in sorted({c.toolchain for c in todo}):
        try:
            pythons[name] = tcs.ensure(by_name[name], log=say)
        except RtxpackError as e:
            pythons[name] = e
    weights: dict[str, str] = {}
    for cell in todo:
        if cell.onnx not in weights:
            weights[cell.onnx] = digests.weights(Path(cell.onnx))
    digests.save()

    lock = threading.Lock()
    done = [len(report.results)]
    tmp = repository.tmp_dir()
    project = dict(cfg.project) if cfg.project else None

    def run(cell: Cell) -> CellResult:
        started = time.monotonic()
        py = pythons[cell.toolchain]
        if isinstance(py, BaseException):
            return CellResult(cell, "failed", error=str(py))
        out = tmp / f"{cell.id}.{os.getpid()}.{threading.get_ident()}.plan"
        with lock:
            report.builder_runs += 1
        reply = _run_worker(cell, py, out)
        if not reply.get("ok"):
            out.unlink(missing_ok=True)
            return CellResult(cell, "failed", error=reply.get("error") or "unknown worker error",
                              seconds=time.monotonic() - started)
        try:
            sha, size = repository.add_blob_file(out, move=True)
            art = _artifact(cell, cfg, reply, sha, size, weights[cell.onnx])
            repository.add_artifacts([art], project=project)
        except RtxpackError as e:
            return CellResult(cell, "failed", error=str(e), seconds=time.monotonic() - started)
        return CellResult(cell, "built", artifact=art, seconds=time.monotonic() - started)

    def finish(res: CellResult) -> CellResult:
        with lock:
            done[0] += 1
            n = done[0]
        if res.status == "built":
            say(f"[{n}/{total}] built {_label(res.cell)} in {res.seconds:.1f} s -> {res.artifact.path} "
                f"({res.artifact.size} bytes)")
        else:
            say(f"[{n}/{total}] FAILED {_label(res.cell)}: {res.error}")
        return res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for res in pool.map(lambda c: finish(run(c)), todo):
            report.results.append(res)
    order = {c.id: i for i, c in enumerate(chosen)}
    report.results.sort(key=lambda r: order.get(r.cell.id, 0))
    report.seconds = time.monotonic() - t0
    return report


def _label(cell: Cell) -> str:
    return f"{cell.id[:12]} {cell.model} x {cell.target} [{','.join(cell.compute_capabilities)}] x {cell.toolchain}"
