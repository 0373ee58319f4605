"""Builder processes: long-lived ``--serve`` workers of a toolchain's python, and the pool that keeps them.

A worker is a subprocess of its toolchain's python in ``--serve`` mode (``backends/tensorrt_rtx/
build_worker.py`` or ``rtxpack.farm.worker``, as the backend's registry spec says): it imports
the builder once and then takes one JSON request per line, so a cell costs its build, not an
interpreter start. A worker that dies (segfault, OOM kill) or hangs fails only the cell it was
building and is replaced for the next one. Both executors use them: the local build (``build``,
``-j N`` threads sharing at most N workers) and a Dask worker of a cluster build
(``cluster_worker``, one pool per Dask worker process).
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
from pathlib import Path
from typing import Any, Callable

from ..core import registry
from .plan import Cell

WORKER_TIMEOUT_S = 3600          # one cell's build
WORKER_START_TIMEOUT_S = 600     # interpreter start + import of the builder (a cold venv can be slow)
MAX_CELLS_PER_WORKER = 200       # recycle a worker after this many cells (bounds leaks in native code)
_PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)


def worker_command(cell: Cell, python: str) -> list[str]:
    spec = registry.get(cell.backend)
    if spec.worker_argv is None:
        raise WorkerUnusable(f"the {cell.backend} backend has no farm builder")
    return spec.worker_argv(python)


def worker_env(cell: Cell) -> dict[str, str]:
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


def build_request(cell: Cell, onnx: str, out: Path) -> dict[str, Any]:
    """The JSON request a builder worker takes for ``cell`` (``onnx``: where the model is on this node)."""
    return {"id": cell.id, "backend": cell.backend, "onnx": onnx, "out": str(out), "precision": cell.precision,
            "compute_capabilities": list(cell.compute_capabilities), "strip_weights": cell.strip_weights,
            "profiles": cell.profiles}


def run_request(pool: WorkerPool, cell: Cell, python: str, req: dict[str, Any], *,
                stopping: Callable[[], bool] = lambda: False,
                acquired: Callable[[], None] = lambda: None) -> tuple[dict[str, Any], bool]:
    """Send ``req`` to a worker of ``cell``'s toolchain from ``pool``: (reply, whether a new worker was started).

    ``acquired()`` is called once a worker holds the request. WorkerUnusable: no worker of that
    toolchain can start; WorkerGone: the worker could not start, or died or hung on this request
    (it is discarded and counted as a crash unless ``stopping()``)."""
    worker = pool.acquire(cell.toolchain, worker_command(cell, python), worker_env(cell))
    fresh = worker.cells == 0
    acquired()
    try:
        reply = worker.request(req, WORKER_TIMEOUT_S)
    except WorkerGone:
        pool.discard(worker, crashed=not stopping())
        raise
    except BaseException:
        pool.discard(worker, crashed=False)   # never leave a worker counted as busy
        raise
    pool.release(worker)
    return reply, fresh
