"""The farm on a Dask distributed cluster: cells and warm-ups as tasks, results back to this process.

``rtxpack build CONFIG --repo DIR --cluster tcp://host:8786`` (or ``--cluster local``: a
LocalCluster of ``-j`` workers inside this process) plans and selects exactly as a local build
(:class:`~.build.BuildSession`), submits each cell to be built as a task (``cluster_worker.run_cell``),
and publishes the blobs that come back: this process alone writes blobs and the batched manifest,
so the result is the repository a local build makes (same cell ids, same blobs where the builder
reproduces them). Where every worker sees this repository's ``.tmp`` (a shared filesystem, or one
machine) models are read in place and blobs staged there; otherwise both travel as bytes (see
``cluster_worker``). ``rtxpack warm
CONFIG --repo DIR --cluster ADDRESS`` makes runtime caches for every ``[[gpus]]`` SKU of the
config that has a worker, and names the SKUs that have none.

Routing by resource: a worker declares what it has with Dask's resources, e.g. a farm GPU node
``dask worker tcp://host:8786 --resources "gpu-sm89=1 gpu-rtx4090=1"``. CPU cells carry no
restriction and run anywhere; a cell that needs a GPU (weight-stripped builds of a backend whose
stripping needs one) asks for ``gpu-sm<XY>`` of its compute capability; a warm-up for SKU ``s``
asks for ``gpu-<s>``. A cell no connected worker could run is skipped with the reason before
anything is submitted: the scheduler would hold it forever.

Faults: a worker that dies mid-cell is seen as a ``remove-worker`` event; the scheduler runs its
cells on another worker, up to ``distributed.scheduler.allowed-failures`` times, after which the
cell fails alone (KilledWorker) with that reason. A builder that crashes fails only its cell. If
the scheduler goes away, every finished cell is published and ClusterError says what was not
built; Ctrl-C or SIGTERM cancels the submitted tasks and publishes what finished. Either way the
repository holds only whole blobs and a manifest naming them, and the next run builds the rest.

Dask is imported only here and only when asked for: without ``pip install 'rtxpack[cluster]'``
the other commands work and these say what to install.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import time
import uuid
import warnings
from concurrent.futures import CancelledError
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..core import config as env_config
from ..core import registry
from ..core.device import detect_gpus
from ..core.digest_cache import DigestCache
from ..core.errors import ClusterError, ConfigError
from ..core.manifest import Artifact
from ..core.versions import format_cc, parse_cc
from .build import BuildReport, BuildSession, CellResult, sigterm_as_interrupt
from .cluster_worker import STARTED_TOPIC, ModelFiles, Staging, hold, run_cell, sees, warm_one
from .config import FarmConfig, GpuSpec, load_config
from .plan import Cell, Plan, make_plan
from .repo import RepositoryWriter
from .warm import WarmResult, publish_caches

LOCAL = "local"                 # --cluster local: a LocalCluster in this process
NO_WORKER_GRACE_S = 60.0        # a cell whose resource no worker offers any more fails after this
_INSTALL = "pip install 'rtxpack[cluster]'"


def cc_resource(cc: str) -> str:
    """The Dask resource a worker with a GPU of compute capability ``cc`` declares: ``gpu-sm89``."""
    major, minor = parse_cc(cc)
    return f"gpu-sm{major}{minor}"


def cell_resources(cell: Cell) -> dict[str, float] | None:
    """What a cell asks of its worker: a GPU of its compute capability when its build needs one."""
    if cell.strip_weights and registry.get(cell.backend).strip_needs_gpu and len(cell.compute_capabilities) == 1:
        return {cc_resource(cell.compute_capabilities[0]): 1}
    return None


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ClusterError(f"--cluster needs Dask distributed, which is not importable here ({e})",
                           fix=f"{_INSTALL} (on the submitting machine and on every worker)") from e
    return distributed


# ---- the cluster -------------------------------------------------------------------------------
@dataclass
class ClusterInfo:
    """The scheduler's address and its workers: ``{address: (label, resources)}`` (``labels``: every
    worker seen, departed ones included, so messages name them)."""

    address: str
    workers: dict[str, tuple[str, dict[str, float]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def update(self, workers: dict[str, tuple[str, dict[str, float]]]) -> None:
        self.workers = workers
        self.labels.update({a: label for a, (label, _) in workers.items()})

    @property
    def where(self) -> str:
        return "the local cluster" if self.address == LOCAL else self.address

    def offering(self, resource: str) -> list[str]:
        return sorted(label for label, res in self.workers.values() if res.get(resource, 0) >= 1)

    def gpu_ccs(self) -> tuple[str, ...]:
        ccs = {f"{r[6:-1]}.{r[-1]}" for _, res in self.workers.values() for r in res
               if r.startswith("gpu-sm") and r[6:].isdigit() and len(r) > 7}
        return tuple(sorted(ccs, key=parse_cc))

    def label(self, address: str) -> str:
        return self.labels.get(address, address)

    def start_one(self, resources: str) -> str:
        """How to get a worker that declares ``resources`` ("gpu-sm89=1 ...")."""
        if self.address == LOCAL:
            return "this machine has no such GPU (the local cluster declares the GPUs it has); run on a cluster"
        return f"start one: dask worker {self.address} --nthreads 1 --resources \"{resources}\""

    def to_dict(self) -> dict[str, Any]:
        return {"scheduler": self.address,
                "workers": [{"name": label, "address": a, "resources": res}
                            for a, (label, res) in sorted(self.workers.items())]}


def _workers(client: Any) -> dict[str, tuple[str, dict[str, float]]]:
    workers = {}
    for addr, w in client.scheduler_info(n_workers=-1)["workers"].items():
        name = str(w.get("name", "")) if w.get("name") is not None else ""
        workers[addr] = (name if name and name != addr else addr, dict(w.get("resources") or {}))
    return workers


def _info(client: Any, address: str) -> ClusterInfo:
    info = ClusterInfo(address=address)
    info.update(_workers(client))
    return info


def local_resources(cfg: FarmConfig) -> dict[str, float]:
    """What a ``--cluster local`` worker declares: this machine's real GPUs, by CC and by matching [[gpus]] SKU."""
    gpus, _ = detect_gpus()
    res: dict[str, float] = {}
    for g in gpus:
        res[cc_resource(g.compute_capability)] = 1
        for spec in cfg.gpus:
            if spec.compute_capability == g.compute_capability and spec.name in (None, g.name):
                res[spec.resource] = 1
    return res


@contextlib.contextmanager
def connect(address: str, *, workers: int = 2, resources: dict[str, float] | None = None) -> Iterator[Any]:
    """A Dask client of the scheduler at ``address`` (or of a LocalCluster of ``workers`` workers in this
    process for ``local``) that has at least one worker; closed, with the LocalCluster, on the way out."""
    dd = _distributed()
    timeout = env_config.connect_timeout()
    with contextlib.ExitStack() as stack:
        if not env_config.debug():
            stack.enter_context(_quiet_dask())
        cluster = client = None
        try:
            if address == LOCAL:   # workers are threads here; each cell still runs in a builder process
                cluster = dd.LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=False,
                                          dashboard_address=None, resources=resources or None,
                                          silence_logs=logging.WARNING if env_config.debug() else logging.CRITICAL)
                client = dd.Client(cluster, timeout=timeout)
            else:
                client = dd.Client(address, timeout=timeout)
            if not client.scheduler_info()["workers"]:
                client.wait_for_workers(1, timeout=timeout)
        except (OSError, ValueError, TimeoutError) as e:
            _close(client)
            _close(cluster)
            if client is not None:
                raise ClusterError(f"no Dask worker is connected to the scheduler at {address} (waited {timeout:.0f} s)",
                                   fix=f"start workers: dask worker {address} --nthreads 1 [--resources \"gpu-sm89=1\"]",
                                   scheduler=address) from e
            raise ClusterError(f"cannot reach the Dask scheduler at {address} ({e})",
                               fix="check the address (tcp://host:8786), start one with `dask scheduler`, or use "
                                   "--cluster local", scheduler=address) from e
        stack.callback(_close, cluster)
        stack.callback(_close, client)
        yield client


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's own loggers at CRITICAL while we hold the client: our errors say what went wrong, and its
    reconnect tracebacks would only repeat it (RTXPACK_DEBUG=1 keeps them)."""
    names = ["distributed"] + [n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _close(obj: Any) -> None:
    if obj is None:
        return
    try:
        obj.close(timeout=5)
    except Exception:  # noqa: BLE001 - closing a client whose scheduler is gone may raise anything
        pass


class _Tasks:
    """Submitted tasks of one run: done futures arrive on a queue; worker losses as scheduler events."""

    def __init__(self, client: Any, info: ClusterInfo, say: Callable[[str], None]) -> None:
        self.client, self.info, self.say = client, info, say
        self.nonce = uuid.uuid4().hex[:10]
        self.done: queue.Queue[Any] = queue.Queue()
        self.pending: dict[str, Any] = {}          # key -> future
        self.inputs: dict[str, Any] = {}           # what -> future of an input (hold)
        self.events: queue.Queue[dict] = queue.Queue()
        self.lost: list[str] = []                  # workers that left unexpectedly
        self.retried: list[str] = []               # keys that were running on them
        self.needs: dict[str, str] = {}            # key -> the resource it asks for (GPU tasks only)
        self.missing_since: dict[str, float] = {}  # resource -> when its last worker left
        self.running: set[str] = set()             # keys a worker said it started, not finished yet
        self.peak_running = 0
        #: called with a task's key when a worker says it started it (the progress bar's "running")
        self.on_started: Callable[[str], None] | None = None
        self._checked = 0.0
        client.subscribe_topic("all", lambda ev: self.events.put(ev[1]))
        client.subscribe_topic(STARTED_TOPIC, lambda ev: self.events.put(dict(ev[1], action="started")))

    def input(self, what: str, make: Callable[[], Any]) -> Any:
        """A future holding ``make()`` (an input several tasks share), submitted once per ``what``."""
        if what not in self.inputs:
            with warnings.catch_warnings():   # inputs ride in the graph on purpose (see cluster_worker.hold)
                warnings.filterwarnings("ignore", message="Sending large graph")
                self.inputs[what] = self.client.submit(hold, make(), key=f"rtxpack-input-{what}-{self.nonce}",
                                                       pure=False)
        return self.inputs[what]

    def submit(self, name: str, fn: Callable[..., Any], *args: Any, resources: dict[str, float] | None) -> str:
        key = f"rtxpack-{name}-{self.nonce}"
        fut = self.client.submit(fn, *args, key=key, resources=resources, pure=False)
        fut.add_done_callback(self.done.put)
        self.pending[key] = fut
        if resources:
            self.needs[key] = next(iter(resources))
        return key

    def next(self, timeout: float = 0.25) -> Any:
        """The next finished future (None after ``timeout``); worker events are handled meanwhile."""
        try:
            fut = self.done.get(timeout=timeout)
        except queue.Empty:
            fut = None
        self._events()
        if fut is not None:
            self.running.discard(fut.key)
            if self.pending.pop(fut.key, None) is None:
                return None
        return fut

    def _events(self) -> None:
        changed = False
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            if ev.get("action") == "started":
                fut = self.pending.get(ev.get("key"))
                if fut is not None and not fut.done():   # events trail results: a finished task is not running
                    if ev["key"] not in self.running and self.on_started is not None:
                        self.on_started(ev["key"])
                    self.running.add(ev["key"])
                    now = sum(1 for k in self.running if k in self.pending and not self.pending[k].done())
                    self.peak_running = max(self.peak_running, now)
                continue
            if ev.get("action") not in ("add-worker", "remove-worker"):
                continue
            changed = True
            if ev["action"] == "remove-worker" and not ev.get("expected"):
                addr = ev.get("worker", "?")
                mine = sorted(k for k in ev.get("processing-tasks", ()) if k in self.pending)
                self.running.difference_update(mine)
                self.lost.append(self.info.label(addr))
                self.retried.extend(mine)
                self.say(f"worker {self.info.label(addr)} left the cluster while running {len(mine)} of our task(s); "
                         "the scheduler runs them on another worker")
        if changed:
            with contextlib.suppress(Exception):
                self.info.update(_workers(self.client))

    def stranded(self) -> list[tuple[str, str]]:
        """(key, reason) of pending tasks whose resource no worker has offered for NO_WORKER_GRACE_S
        (checked once a second; a task the scheduler cannot place would wait forever)."""
        now = time.monotonic()
        if not self.needs or now - self._checked < 1.0:
            return []
        self._checked = now
        out = []
        wanted = {r for k, r in self.needs.items() if k in self.pending}
        for r in wanted:
            if self.info.offering(r):
                self.missing_since.pop(r, None)
                continue
            gone = now - self.missing_since.setdefault(r, now)
            if gone >= NO_WORKER_GRACE_S:
                why = (f"no worker of the cluster offers {r} any more (none for {gone:.0f} s); "
                       f"{self.info.start_one(f'{r}=1')} and run again")
                out += [(k, why) for k, need in self.needs.items() if need == r and k in self.pending]
        for k, _ in out:
            self.client.cancel([self.pending.pop(k)])
        return out

    def drain(self, handle: Callable[[Any], None], fail: Callable[[str, str], None],
              tick: Callable[[], None] = lambda: None) -> ClusterError | None:
        """Hand every finished future to ``handle`` (stranded ones to ``fail``) until none is pending;
        a ClusterError (returned, not raised) when the scheduler went away."""
        while self.pending:
            fut = self.next()
            for key, why in self.stranded():
                fail(key, why)
            if fut is not None:
                lost = self.lost_scheduler(fut)
                if lost is not None:
                    return lost
                try:
                    handle(fut)
                except (OSError, CancelledError) as e:   # its result could not be fetched: the scheduler is gone
                    return self._lost(f"{type(e).__name__}: {e}")
                fut.release()
            tick()
        return None

    def close(self) -> None:
        """Stop listening to scheduler events (before the client closes)."""
        for topic in ("all", STARTED_TOPIC):
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)

    def cancel_all(self) -> None:
        futs = list(self.pending.values()) + list(self.inputs.values())
        if futs:
            with contextlib.suppress(Exception):
                self.client.cancel(futs, force=True)
        self.pending.clear()
        self.inputs.clear()

    def lost_scheduler(self, fut: Any) -> ClusterError | None:
        """A ClusterError when ``fut`` was cancelled because the scheduler went away (or cancelled at all)."""
        if fut.status != "cancelled":
            return None
        try:
            fut.result(timeout=1)
        except CancelledError as e:
            why = getattr(e, "reason", None) or str(e)
        except Exception as e:  # noqa: BLE001 - whatever the client says about a dead connection
            why = f"{type(e).__name__}: {e}"
        else:
            why = "cancelled"
        return self._lost(why)

    def _lost(self, why: str) -> ClusterError:
        return ClusterError(f"lost the Dask scheduler at {self.info.address} ({why})",
                            fix="start the scheduler and workers again and run the same command: what finished is "
                                "published and up to date", scheduler=self.info.address)


def _task_error(fut: Any, info: ClusterInfo) -> str:
    exc = fut.exception(timeout=5)
    if type(exc).__name__ == "KilledWorker":
        last = getattr(getattr(exc, "last_worker", None), "address", None)
        tries = getattr(exc, "allowed_failures", None)
        return (f"the Dask workers running this cell died {tries + 1 if tries is not None else 'several'} time(s) "
                f"(last: {info.label(last) if last else 'unknown'}); the scheduler gave up "
                "(distributed.scheduler.allowed-failures); see that worker's log (out of memory?)")
    return f"the task failed on the cluster: {type(exc).__name__}: {exc}"


# ---- build -------------------------------------------------------------------------------------
def cluster_plan(cfg: FarmConfig, info: ClusterInfo, digests: DigestCache | None = None) -> Plan:
    """The plan as a local build makes it, with GPU cells judged against the cluster's workers, not this node."""
    offered = info.gpu_ccs()
    plan = make_plan(cfg, gpu_ccs=offered, digests=digests)
    cells = []
    for c in plan.cells:
        need = cell_resources(c)
        if c.skipped and need and not info.offering(next(iter(need))):
            spec = registry.get(c.backend)
            if spec.plan_problem(c.compute_capabilities, c.precision, c.strip_weights, c.compute_capabilities,
                                 c.target) is None:   # the missing GPU is its only problem
                r = next(iter(need))
                c = replace(c, skipped=f"needs a GPU of compute capability {c.compute_capabilities[0]} to build "
                                       f"(weight stripping) and no worker of {info.where} declares {r} (GPU "
                                       f"workers: {', '.join(offered) or 'none'}); {info.start_one(f'{r}=1')}, "
                                       "or set strip_weights = false")
        cells.append(c)
    return replace(plan, cells=cells)


def build_on_cluster(config: FarmConfig | str | os.PathLike[str], repo: str | os.PathLike[str], *, cluster: str,
                     jobs: int = 2, cells: Iterable[str] | None = None,
                     progress: Callable[[str], None] | None = None, transfer: str = "auto") -> BuildReport:
    """Build the selected cells of ``config`` into ``repo`` on the Dask cluster at ``cluster`` (see the module doc).

    ``transfer``: "auto" uses a shared filesystem when every worker sees this repository's staging
    folder (models read in place, blobs staged there), else bytes; "bytes" always sends bytes."""
    if transfer not in ("auto", "bytes"):
        raise ConfigError(f"transfer={transfer!r} is not auto or bytes", fix="pass transfer='auto' or 'bytes'",
                          value=transfer, option="transfer")
    t0 = time.monotonic()
    cfg = config if isinstance(config, FarmConfig) else load_config(config)
    with connect(cluster, workers=jobs, resources=local_resources(cfg) if cluster == LOCAL else None) as client:
        info = _info(client, cluster)
        digests = DigestCache()
        session = BuildSession(cfg, repo, cells=cells, progress=progress, plan=cluster_plan(cfg, info, digests))
        session.t0 = t0
        report = session.report
        report.peak_workers = len(info.workers)
        report.cluster = info.to_dict()
        try:
            if session.todo:
                _run_cells(client, info, session, transfer)
            return session.report_now()
        finally:
            session.rep.close()


@contextlib.contextmanager
def _staging(folder: Path, nonce: str) -> Iterator[Staging]:
    """A token file in ``folder`` that workers read to prove they see it; removed, with every blob staged
    under its name (and those of builds that are gone), on the way out."""
    for stale in folder.glob("cluster-*.*.plan"):   # left by a build that ended before its workers did
        if not (folder / f"{stale.name.split('.', 1)[0]}.token").exists():
            stale.unlink(missing_ok=True)
    staging = Staging(folder=str(folder.resolve()), name=f"cluster-{nonce}", token=secrets.token_hex(16))
    token = folder / f"{staging.name}.token"
    token.write_text(staging.token)
    try:
        yield staging
    finally:
        token.unlink(missing_ok=True)
        for f in folder.glob(f"{staging.name}.*"):
            f.unlink(missing_ok=True)


def _shared(client: Any, staging: Staging) -> bool:
    """Whether every worker sees ``staging`` (a shared filesystem, or this machine)."""
    try:
        seen = client.run(sees, staging)
    except Exception:  # noqa: BLE001 - a worker that cannot even run the probe will get bytes
        return False
    return bool(seen) and all(seen.values())


def _run_cells(client: Any, info: ClusterInfo, session: BuildSession, transfer: str) -> None:
    session.hash_weights()
    report = session.report
    assert report.cluster is not None
    toolchains = {t.name: t for t in session.plan.toolchains}
    tasks = _Tasks(client, info, session.say)
    cells: dict[str, Cell] = {}
    tasks.on_started = lambda key: session.started(cells[key]) if key in cells else None
    lost: ClusterError | None = None
    told: set[str] = set()                    # workers said to be sent model bytes

    def submit(cell: Cell, *, ship: bool) -> None:
        model = (tasks.input(f"model-{cell.model}", lambda: ModelFiles.read(cell.onnx, cell.model_digest or ""))
                 if ship else None)
        key = tasks.submit(f"cell-{cell.id[:16]}" + ("-bytes" if ship else ""), run_cell, cell,
                           toolchains[cell.toolchain], model, staging if transfer == "auto" else None,
                           resources=cell_resources(cell))
        cells[key] = cell

    def handle(fut: Any) -> None:
        cell = cells[fut.key]
        if fut.status == "error":
            session.finish(session.failed(cell, _task_error(fut, info), time.monotonic()))
            return
        t = time.monotonic()
        out = fut.result()
        if out.get("needs_bytes"):            # a worker that does not share our filesystem took it: resend
            if out["worker"] not in told:
                told.add(out["worker"])
                session.say(f"{out['error']}: sending it model bytes")
            submit(cell, ship=True)
            return
        session.finish(_cell_result(session, cell, out, staging, time.monotonic() - t))

    def fail(key: str, why: str) -> None:
        session.finish(session.failed(cells[key], why, time.monotonic()))

    def tick() -> None:
        if session.due():
            session.flush()

    with sigterm_as_interrupt(), _staging(session.repository.tmp_dir(), tasks.nonce) as staging:
        shared = transfer == "auto" and _shared(client, staging)
        report.cluster["transfer"] = "shared filesystem" if shared else "bytes"
        try:
            for cell in session.todo:
                submit(cell, ship=not shared)
            tasks.inputs.clear()     # the scheduler keeps each while a cell needs it (a resend submits it again)
            lost = tasks.drain(handle, fail, tick)
        except BaseException:
            tasks.cancel_all()
            raise
        finally:
            tasks.close()
            session.flush()       # finished cells are published also on Ctrl-C and when the scheduler is gone
            report.peak_workers = max(report.peak_workers, len(tasks.info.workers))
            report.worker_crashes += len(tasks.lost)
            report.cluster.update(workers_lost=tasks.lost, retried=[cells[k].id for k in tasks.retried if k in cells],
                                  peak_running=tasks.peak_running)
    if lost is not None:
        tasks.cancel_all()
        done = [r for r in session.report_now().results if r.status in ("built", "failed")]
        built = sum(r.status == "built" for r in done)
        raise ClusterError(f"{lost.message}: {built} cell(s) were built and published, "
                           f"{len(session.todo) - len(done)} were not", fix=lost.fix, scheduler=info.address) from lost


def _cell_result(session: BuildSession, cell: Cell, out: dict[str, Any], staging: Staging,
                 fetched: float) -> CellResult:
    report = session.report
    started = time.monotonic() - out.get("seconds", 0.0)
    report.builder_runs += bool(out.get("builder_run"))
    report.workers_started += bool(out.get("builder_started"))
    report.worker_crashes += bool(out.get("builder_crashed"))
    if not out.get("ok"):
        return session.failed(cell, out.get("error") or "unknown worker error", started, out.get("worker"))
    t = time.monotonic()
    assert report.cluster is not None
    how = report.cluster.setdefault("blobs", {"staged": 0, "bytes": 0})   # how blobs came back
    how["staged" if "file" in out else "bytes"] += 1
    if "file" in out:
        staged = Path(out["file"])
        if staged.parent != Path(staging.folder) or not staged.name.startswith(staging.name + "."):
            return session.failed(cell, f"worker {out.get('worker')} named {staged}, not a file of {staging.folder}",
                                  started, out.get("worker"))
        res = session.publish_file(cell, staged, out["reply"], started)
        res.worker = out.get("worker")
    else:
        res = session.publish_bytes(cell, out["data"], out["reply"], started, out["sha256"], out.get("worker"))
    spent = report.cluster.setdefault("seconds", {})
    for phase, secs in dict(out.get("phases") or {}, fetch=fetched, publish=time.monotonic() - t).items():
        spent[phase] = round(spent.get(phase, 0.0) + secs, 3)
    return res


# ---- warm --------------------------------------------------------------------------------------
@dataclass
class ClusterWarmReport:
    results: list[WarmResult]
    gpus: list[dict[str, Any]]              # every [[gpus]] SKU: its resource and the workers offering it
    missing: list[dict[str, Any]]           # SKUs of the config no worker offers (no caches made for them)
    cluster: dict[str, Any]
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"warmed": self.count("warmed"), "skipped": self.count("skipped"), "failed": self.count("failed"),
                "engines": [r.to_dict() for r in self.results], "gpus": self.gpus, "missing": self.missing,
                "cluster": self.cluster, "seconds": round(self.seconds, 3)}


def warm_on_cluster(config: str | os.PathLike[str], repo: str | os.PathLike[str], *, cluster: str, jobs: int = 2,
                    progress: Callable[[str], None] | None = None) -> ClusterWarmReport:
    """Runtime caches for every engine of ``repo`` on one worker of each ``[[gpus]]`` SKU of ``config``."""
    t0 = time.monotonic()
    cfg = load_config(config)
    if not cfg.gpus:
        raise ConfigError(f"{cfg.path}: lists no GPUs to warm runtime caches for",
                          fix='add [[gpus]] tables: sku = "rtx4090", compute_capability = "8.9" (one per GPU SKU '
                              "the app supports)", key="gpus", path=str(cfg.path))
    say = progress or (lambda s: None)
    writer = RepositoryWriter(repo)
    engines = writer.load().select(kind="engine")
    models = {m.name: m for m in cfg.models}
    with connect(cluster, workers=jobs, resources=local_resources(cfg) if cluster == LOCAL else None) as client:
        info = _info(client, cluster)
        gpus, missing = [], []
        for g in cfg.gpus:
            offering = info.offering(g.resource)
            gpus.append({"sku": g.sku, "compute_capability": g.compute_capability, "name": g.name,
                         "resource": g.resource, "workers": offering})
            if not offering:
                missing.append({"sku": g.sku, "resource": g.resource,
                                "reason": f"no worker of {info.where} declares {g.resource}; "
                                          + info.start_one(f"{g.resource}=1 {cc_resource(g.compute_capability)}=1")})
                say(f"[missing] {g.sku} (CC {g.compute_capability}): no worker declares {g.resource}")
        results: list[WarmResult] = []
        caches: list[tuple[Artifact, bytes]] = []
        tasks = _Tasks(client, info, say)
        names: dict[str, tuple[str, str]] = {}          # key -> (engine id, sku)
        handled = [0]
        lost: ClusterError | None = None

        def handle(fut: Any) -> None:
            handled[0] += 1
            if fut.status == "error":
                engine, sku = names[fut.key]
                results.append(WarmResult(engine, "failed", _task_error(fut, info), gpu=sku))
                return
            out = fut.result()
            res = out["result"]
            results.append(res)
            if out["cache"] is not None:
                caches.append((out["cache"], out["blob"]))
                say(f"warmed {res.engine} for {res.gpu} on {res.worker}: {len(out['blob'])} bytes in {res.seconds:.1f} s")
            elif res.status == "failed":
                say(f"FAILED {res.engine} for {res.gpu} on {res.worker}: {res.reason}")

        def fail(key: str, why: str) -> None:
            handled[0] += 1
            results.append(WarmResult(names[key][0], "failed", why, gpu=names[key][1]))

        with sigterm_as_interrupt():
            try:
                for g in cfg.gpus:
                    if not info.offering(g.resource):
                        continue
                    for art in engines:
                        why = _warm_skip(art, models, g)
                        if why:
                            results.append(WarmResult(art.id, "skipped", why, gpu=g.sku))
                            continue
                        spec = models[art.model]
                        model = tasks.input(f"model-{art.model}",
                                            lambda s=spec: ModelFiles.read(s.onnx, DigestCache().model(s.onnx)))
                        plan = tasks.input(f"engine-{art.sha256[:16]}", lambda a=art: (writer.root / a.path).read_bytes())
                        key = tasks.submit(f"warm-{g.sku}-{art.sha256[:12]}", warm_one, art, plan, spec, model, g,
                                           resources={g.resource: 1})
                        names[key] = (art.id, g.sku)
                tasks.inputs.clear()
                lost = tasks.drain(handle, fail)
            except BaseException:
                tasks.cancel_all()
                raise
            finally:
                tasks.close()
                publish_caches(writer, caches)     # this process alone writes the repository
        if lost is not None:
            tasks.cancel_all()
            raise ClusterError(f"{lost.message}: {len(caches)} runtime cache(s) were published, "
                               f"{len(names) - handled[0]} warm-up(s) were not", fix=lost.fix, scheduler=info.address) from lost
        return ClusterWarmReport(results=results, gpus=gpus, missing=missing,
                                 cluster=dict(info.to_dict(), workers_lost=tasks.lost),
                                 seconds=time.monotonic() - t0)


def _warm_skip(art: Artifact, models: dict[str, Any], g: GpuSpec) -> str | None:
    """Why engine ``art`` is not sent to SKU ``g`` at all (the worker checks the rest on its real device)."""
    if art.model not in models:
        return "model not in the config"
    if not models[art.model].onnx.is_file():
        return f"ONNX file {models[art.model].onnx} (models '{art.model}'.onnx) does not exist"
    if not registry.known(art.backend):
        return f"backend {art.backend} is not registered here"
    if registry.get(art.backend).coverage(art.ccs, art.ptx, parse_cc(g.compute_capability)) is None:
        return (f"built for compute capability {', '.join(art.compute_capabilities)}, not {g.sku}'s "
                f"{format_cc(parse_cc(g.compute_capability))}")
    return None
