"""What runs on a Dask worker of a cluster build: one cell, or one engine's warm-up.

The Dask worker imports this module when it unpickles a task; it needs rtxpack installed, not
the submitter's files. A cell runs the same builder a local build runs (the registry's
``worker_argv`` in ``--serve`` mode, kept alive across cells in one :class:`~.pool.WorkerPool`
per Dask worker) in the worker's own environment: its python and backend version, its
toolchain venvs (``RTXPACK_TOOLCHAINS_DIR``), its GPU (``RTXPACK_DEVICE`` describes it where
there is none, as in the tests). Nothing here writes the repository: the submitting process does.

Inputs and blobs travel one of two ways. Where the worker sees the submitter's files (a shared
filesystem, or one machine: proved per task by reading the token file of :class:`Staging` in the
repository's ``.tmp`` folder), the builder reads the model from its path and writes the blob into
that staging folder, and the submitter moves it into ``blobs/`` after hashing it, as a local build
does. Otherwise models arrive as bytes (:class:`ModelFiles`, written once per worker into its
scratch folder, keyed and checked by model digest) and blobs go back as bytes with their sha256;
a task that was given no model bytes and finds no token says so (``needs_bytes``) and the
submitter sends the cell again with them.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..core.device import detect
from ..core.digest import model_digest, model_files
from ..core.errors import BuildError, RtxpackError
from ..core.manifest import Artifact
from ..core.resolve import Target
from . import toolchains as tcs
from .config import GpuSpec, ModelSpec
from .plan import Cell
from .pool import WorkerGone, WorkerPool, WorkerUnusable, build_request, run_request
from .warm import WarmResult, engine_problem, warm_engine


@dataclass(frozen=True)
class ModelFiles:
    """An ONNX model and its external-data files, as bytes, for a worker that cannot see the submitter's disk."""

    digest: str                                  # model digest: the cache key on workers, checked after writing
    onnx: str                                    # the .onnx file's name
    files: tuple[tuple[str, bytes], ...]         # (path relative to the .onnx's folder, bytes), the .onnx first

    @classmethod
    def read(cls, onnx_path: str | os.PathLike[str], digest: str) -> "ModelFiles":
        path = Path(onnx_path)
        names = [path.name] + model_files(path)
        for rel in names[1:]:
            _check_relative(rel, path)
        return cls(digest=digest, onnx=path.name, files=tuple((n, (path.parent / n).read_bytes()) for n in names))


@dataclass(frozen=True)
class Staging:
    """The submitter's staging folder (the repository's ``.tmp``) and the token that proves a worker sees it."""

    folder: str                                  # absolute path on the submitter
    name: str                                    # the token file is ``<name>.token``, staged blobs ``<name>.<cell>...``
    token: str                                   # the token file's content

    def visible(self) -> bool:
        """Whether this process sees that very folder (no caching: a worker's view may change)."""
        try:
            return (Path(self.folder) / f"{self.name}.token").read_text() == self.token
        except (OSError, UnicodeDecodeError):
            return False


def sees(staging: Staging) -> bool:
    """``client.run`` probe: does this worker see the submitter's staging folder?"""
    return staging.visible()


def _check_relative(rel: str, onnx: Path | str) -> None:
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BuildError(f"{onnx}: external data location {rel!r} is outside the model's folder",
                         fix="keep external-data files next to the .onnx (onnx.save(..., location='name.bin'))")


def materialize(model: ModelFiles, root: Path) -> Path:
    """``root/<digest>/<name>.onnx`` with its external data, written once (atomically) and checked by digest."""
    final = root / model.digest
    onnx = final / model.onnx
    if onnx.is_file():          # a folder is renamed into place only when complete
        return onnx
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".incoming-"))
    try:
        for rel, data in model.files:
            _check_relative(rel, model.onnx)
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        got = model_digest(tmp / model.onnx)
        if got != model.digest:
            raise BuildError(f"model {model.onnx} arrived with digest {got}, expected {model.digest}",
                             fix="run the build again; the transfer corrupted it")
        try:
            os.rename(tmp, final)
        except OSError:
            if not onnx.is_file():   # not another thread of this worker that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return onnx


# ---- this worker process -----------------------------------------------------------------------
#: the scheduler forwards these to the submitter: a task has started on a worker (its "running" count)
STARTED_TOPIC = "rtxpack-task-started"
_lock = threading.Lock()
_pools: dict[str, WorkerPool] = {}   # Dask worker address -> its builders (several workers may share a process)
_broken: dict[str, str] = {}         # toolchain -> why its builders cannot start on this worker


@dataclass(frozen=True)
class _Here:
    label: str                  # the worker's name (or address)
    scratch: Path               # rtxpack's folder in the worker's local directory
    builders: WorkerPool


def _here() -> _Here:
    """This Dask worker; tells the submitter that the current task started."""
    from distributed import get_worker

    w = get_worker()
    name = str(w.name) if w.name is not None else ""
    label = name if name and name != w.address else w.address
    w.log_event(STARTED_TOPIC, {"key": str(w.get_current_task()), "worker": label})
    with _lock:
        pool = _pools.get(w.address)
        if pool is None:
            pool = _pools[w.address] = WorkerPool(int(w.state.nthreads))
            atexit.register(pool.shutdown)
    return _Here(label, Path(w.local_directory) / "rtxpack", pool)


def hold(value: Any) -> Any:
    """A task that returns its argument: inputs submitted this way live in the scheduler's task graph,
    so the scheduler recomputes them on another worker when the worker holding them dies."""
    return value


def run_cell(cell: Cell, toolchain: tcs.Toolchain, model: ModelFiles | None,
             staging: Staging | None) -> dict[str, Any]:
    """Build one cell here: ``{"ok", "worker", "seconds", "phases", ...}`` with the blob as ``file`` (in the
    staging folder, when given and seen) or as ``data`` + ``sha256``, ``error`` when not built,
    ``needs_bytes`` when ``model`` is None and this worker does not see the staging folder. Never raises
    for a cell's own failure.
    ``phases``: seconds spent on inputs (model files, toolchain), in the builder, reading + hashing the blob."""
    t0 = time.monotonic()
    here = _here()
    label = here.label
    phases = {"inputs": 0.0, "builder": 0.0, "blob": 0.0}
    out: dict[str, Any] = {"ok": False, "worker": label, "builder_run": False, "builder_started": False,
                           "builder_crashed": False, "phases": phases}

    def done(**kw: Any) -> dict[str, Any]:
        out.update(kw, seconds=time.monotonic() - t0)
        return out

    shared = staging is not None and staging.visible()
    if model is None and not shared:
        return done(needs_bytes=True, error=f"worker {label} does not see {staging.folder if staging else 'it'}")
    try:
        onnx = cell.onnx if model is None else str(materialize(model, here.scratch / "models"))
        python = sys.executable if toolchain.local else tcs.ensure(dataclasses.replace(toolchain, python=None))
    except (RtxpackError, OSError) as e:
        return done(error=str(e))
    phases["inputs"] = time.monotonic() - t0
    if toolchain.name in _broken:
        return done(error=_broken[toolchain.name])
    name = f"{cell.id}.{os.getpid()}.{threading.get_ident()}.plan"
    plan = Path(staging.folder) / f"{staging.name}.{name}" if staging and shared else here.scratch / "plans" / name
    plan.parent.mkdir(parents=True, exist_ok=True)

    def acquired() -> None:
        out["builder_run"] = True
    t1 = time.monotonic()
    keep = False                     # a staged blob is left for the submitter
    try:
        try:
            reply, fresh = run_request(here.builders, cell, python, build_request(cell, onnx, plan),
                                       acquired=acquired)
            phases["builder"] = time.monotonic() - t1
        except WorkerUnusable as e:
            _broken[toolchain.name] = f"on worker {label}: {e}"
            return done(error=_broken[toolchain.name])
        except WorkerGone as e:
            return done(error=str(e), builder_crashed=True)
        out["builder_started"] = fresh
        if not reply.get("ok"):
            return done(error=reply.get("error") or "unknown worker error", reply=reply)
        got, want = reply.get("version"), cell.backend_version
        if want and got and got != want:
            return done(error=f"worker {label} has {cell.backend} {got}, but this cell is for {want} (the "
                              f"submitter's toolchain {cell.toolchain}); install {want} on every worker or pin it "
                              "under [[toolchains]]")
        if shared:                   # the submitter hashes and moves it, as it does a local build's
            keep = True
            return done(ok=True, reply=reply, file=str(plan))
        t2 = time.monotonic()
        data = plan.read_bytes()
    finally:
        if not keep:
            plan.unlink(missing_ok=True)
    sha = hashlib.sha256(data).hexdigest()
    phases["blob"] = time.monotonic() - t2
    return done(ok=True, reply=reply, data=data, sha256=sha)


def warm_one(art: Artifact, plan: bytes, spec: ModelSpec, model: ModelFiles, gpu_spec: GpuSpec) -> dict[str, Any]:
    """Warm engine ``art`` on this worker's GPU of ``gpu_spec``: ``{"result": WarmResult, "cache":
    Artifact | None, "blob": bytes | None}``. The GPU is checked against what the worker declared."""
    here = _here()
    label = here.label
    t0 = time.perf_counter()
    device = detect()
    pos = next((i for i, g in enumerate(device.gpus) if g.compute_capability == gpu_spec.compute_capability
                and gpu_spec.name in (None, g.name)), None)
    res: WarmResult
    cache = blob = None
    if pos is None:
        have = ", ".join(f"{g.name} (CC {g.compute_capability})" for g in device.gpus) or "no GPU"
        want = gpu_spec.name or f"a GPU of CC {gpu_spec.compute_capability}"
        res = WarmResult(art.id, "failed", f"worker {label} declares {gpu_spec.resource} but has {have}, not {want}; "
                                           "fix its --resources")
    else:
        gpu = device.gpus[pos]
        problem = engine_problem(art, Target.from_device(device, pos))
        if problem:
            res = WarmResult(art.id, "skipped", problem)
        else:
            try:
                onnx = materialize(model, here.scratch / "models")
            except (RtxpackError, OSError) as e:
                res = WarmResult(art.id, "failed", str(e))
            else:
                res, cache, blob = warm_engine(art, plan, dataclasses.replace(spec, onnx=onnx), device, gpu)
    res.gpu, res.worker = gpu_spec.sku, label
    if not res.seconds:
        res.seconds = time.perf_counter() - t0
    return {"result": res, "cache": cache, "blob": blob}
