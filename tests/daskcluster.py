"""A real Dask cluster on loopback for the tests: ``dask scheduler`` and ``dask worker`` processes.

Every process runs this interpreter (``python -m dask scheduler|worker``), logs to a file under
``workdir`` and is started with its own environment (a worker's RTXPACK_DEVICE describes the GPU
it pretends to have; its ``--resources`` what it declares). Workers run without a nanny, so the
pid a test kills is the worker itself and a killed worker stays dead.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
PRELOAD = TESTS / "cluster_preload.py"


class DaskCluster:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        # this tree's rtxpack, and this folder: functions below run on the scheduler (run_on_scheduler)
        self.env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS)] + ([self.env["PYTHONPATH"]]
                                                                          if self.env.get("PYTHONPATH") else []))
        self.env.update(env or {})
        self.scheduler: subprocess.Popen | None = None
        self.address = ""
        self.workers: dict[str, subprocess.Popen] = {}

    def _start(self, name: str, args: list[str], env: dict[str, str] | None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        e = dict(self.env)
        e.update(env or {})
        try:
            return subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                    env=e, cwd=str(self.workdir))
        finally:
            log.close()

    def start_scheduler(self, env: dict[str, str] | None = None) -> str:
        self.scheduler = self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--no-dashboard"], env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"Scheduler at:\s+(tcp://127\.0\.0\.1:\d+)", self.log("scheduler"))
            if m:
                self.address = m.group(1)
                return self.address
            if self.scheduler.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"dask scheduler did not start:\n{self.log('scheduler')}")

    def add_worker(self, name: str, resources: str = "", env: dict[str, str] | None = None,
                   nthreads: int = 1) -> subprocess.Popen:
        args = ["worker", self.address, "--name", name, "--nworkers", "1", "--nthreads", str(nthreads),
                "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--preload", str(PRELOAD),
                "--local-directory", str(self.workdir / name)]
        if resources:
            args += ["--resources", resources]
        e = {"RTXPACK_CACHE_DIR": str(self.workdir / name / "cache")}
        e.update(env or {})
        self.workers[name] = self._start(name, args, e)
        return self.workers[name]

    def wait_for_workers(self, names: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            up = set(re.findall(r"Register worker addr: \S+ name: (\S+)", self.log("scheduler")))
            if set(names) <= up:
                return
            for n in names:
                if self.workers[n].poll() is not None:
                    raise RuntimeError(f"dask worker {n} exited:\n{self.log(n)}")
            time.sleep(0.05)
        raise RuntimeError(f"workers {names} did not register:\n{self.log('scheduler')}")

    def log(self, name: str) -> str:
        try:
            return (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM everything; SIGKILL what has not exited after 3 s (a Dask worker waits for its running
        task before it exits, and a test may have left one blocked)."""
        procs = list(self.workers.values()) + ([self.scheduler] if self.scheduler else [])
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ---- run on the scheduler (client.run_on_scheduler) ---------------------------------------------
def set_allowed_failures(n: int, dask_scheduler=None) -> None:  # type: ignore[no-untyped-def]
    """How many worker deaths a task survives (distributed.scheduler.allowed-failures), changed live."""
    dask_scheduler.allowed_failures = n


def tasks_named(prefix: str, dask_scheduler=None) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(k) for k in dask_scheduler.tasks if str(k).startswith(prefix)]
