"""``rtxpack.load()``: what an app calls on an end-user PC.

    detect -> resolve -> fetch (store first; URL, directory or bundle) -> backend load
           -> refit a stripped plan from the app's ONNX -> runtime cache in -> ready
    Session.close() -> the runtime cache out (persisted for this GPU, atomically, under a lock)

Fallbacks, each recorded in ``Session.provenance`` with its reason: the next candidate when an
artifact fails validation or does not load; offline or no match -> a JIT build on this machine
from the app's ONNX (kept in the local store, so the next start loads it directly). When nothing
can run: one ResolveError naming the GPU, what the repository offers, and what to do.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..core import registry
from ..core.device import Device
from ..core.digest import json_digest, sha256_bytes
from ..core.errors import BackendError, FetchError, OfflineError, ResolveError, StoreError
from ..core.manifest import Artifact
from ..core.onnxinfo import default_profiles
from ..core.resolve import Candidate, Resolution, Target, jit_backend
from . import runtime_caches as rcs
from .context import InstallContext
from .pipeline import Prepared, fetch_candidates, prepare, shown_repository

log = logging.getLogger(__name__)


@dataclass
class Provenance:
    """What was used and why: artifact ids, the path taken, each step's duration."""

    model: str
    device: str = ""
    path: str = ""                     # "repository" | "jit-build" | "jit-cached"
    backend: str | None = None
    plan: dict[str, Any] | None = None
    runtime_cache: str = "none"
    steps: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    resolution: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @contextmanager
    def step(self, name: str, **detail: Any) -> Iterator[dict[str, Any]]:
        rec: dict[str, Any] = {"step": name, **detail}
        t0 = time.perf_counter()
        try:
            yield rec
        except BaseException as e:
            rec["error"] = f"{type(e).__name__}: {e}"
            raise
        finally:
            rec["seconds"] = round(time.perf_counter() - t0, 6)
            self.steps.append(rec)

    def fallback(self, what: str, reason: str) -> None:
        log.info("rtxpack: %s: %s", what, reason)
        self.fallbacks.append({"from": what, "reason": reason})


class Session:
    """A loaded model. ``run`` takes and returns ``{name: numpy array}``; ``close`` persists the cache."""

    def __init__(self, loaded: Any, provenance: Provenance, *, store: Any, cache_key: rcs.CacheKey | None) -> None:
        self._loaded = loaded
        self.provenance = provenance
        self._store = store
        self._cache_key = cache_key
        self._closed = False

    @property
    def input_names(self) -> Sequence[str]:
        return self._loaded.input_names

    @property
    def output_names(self) -> Sequence[str]:
        return self._loaded.output_names

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise BackendError("this Session is closed", fix="call rtxpack.load() again")
        return self._loaded.run(inputs)

    def save_runtime_cache(self) -> Path | None:
        """Persist what the JIT compiled so far (also done by ``close``). Never raises: a cache that
        cannot be saved (read-only store, full disk) is logged, and the app goes on."""
        if self._cache_key is None:
            return None
        try:
            payload = self._loaded.runtime_cache()
        except Exception as e:  # a cache is an optimisation: never crash the app for it
            log.warning("rtxpack: could not serialize the runtime cache: %s", e)
            return None
        if not payload:
            return None
        if len(payload) > rcs.MAX_RUNTIME_CACHE_BYTES:
            log.warning("rtxpack: runtime cache of %d bytes is over the %d-byte limit; not saved", len(payload),
                        rcs.MAX_RUNTIME_CACHE_BYTES)
            return None
        try:
            return rcs.write(self._store, self._cache_key, payload)
        except StoreError as e:
            _optional_write_failed(self._store, "the runtime cache", e)
            return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self.provenance.step("persist-runtime-cache") as rec:
                p = self.save_runtime_cache()
                rec["path"] = str(p) if p else None
        finally:
            self._loaded.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        p = self.provenance
        return f"<rtxpack.Session {p.model} via {p.path} ({p.backend}) on {p.device}>"


def _optional_write_failed(store: Any, what: str, e: StoreError) -> None:
    """An optional write (runtime cache, JIT plan, digest cache) failed: quiet on a read-only
    store (a normal way to ship a shared cache), a warning otherwise (a full disk)."""
    if store.writable():
        log.warning("rtxpack: %s was not saved: %s (fix: %s)", what, e.message, e.fix)
    else:
        log.info("rtxpack: read-only store, %s not saved: %s", what, e.message)


# ---- JIT builds kept in the local store -----------------------------------------------------------
_MAX_JIT_RECORD_BYTES = 64 << 10


def _jit_key(mdigest: str, backend: str, version: str | None, cc: str, precision: str) -> str:
    return json_digest({"model": mdigest, "backend": backend, "version": version, "cc": cc, "precision": precision})[:40]


def _remember_jit(store: Any, key: str, record: dict[str, Any]) -> None:
    store.write_state(store.state_dir("jit") / f"{key}.json", json.dumps(record).encode(), "a JIT plan's record")


def _load_jit_record(store: Any, key: str) -> dict[str, Any] | None:
    folder = store.find_state_dir("jit")
    raw = store.read_state(None if folder is None else folder / f"{key}.json", _MAX_JIT_RECORD_BYTES)
    try:
        rec = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("sha256"), str) else None


# ---- load ----------------------------------------------------------------------------------------
def load(model: str, *, repo: str | os.PathLike[str] | None = None, onnx: str | os.PathLike[str] | None = None,
         backend: str | None = None, offline: bool | None = None, trusted_keys: Sequence[Any] | None = None,
         require_signed: bool | None = None, device: Device | None = None, gpu: int = 0, store: Any = None,
         precision: str = "fp32", options: Mapping[str, Any] | None = None, progress: bool | None = False,
         clock: Any = None, max_manifest_age_days: float | None = None) -> Session:
    """Load ``model`` for this machine: from ``repo`` when something there fits, else JIT from ``onnx``.

    ``store`` (a Store or a directory) holds everything this writes: blobs, manifest copies, the
    rollback state, the digest cache, runtime caches and JIT plans. ``options`` go to the
    backend's ``load`` (e.g. TensorRT-RTX's ``dynamic_shapes_kernel_specialization_strategy`` and
    ``cuda_graph_strategy``). ``trusted_keys=[]`` trusts no key; ``max_manifest_age_days`` refuses a
    manifest signed longer ago (also ``RTXPACK_MAX_MANIFEST_AGE_DAYS``).
    """
    ctx = InstallContext.create(store=store, trusted_keys=trusted_keys, require_signed=require_signed,
                                offline=offline, progress=progress, clock=clock,
                                max_manifest_age_days=max_manifest_age_days)
    prov = Provenance(model=model)
    prepared = prepare(ctx, repo, model, onnx=onnx, backend=backend, device=device, gpu_index=gpu,
                       tolerate_repo_errors=True, step=prov.step)
    try:
        return _load_prepared(ctx, prepared, prov, model, repo, options, precision, gpu, progress)
    finally:
        if prepared.repository is not None:
            prepared.repository.close()


def _load_prepared(ctx: InstallContext, prepared: Prepared, prov: Provenance, model: str, repo: Any, options: Any,
                   precision: str, gpu: int, progress: bool | None) -> Session:
    prov.device = prepared.target.describe()
    prov.resolution = prepared.resolution.to_dict()
    if prepared.repo_error is not None:
        prov.fallback(f"repository {shown_repository(repo)}", f"{prepared.repo_error}; continuing with the local ONNX")

    def skipped(cand: Candidate, e: Exception) -> None:
        if isinstance(e, OfflineError):
            prov.fallback(cand.id, f"offline and not in the local store ({e.__class__.__name__})")
        else:
            prov.fallback(cand.id, str(e))

    # verify_stored=False: _read_verified hashes the plan's bytes as it reads them
    for cand, res, files in fetch_candidates(ctx, prepared, progress=progress, skip=(FetchError,),
                                             on_skip=skipped, step=prov.step, verify_stored=False):
        try:
            if cand.artifact is not None:
                return _load_artifact(ctx, cand, res, prepared, files[0][1], prov, options, gpu)
            return _load_jit(ctx, cand, prepared, prov, options, precision, gpu)
        except (BackendError, FetchError) as e:
            skipped(cand, e)
    target = prepared.target
    if prepared.onnx is None:
        fix = ("pass onnx= so rtxpack can build on this machine, or install the backend it needs "
               "(pip install rtxpack[gpu] / rtxpack[rtx])")
    else:   # the JIT build from the given ONNX was tried and failed: its reason is in the message
        fix = (f"act on the reasons above: the build from {prepared.onnx} on this machine failed; check that the "
               "model is one the backend supports, or install the backend it names (pip install rtxpack[gpu] / "
               "rtxpack[rtx])")
    raise ResolveError(
        f"nothing could run model {model!r} on {target.describe()}: "
        + "; ".join(f"{f['from']}: {f['reason']}" for f in prov.fallbacks),
        fix=fix, model=model, gpu=target.describe(), fallbacks=prov.fallbacks)


def _cache_key(model: str, plan_sha: str, target: Target, backend: str, version: str) -> rcs.CacheKey:
    return rcs.CacheKey(model=model, plan_sha256=plan_sha, gpu_name=target.gpu_name or "", cc=target.cc_str,
                        os=target.os, driver_major=target.driver[0] if target.driver else None,
                        backend=backend, backend_version=version)


def _pick_runtime_cache(store: Any, key: rcs.CacheKey, shipped: list[tuple[Artifact, bytes]],
                        prov: Provenance) -> bytes | None:
    if shipped:
        art, data = shipped[0]
        prov.runtime_cache = f"shipped {art.id} for {art.gpu_name}"
        local, _ = rcs.read(store, key)
        if local is not None and len(local) > len(data):  # this machine already learned more than was shipped
            prov.runtime_cache = f"persisted on this machine ({len(local)} bytes; shipped {art.id} is smaller)"
            return local
        return data
    payload, why = rcs.read(store, key)
    prov.runtime_cache = why
    return payload


def _read_verified(ctx: InstallContext, prepared: Prepared, art: Artifact, path: Path, prov: Provenance) -> bytes:
    """The plan's bytes, hashed as they are read (at most its declared size): a store entry damaged
    since it was installed (same size, other bytes) is removed and fetched again, never loaded."""
    assert prepared.repository is not None
    for attempt in (1, 2):
        if attempt == 2:
            with prov.step("fetch", artifact=art.id) as rec:
                path = prepared.repository.fetch(art, ctx)
                rec["path"] = str(path)
        plan = ctx.store.read_blob(art.sha256, art.size)
        if plan is not None:
            return plan
        try:
            ctx.store.remove(art.sha256)
        except StoreError as e:
            raise FetchError(f"{art.id}: the stored plan is damaged and the store is read-only ({e.message})",
                             fix="run `rtxpack cache verify` with write access, or use a writable RTXPACK_CACHE_DIR",
                             artifact=art.id) from e
        prov.fallback(f"store copy of {art.id}", "damaged since it was installed (sha256 mismatch); fetched again")
    raise FetchError(f"{art.id}: the fetched plan does not match its sha256 twice in a row",
                     fix="run `rtxpack cache verify`; check the disk", artifact=art.id)


def _load_artifact(ctx: InstallContext, cand: Candidate, res: Resolution, prepared: Prepared, path: Path,
                   prov: Provenance, options: Any, gpu: int) -> Session:
    art = cand.artifact
    assert art is not None and prepared.repository is not None
    plan = _read_verified(ctx, prepared, art, path, prov)
    be = registry.create(art.backend)
    shipped: list[tuple[Artifact, bytes]] = []
    for m in res.caches:
        if m.ok and m.artifact.kind == "runtime-cache":
            if m.artifact.size > rcs.MAX_RUNTIME_CACHE_BYTES:
                prov.fallback(m.artifact.id, f"shipped runtime cache of {m.artifact.size} bytes is over the "
                                             f"{rcs.MAX_RUNTIME_CACHE_BYTES}-byte limit; not fetched")
                continue
            try:
                with prov.step("fetch-runtime-cache", artifact=m.artifact.id):
                    prepared.repository.fetch(m.artifact, ctx)
                    data = ctx.store.read_blob(m.artifact.sha256, m.artifact.size)
                if data is None:
                    prov.fallback(m.artifact.id, "shipped runtime cache damaged in the store; ignored")
                else:
                    shipped.append((m.artifact, data))
            except (FetchError, StoreError) as e:
                prov.fallback(m.artifact.id, f"shipped runtime cache not usable: {e}")
        elif not m.ok:
            prov.fallback(m.artifact.id, f"runtime cache near miss: {m.reason}")
    target = prepared.target
    key = _cache_key(art.model, art.sha256, target, art.backend, art.backend_version)
    cache = _pick_runtime_cache(ctx.store, key, shipped, prov)
    with prov.step("backend-load", backend=art.backend):
        loaded = be.load(plan, device=gpu, runtime_cache=cache, options=options)
    try:
        if art.stripped:
            with prov.step("refit", onnx=str(prepared.onnx)):
                loaded.refit(prepared.onnx)
    except BaseException:
        loaded.close()
        raise
    prov.path, prov.backend = "repository", art.backend
    prov.plan = {"id": art.id, "sha256": art.sha256, "tier": cand.tier, "reason": cand.reason,
                 "stripped": art.stripped, "backend_version": art.backend_version}
    _note_cache_use(loaded, prov)
    return Session(loaded, prov, store=ctx.store, cache_key=key)


def _note_cache_use(loaded: Any, prov: Provenance) -> None:
    sources = getattr(loaded, "kernel_sources", None)
    if sources:
        prov.steps.append({"step": "kernels", "sources": dict(sources), "seconds": 0.0})
    tuning = getattr(loaded, "tuning", None)
    if isinstance(tuning, dict):       # filled in by the first run of each input shape (fp16 nvrtc plans)
        prov.steps.append(tuning)
    ignored = getattr(loaded, "runtime_cache_status", None)
    if ignored:
        prov.runtime_cache += f" ({ignored})"


def _load_jit(ctx: InstallContext, cand: Candidate, prepared: Prepared, prov: Provenance, options: Any,
              precision: str, gpu: int) -> Session:
    target, onnx, store = prepared.target, prepared.onnx, ctx.store
    backend = cand.backend or jit_backend(target)
    if backend is None or onnx is None:
        raise BackendError("no backend can build on this machine", fix="pip install rtxpack[gpu]")
    spec = registry.get(backend)
    be = spec.create()
    version = be.info().version or "0"
    with prov.step("digest-onnx"):
        mdigest = ctx.model_digest(onnx)
    key = _jit_key(mdigest, backend, version, target.cc_str, precision)
    rec = _load_jit_record(store, key)
    plan = None
    if rec is not None:
        size = rec.get("size")
        if not isinstance(size, int):
            stored = store.get(rec["sha256"]) if store.has(rec["sha256"]) else None
            size = stored.stat().st_size if stored is not None else -1
        plan = store.read_blob(rec["sha256"], size) if size >= 0 else None
        if plan is None:
            if store.has(rec["sha256"]):
                prov.fallback("jit-cache", "the stored JIT plan is corrupt; building again")
        else:
            store.get(rec["sha256"])
            prov.path = "jit-cached"
    if plan is None:
        with prov.step("jit-build", backend=backend, cc=target.cc_str):
            # the registry's JIT rule: e.g. TensorRT-RTX builds for CURRENT, nvrtc for this exact arch
            profiles = default_profiles(onnx) if spec.jit_needs_profiles else None
            plan = be.build(onnx, compute_capabilities=spec.jit_ccs(target.cc), precision=precision, profiles=profiles)
        sha = sha256_bytes(plan)
        with prov.step("store-jit-plan"):
            try:
                store.add_bytes(plan, sha256=sha)
                _remember_jit(store, key, {"sha256": sha, "size": len(plan), "model": prov.model, "backend": backend,
                                           "version": version, "cc": target.cc_str, "model_digest": mdigest})
            except StoreError as e:
                _optional_write_failed(store, "the JIT plan", e)
        prov.path = "jit-build"
    sha = sha256_bytes(plan)
    ckey = _cache_key(prov.model, sha, target, backend, version)
    cache = _pick_runtime_cache(store, ckey, [], prov)
    with prov.step("backend-load", backend=backend):
        loaded = be.load(plan, device=gpu, runtime_cache=cache, options=options)
    prov.backend = backend
    prov.plan = {"id": f"jit:{sha[:16]}", "sha256": sha, "tier": "jit", "reason": cand.reason}
    _note_cache_use(loaded, prov)
    return Session(loaded, prov, store=store, cache_key=ckey)
