"""Executing a plan: what to build, what is up to date, publishing the results; and the local executor.

A cell whose id is already in the repository is "up-to-date" and costs no builder work. A cell
the builder rejects fails alone with the builder's message; the others carry on. Each toolchain
runs in its own interpreter (see ``toolchains``), so one node builds for several TensorRT-RTX
versions and CUDA majors.

What every executor shares is :class:`BuildSession`: the selected cells split into skipped,
up-to-date and to-do, the weights digests, progress lines, and publishing. Executors differ only
in where the builder runs: :func:`build` runs cells here (``-j N`` threads sharing at most N
builder processes of ``pool``; a thread keeps to one toolchain while it has cells, switching
retires an idle builder when N are alive), ``cluster.build_on_cluster`` runs them as tasks on
Dask workers, whose blobs come back staged in the repository's ``.tmp`` (a shared filesystem) or
as bytes.

Publishing (this process alone writes the repository): a built cell's blob goes into ``blobs/``
as soon as it finishes; the manifest (read-merge-write under the repository lock) is updated in
batches, every ``FLUSH_INTERVAL_S`` and at the end, also when the build is interrupted (Ctrl-C,
SIGTERM) or the cluster is lost. The manifest only ever names blobs that exist; a hard kill loses
at most the last interval's entries, whose blobs stay and are simply rebuilt (same bytes, same
path) next time.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..core.digest_cache import DigestCache
from ..core.errors import RtxpackError
from ..core.manifest import Artifact, artifact_id, blob_relpath
from . import toolchains as tcs
from .config import FarmConfig, load_config
from .plan import Cell, Plan, make_plan, select
from .progress import BuildProgress, as_progress
from .pool import WorkerGone, WorkerPool, WorkerUnusable, build_request, run_request
from .repo import RepositoryWriter

FLUSH_INTERVAL_S = 2.0           # manifest batch period


@dataclass
class CellResult:
    cell: Cell
    status: str                      # built | up-to-date | skipped | failed
    artifact: Artifact | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str | None = None        # the Dask worker that built it (cluster builds)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.cell.id, "model": self.cell.model, "target": self.cell.target,
                             "toolchain": self.cell.toolchain, "compute_capabilities": list(self.cell.compute_capabilities),
                             "status": self.status, "seconds": round(self.seconds, 3)}
        if self.artifact:
            d.update(artifact=self.artifact.id, sha256=self.artifact.sha256, size=self.artifact.size, path=self.artifact.path)
        if self.error:
            d["error" if self.status == "failed" else "reason"] = self.error
        if self.worker:
            d["worker"] = self.worker
        return d


@dataclass
class BuildReport:
    repo: str
    results: list[CellResult] = field(default_factory=list)
    builder_runs: int = 0            # cells handed to a builder worker: 0 for an unchanged rebuild
    workers_started: int = 0         # worker processes started (reused across cells; <= jobs unless replaced)
    worker_crashes: int = 0          # workers that died or hung mid-cell (each failed only that cell)
    peak_workers: int = 0            # most worker processes alive at once (<= jobs)
    manifest_writes: int = 0         # locked manifest updates (batched)
    seconds: float = 0.0
    cluster: dict[str, Any] | None = None   # cluster builds: scheduler, workers, lost, retried, transfer, times

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        d = {"repo": self.repo, "built": self.count("built"), "up_to_date": self.count("up-to-date"),
             "skipped": self.count("skipped"), "failed": self.count("failed"), "builder_runs": self.builder_runs,
             "workers_started": self.workers_started, "worker_crashes": self.worker_crashes,
             "peak_workers": self.peak_workers, "manifest_writes": self.manifest_writes,
             "seconds": round(self.seconds, 3), "cells": [r.to_dict() for r in self.results]}
        if self.cluster is not None:
            d["cluster"] = self.cluster
        return d


class _Publisher:
    """Finished cells' manifest entries, merged into manifest.json in batches under the repository lock."""

    def __init__(self, repository: RepositoryWriter, project: dict | None, say: Callable[[str], None]) -> None:
        self.repository = repository
        self.project = project
        self.say = say
        self._pending: list[tuple[Artifact, CellResult]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.last = time.monotonic()
        self.writes = 0

    def add(self, art: Artifact, res: CellResult) -> None:
        with self._lock:
            self._pending.append((art, res))

    def due(self) -> bool:
        with self._lock:
            return bool(self._pending) and time.monotonic() - self.last >= FLUSH_INTERVAL_S

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                batch, self._pending = self._pending, []
                self.last = time.monotonic()
            if not batch:
                return
            try:
                self.repository.add_artifacts([a for a, _ in batch], project=self.project)
                self.writes += 1
                return
            except RtxpackError:
                pass
            for art, res in batch:  # a conflicting entry (e.g. a parallel build of the same cell): fail only it
                try:
                    self.repository.add_artifacts([art], project=self.project)
                    self.writes += 1
                except RtxpackError as e:
                    res.status, res.error, res.artifact = "failed", str(e), None
                    self.say(f"FAILED {_label(res.cell)}: {e}")


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
        path=blob_relpath(sha), ptx=bool(reply.get("ptx", False)),
        os=cell.os,
        # CUDA minor-version compatibility: a toolchain of CUDA major N runs on any driver of major >= N
        min_driver_version=f"{cell.cuda}.0" if cell.cuda else None,
        precision=cell.precision, stripped=cell.strip_weights, cuda=cell.cuda, cell=cell.id,
        profiles=cell.profiles or None, extra=extra)


class BuildSession:
    """One build, whatever executes its cells: the cells to build, progress, and publishing.

    Creating it plans (or takes ``plan``), selects ``cells`` and reports the skipped and the
    up-to-date ones; an executor then builds :attr:`todo`, hands each outcome to
    :meth:`publish_file` / :meth:`publish_bytes` / :meth:`failed` and then :meth:`finish`, calls
    :meth:`flush` when :meth:`due` and on the way out, and returns :meth:`report_now`."""

    def __init__(self, config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *,
                 cells: Iterable[str] | None = None, progress: BuildProgress | Callable[[str], None] | None = None,
                 plan: Plan | None = None) -> None:
        self.t0 = time.monotonic()
        self.cfg = config if isinstance(config, FarmConfig) else load_config(config)
        self.digests = DigestCache()
        self.plan = plan or make_plan(self.cfg, digests=self.digests)
        self.chosen = select(self.plan, list(cells) if cells else None)
        self.repository = RepositoryWriter(repo)
        have = self.repository.cells()
        self.report = BuildReport(repo=str(self.repository.root))
        #: the progress reporter (a terminal bar, or one line per event); close() ends it
        self.rep = as_progress(progress)
        self.say = self.rep.message
        self.todo: list[Cell] = []
        self.total = len(self.chosen)
        lines = []
        for cell in self.chosen:
            if cell.skipped:
                self.report.results.append(CellResult(cell, "skipped", error=cell.skipped))
                lines.append(f"[skip] {_label(cell)}: {cell.skipped}")
            elif cell.id in have:
                self.report.results.append(CellResult(cell, "up-to-date", artifact=have[cell.id]))
                lines.append(f"[ok]   {_label(cell)}: up to date ({have[cell.id].id})")
            else:
                self.todo.append(cell)
        self.rep.start(self.total, len(self.report.results))
        for line in lines:
            self.say(line)
        self._lock = threading.Lock()
        self._done = len(self.report.results)
        self._built: list[CellResult] = []
        self.weights: dict[str, str] = {}
        self.publisher = _Publisher(self.repository, dict(self.cfg.project) if self.cfg.project else None, self.say)

    def hash_weights(self) -> None:
        """Weights digests of the models to build (cached by file identity), before any build starts."""
        for cell in self.todo:
            if cell.onnx not in self.weights:
                self.weights[cell.onnx] = self.digests.weights(Path(cell.onnx))
        self.digests.save()

    # ---- outcomes ----------------------------------------------------------------------------
    def failed(self, cell: Cell, error: str, started: float, worker: str | None = None) -> CellResult:
        return CellResult(cell, "failed", error=error, seconds=time.monotonic() - started, worker=worker)

    def publish_file(self, cell: Cell, out: Path, reply: dict[str, Any], started: float) -> CellResult:
        """A blob the builder wrote at ``out`` (consumed): into blobs/, its entry queued for the manifest."""
        try:
            sha, size = self.repository.add_blob_file(out, move=True)
        except (RtxpackError, OSError) as e:
            out.unlink(missing_ok=True)
            return self.failed(cell, str(e), started)
        return self._built_result(cell, reply, sha, size, started, None)

    def publish_bytes(self, cell: Cell, data: bytes, reply: dict[str, Any], started: float,
                      expected_sha256: str, worker: str | None = None) -> CellResult:
        """A blob that came back as bytes (a cluster worker): checked against the worker's sha256, then published."""
        try:
            sha, size = self.repository.add_blob_bytes(data, expected_sha256=expected_sha256)
        except (RtxpackError, OSError) as e:
            return self.failed(cell, str(e), started, worker)
        return self._built_result(cell, reply, sha, size, started, worker)

    def _built_result(self, cell: Cell, reply: dict[str, Any], sha: str, size: int, started: float,
                      worker: str | None) -> CellResult:
        art = _artifact(cell, self.cfg, reply, sha, size, self.weights[cell.onnx])
        res = CellResult(cell, "built", artifact=art, seconds=time.monotonic() - started, worker=worker)
        self.publisher.add(art, res)
        return res

    def started(self, cell: Cell) -> None:
        """A cell was handed to a builder (the bar counts it as running)."""
        self.rep.cell_started(cell)

    def finish(self, res: CellResult) -> None:
        """Record a built or failed cell and say so."""
        with self._lock:
            self._done += 1
            n = self._done
            self._built.append(res)
        self.rep.cell_finished(res, n)

    # ---- publishing --------------------------------------------------------------------------
    def due(self) -> bool:
        return self.publisher.due()

    def flush(self) -> None:
        self.publisher.flush()

    def report_now(self) -> BuildReport:
        """The report: every selected cell in plan order (those not finished are left out)."""
        report = self.report
        with self._lock:
            report.results = [r for r in report.results if r.status in ("skipped", "up-to-date")] + list(self._built)
        order = {c.id: i for i, c in enumerate(self.chosen)}
        report.results.sort(key=lambda r: order.get(r.cell.id, 0))
        report.manifest_writes = self.publisher.writes
        report.seconds = time.monotonic() - self.t0
        return report


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while inside (so a killed build flushes too)."""
    old = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")
        try:
            old = signal.signal(signal.SIGTERM, _on_term)
        except (ValueError, OSError):
            old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


# ---- the local executor ------------------------------------------------------------------------
def build(config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *, jobs: int = 1,
          cells: Iterable[str] | None = None, progress: BuildProgress | Callable[[str], None] | None = None,
          plan: Plan | None = None) -> BuildReport:
    """Build the selected cells of ``config`` into ``repo`` here (skipping those already there).

    ``progress``: a :class:`~rtxpack.farm.progress.BuildProgress` (e.g. the terminal bar), or a
    callable that gets one line per event."""
    session = BuildSession(config, repo, cells=cells, progress=progress, plan=plan)
    try:
        if session.todo:
            _run_locally(session, jobs)
        return session.report_now()
    finally:
        session.rep.close()


def _run_locally(session: BuildSession, jobs: int) -> None:
    todo, say, report = session.todo, session.say, session.report
    # toolchains first, sequentially (a venv install is I/O heavy and must happen once)
    pythons: dict[str, str | BaseException] = {}
    by_name = {t.name: t for t in session.plan.toolchains}
    for name in sorted({c.toolchain for c in todo}):
        try:
            pythons[name] = tcs.ensure(by_name[name], log=say)
        except RtxpackError as e:
            pythons[name] = e
    session.hash_weights()

    lock = threading.Lock()
    tmp = session.repository.tmp_dir()
    pool = WorkerPool(max(1, jobs))
    broken: dict[str, str] = {}          # toolchain -> why its workers cannot build
    stop = threading.Event()
    queues: dict[str, deque[Cell]] = {}  # per toolchain, in plan order
    for cell in todo:
        queues.setdefault(cell.toolchain, deque()).append(cell)

    def next_cell(prefer: str | None) -> Cell | None:
        with lock:
            if stop.is_set():
                return None
            if prefer and queues.get(prefer):
                return queues[prefer].popleft()
            left = [k for k, q in queues.items() if q]
            if not left:
                return None
            idle = pool.idle_keys()
            k = next((k for k in left if k in idle), None) or max(left, key=lambda k: len(queues[k]))
            return queues[k].popleft()

    def run(cell: Cell) -> CellResult:
        started = time.monotonic()
        session.started(cell)
        py = pythons[cell.toolchain]
        if isinstance(py, BaseException):
            return session.failed(cell, str(py), started)
        if cell.toolchain in broken:
            return session.failed(cell, broken[cell.toolchain], started)
        out = tmp / f"{cell.id}.{os.getpid()}.{threading.get_ident()}.plan"

        def acquired() -> None:
            with lock:
                report.builder_runs += 1
        try:
            reply, _ = run_request(pool, cell, py, build_request(cell, cell.onnx, out), stopping=stop.is_set,
                                   acquired=acquired)
        except WorkerUnusable as e:
            broken[cell.toolchain] = str(e)
            return session.failed(cell, str(e), started)
        except WorkerGone as e:
            out.unlink(missing_ok=True)
            return session.failed(cell, str(e), started)
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        if not reply.get("ok"):
            out.unlink(missing_ok=True)
            return session.failed(cell, reply.get("error") or "unknown worker error", started)
        return session.publish_file(cell, out, reply, started)

    def loop() -> None:
        prefer = None
        while True:
            cell = next_cell(prefer)
            if cell is None:
                return
            prefer = cell.toolchain
            try:
                res = run(cell)
            except Exception as e:  # a bug here must not hang the build: fail the cell, keep going
                res = CellResult(cell, "failed", error=f"{type(e).__name__}: {e}")
            session.finish(res)

    threads = [threading.Thread(target=loop, name=f"rtxpack-build-{i}", daemon=True)
               for i in range(min(max(1, jobs), len(todo)))]
    with sigterm_as_interrupt():
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.25)
                    if session.due():
                        session.flush()
        except BaseException:
            stop.set()                       # no new cells; in-flight ones end when their worker is killed
            pool.shutdown(kill_busy=True)
            for t in threads:
                t.join(timeout=10)
            raise
        finally:
            try:
                session.flush()              # finished cells are never lost, also on Ctrl-C / SIGTERM
            finally:
                pool.shutdown()
                report.workers_started, report.worker_crashes = pool.started, pool.crashed
                report.peak_workers = pool.peak


def _label(cell: Cell) -> str:
    return f"{cell.id[:12]} {cell.model} x {cell.target} [{','.join(cell.compute_capabilities)}] x {cell.toolchain}"
