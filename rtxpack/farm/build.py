"""Executing a plan: cells on a pool of long-lived worker processes, publishing into a repository.

A cell whose id is already in the repository is "up-to-date" and costs no builder work. A cell
the builder rejects fails alone with the builder's message; the others carry on. Each toolchain
runs in its own interpreter (see ``toolchains``), so one node builds for several TensorRT-RTX
versions and CUDA majors.

Workers: ``-j N`` runs N scheduler threads sharing at most N worker processes in total. A worker
is a subprocess of its toolchain's python in ``--serve`` mode (``backends/tensorrt_rtx/
build_worker.py`` or ``rtxpack.farm.worker``): it imports the builder once and then takes one JSON
request per line, so a cell costs its build, not an interpreter start. A thread keeps to one
toolchain while it has cells; switching toolchains retires an idle worker when N are alive. A
worker that dies (segfault, OOM kill) or hangs fails only the cell it was building and is
replaced for the next one.

Publishing: a built cell's blob is moved into ``blobs/`` as soon as it finishes; the manifest
(read-merge-write under the repository lock) is updated in batches, every ``FLUSH_INTERVAL_S``
and at the end, also when the build is interrupted (Ctrl-C, SIGTERM). The manifest only ever
names blobs that exist; a hard kill loses at most the last interval's entries, whose blobs stay
and are simply rebuilt (same bytes, same path) next time.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..core import registry
from ..core.digest_cache import DigestCache
from ..core.errors import RtxpackError
from ..core.manifest import Artifact, artifact_id, blob_relpath
from . import toolchains as tcs
from .config import FarmConfig, load_config
from .plan import Cell, Plan, make_plan, select
from .progress import BuildProgress, as_progress
from .repo import RepositoryWriter

WORKER_TIMEOUT_S = 3600          # one cell's build
WORKER_START_TIMEOUT_S = 600     # interpreter start + import of the builder (a cold venv can be slow)
FLUSH_INTERVAL_S = 2.0           # manifest batch period
MAX_CELLS_PER_WORKER = 200       # recycle a worker after this many cells (bounds leaks in native code)
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
    builder_runs: int = 0            # cells handed to a builder worker: 0 for an unchanged rebuild
    workers_started: int = 0         # worker processes started (reused across cells; <= jobs unless replaced)
    worker_crashes: int = 0          # workers that died or hung mid-cell (each failed only that cell)
    peak_workers: int = 0            # most worker processes alive at once (<= jobs)
    manifest_writes: int = 0         # locked manifest updates (batched)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "built": self.count("built"), "up_to_date": self.count("up-to-date"),
                "skipped": self.count("skipped"), "failed": self.count("failed"), "builder_runs": self.builder_runs,
                "workers_started": self.workers_started, "worker_crashes": self.worker_crashes,
                "peak_workers": self.peak_workers, "manifest_writes": self.manifest_writes,
                "seconds": round(self.seconds, 3), "cells": [r.to_dict() for r in self.results]}


# ---- worker processes --------------------------------------------------------------------------
def _worker_command(cell: Cell, python: str) -> list[str]:
    spec = registry.get(cell.backend)
    if spec.worker_argv is None:
        raise WorkerUnusable(f"the {cell.backend} backend has no farm builder")
    return spec.worker_argv(python)


def _worker_env(cell: Cell) -> dict[str, str]:
    env = dict(os.environ)
    if registry.get(cell.backend).worker_needs_rtxpack:
        env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerGone(Exception):
    """The worker died, hung or spoke garbage; it is unusable (the message says why)."""


class WorkerUnusable(Exception):
    """The worker started but cannot build (e.g. its python has no tensorrt_rtx)."""


def _exit_text(rc: int | None) -> str:
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return f"exit {rc}, killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"exit {rc}"
    return f"exit {rc}"


class Worker:
    """One long-lived ``--serve`` worker process: JSON request lines in, JSON reply lines out."""

    def __init__(self, key: str, cmd: list[str], env: dict[str, str]) -> None:
        self.key = key
        self.cells = 0
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err: deque[str] = deque(maxlen=40)
        self._err_mark = 0
        self._err_lines = 0
        self._pumps = [threading.Thread(target=self._pump_out, daemon=True),
                       threading.Thread(target=self._pump_err, daemon=True)]
        for t in self._pumps:
            t.start()
        hello = self._read(WORKER_START_TIMEOUT_S, starting=True)
        if not hello.get("ready"):
            self.kill()
            raise WorkerUnusable(hello.get("error") or f"worker {cmd[0]} is not ready: {hello}")
        self.version = hello.get("version")

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)
            self.proc.stdout.close()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self._err.append(line.rstrip())
                self._err_lines += 1
        except (OSError, ValueError):
            pass
        finally:
            self.proc.stderr.close()

    def _tail(self, since_mark: bool = True) -> str:
        self._pumps[1].join(timeout=2)
        n = min(len(self._err), self._err_lines - self._err_mark) if since_mark else len(self._err)
        lines = list(self._err)[-n:] if n > 0 else []
        return "\n".join(lines[-8:])

    def _gone(self, what: str) -> WorkerGone:
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        tail = self._tail()
        return WorkerGone(f"worker crashed ({_exit_text(rc)}) {what}" + (f": {tail}" if tail else ""))

    def _read(self, timeout: float, *, starting: bool = False) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise WorkerGone(f"worker timed out after {timeout:.0f} s" + (" starting" if starting else "")) from None
            if line is None:
                raise self._gone("while starting" if starting else "while building this cell")
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.kill()
                raise WorkerGone(f"worker wrote something that is not a JSON reply: {line[:200]!r}") from None
            if isinstance(msg, dict):
                return msg

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one build request and wait for its reply (WorkerGone: the worker is unusable)."""
        assert self.proc.stdin is not None
        self.cells += 1
        self._err_mark = self._err_lines
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._gone("before it could take this cell") from None
        return self._read(timeout)

    def hang_up(self) -> None:
        """Close the worker's stdin: its request loop ends and it exits."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass

    def close(self) -> None:
        """Graceful stop: hang up, then wait briefly (kill if it does not go)."""
        self.hang_up()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self._pumps:
            t.join(timeout=1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin,):
            try:
                if f:
                    f.close()
            except OSError:
                pass


class WorkerPool:
    """At most ``size`` live workers in total, idle ones kept per toolchain for reuse."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._idle: dict[str, list[Worker]] = {}
        self._busy: set[Worker] = set()
        self._live = 0                  # alive + being started
        self.started = 0
        self.crashed = 0
        self.peak = 0
        self.closed = False

    def idle_keys(self) -> set[str]:
        with self._lock:
            return {k for k, v in self._idle.items() if v}

    def acquire(self, key: str, cmd: list[str], env: dict[str, str]) -> Worker:
        """An idle worker of ``key``, or a new one (retiring an idle worker of another key if at the limit).

        Callers hold at most one worker each and there are at most ``size`` callers, so at the limit
        some worker is idle."""
        victim = None
        with self._lock:
            if self.closed:
                raise WorkerGone("the build is stopping")
            free = self._idle.get(key)
            if free:
                w = free.pop()
                self._busy.add(w)
                return w
            if self._live >= self.size:
                victim = next((ws.pop() for ws in self._idle.values() if ws), None)
                if victim is None:
                    raise RuntimeError("worker pool exhausted (more callers than workers)")
            else:
                self._live += 1
            self.started += 1
            self.peak = max(self.peak, self._live)
        if victim is not None:
            victim.close()
        try:
            w = Worker(key, cmd, env)
        except OSError as e:
            with self._lock:
                self._live -= 1
            raise WorkerUnusable(f"cannot start worker {cmd[0]}: {e}") from None
        except (WorkerGone, WorkerUnusable):
            with self._lock:
                self._live -= 1
            raise
        with self._lock:
            self._busy.add(w)
            if self.closed:
                self._busy.discard(w)
                self._live -= 1
                w.kill()
                raise WorkerGone("the build is stopping")
        return w

    def release(self, w: Worker) -> None:
        with self._lock:
            self._busy.discard(w)
            keep = not self.closed and w.cells < MAX_CELLS_PER_WORKER and w.proc.poll() is None
            if keep:
                self._idle.setdefault(w.key, []).append(w)
            else:
                self._live -= 1
        if not keep:
            w.close()

    def discard(self, w: Worker, *, crashed: bool) -> None:
        with self._lock:
            self._busy.discard(w)
            self._live -= 1
            if crashed:
                self.crashed += 1
        w.kill()

    def shutdown(self, *, kill_busy: bool = False) -> None:
        with self._lock:
            self.closed = True
            idle = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
            busy = list(self._busy) if kill_busy else []
        for w in busy:
            w.kill()
        for w in idle:
            w.hang_up()
        for w in idle:
            w.close()


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


def build(config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *, jobs: int = 1,
          cells: Iterable[str] | None = None, progress: BuildProgress | Callable[[str], None] | None = None,
          plan: Plan | None = None) -> BuildReport:
    """Build the selected cells of ``config`` into ``repo`` (skipping those already there).

    ``progress``: a :class:`~rtxpack.farm.progress.BuildProgress` (e.g. the terminal bar), or a
    callable that gets one line per event."""
    rep = as_progress(progress)
    try:
        return _build(config, repo, jobs=jobs, cells=cells, rep=rep, plan=plan)
    finally:
        rep.close()


def _build(config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *, jobs: int,
           cells: Iterable[str] | None, rep: BuildProgress, plan: Plan | None) -> BuildReport:
    t0 = time.monotonic()
    cfg = config if isinstance(config, FarmConfig) else load_config(config)
    digests = DigestCache()
    plan = plan or make_plan(cfg, digests=digests)
    chosen = select(plan, list(cells) if cells else None)
    repository = RepositoryWriter(repo)
    have = repository.cells()
    report = BuildReport(repo=str(repository.root))
    say = rep.message
    todo: list[Cell] = []
    total = len(chosen)
    lines = []
    for cell in chosen:
        if cell.skipped:
            report.results.append(CellResult(cell, "skipped", error=cell.skipped))
            lines.append(f"[skip] {_label(cell)}: {cell.skipped}")
        elif cell.id in have:
            report.results.append(CellResult(cell, "up-to-date", artifact=have[cell.id]))
            lines.append(f"[ok]   {_label(cell)}: up to date ({have[cell.id].id})")
        else:
            todo.append(cell)
    rep.start(total, len(report.results))
    for line in lines:
        say(line)
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
    pool = WorkerPool(max(1, jobs))
    publisher = _Publisher(repository, project, say)
    broken: dict[str, str] = {}          # toolchain -> why its workers cannot build
    stop = threading.Event()
    queues: dict[str, deque[Cell]] = {}  # per toolchain, in plan order
    for cell in todo:
        queues.setdefault(cell.toolchain, deque()).append(cell)
    built: list[CellResult] = []

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

    def failed(cell: Cell, error: str, started: float) -> CellResult:
        return CellResult(cell, "failed", error=error, seconds=time.monotonic() - started)

    def run(cell: Cell) -> CellResult:
        started = time.monotonic()
        rep.cell_started(cell)
        py = pythons[cell.toolchain]
        if isinstance(py, BaseException):
            return failed(cell, str(py), started)
        if cell.toolchain in broken:
            return failed(cell, broken[cell.toolchain], started)
        try:
            worker = pool.acquire(cell.toolchain, _worker_command(cell, py), _worker_env(cell))
        except WorkerUnusable as e:
            broken[cell.toolchain] = str(e)
            return failed(cell, str(e), started)
        except WorkerGone as e:
            return failed(cell, str(e), started)
        out = tmp / f"{cell.id}.{os.getpid()}.{threading.get_ident()}.plan"
        req = {"id": cell.id, "backend": cell.backend, "onnx": cell.onnx, "out": str(out),
               "precision": cell.precision, "compute_capabilities": list(cell.compute_capabilities),
               "strip_weights": cell.strip_weights, "profiles": cell.profiles}
        with lock:
            report.builder_runs += 1
        try:
            reply = worker.request(req, WORKER_TIMEOUT_S)
        except WorkerGone as e:
            pool.discard(worker, crashed=not stop.is_set())
            out.unlink(missing_ok=True)
            return failed(cell, str(e), started)
        except BaseException:
            pool.discard(worker, crashed=False)   # never leave a worker counted as busy
            out.unlink(missing_ok=True)
            raise
        pool.release(worker)
        if not reply.get("ok"):
            out.unlink(missing_ok=True)
            return failed(cell, reply.get("error") or "unknown worker error", started)
        try:
            sha, size = repository.add_blob_file(out, move=True)
            art = _artifact(cell, cfg, reply, sha, size, weights[cell.onnx])
        except (RtxpackError, OSError) as e:
            out.unlink(missing_ok=True)
            return failed(cell, str(e), started)
        res = CellResult(cell, "built", artifact=art, seconds=time.monotonic() - started)
        publisher.add(art, res)
        return res

    def finish(res: CellResult) -> None:
        with lock:
            done[0] += 1
            n = done[0]
            built.append(res)
        rep.cell_finished(res, n)

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
            finish(res)

    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt(f"signal {signum}")
        try:
            old_term = signal.signal(signal.SIGTERM, _on_term)
        except (ValueError, OSError):
            old_term = None
    threads = [threading.Thread(target=loop, name=f"rtxpack-build-{i}", daemon=True)
               for i in range(min(max(1, jobs), len(todo)))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.25)
                if publisher.due():
                    publisher.flush()
    except BaseException:
        stop.set()                       # no new cells; in-flight ones end when their worker is killed
        pool.shutdown(kill_busy=True)
        for t in threads:
            t.join(timeout=10)
        raise
    finally:
        try:
            publisher.flush()            # finished cells are never lost, also on Ctrl-C / SIGTERM
        finally:
            pool.shutdown()
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
            report.workers_started, report.worker_crashes = pool.started, pool.crashed
            report.peak_workers, report.manifest_writes = pool.peak, publisher.writes
    report.results.extend(built)
    order = {c.id: i for i, c in enumerate(chosen)}
    report.results.sort(key=lambda r: order.get(r.cell.id, 0))
    report.seconds = time.monotonic() - t0
    return report


def _label(cell: Cell) -> str:
    return f"{cell.id[:12]} {cell.model} x {cell.target} [{','.join(cell.compute_capabilities)}] x {cell.toolchain}"
