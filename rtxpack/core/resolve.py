"""Which artifact fits this machine, best first, and why: a pure function (no I/O).

Modelled on ``packaging.tags``: the machine is a frozen, hashable :class:`Target`; the
repository is a :class:`~rtxpack.manifest.Manifest`; :func:`candidates` yields every engine of
the wanted model with the tier it was ranked in or the reason it was rejected.

Tiers, best first::

    exact-cc   an engine built for exactly this compute capability
    portable   a multi-CC engine whose list covers this CC
    ptx        a forward-compatible engine (PTX) built for an older CC
    jit        build on this machine from the app's local ONNX
    (nothing)  ResolveError naming the GPU, what the repository offers, and what to do

Inside a tier: preferred backend first (registry order, among the backends that support this GPU),
then newer backend version, then a weight-stripped engine when the app's ONNX can refit it
(smaller download), then smaller size, then id (deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from . import registry
from .device import Device
from .errors import DeviceError, ResolveError
from .manifest import Artifact, Manifest
from .registry import TIERS
from .versions import format_cc, version_tuple


@dataclass(frozen=True)
class Target:
    """The machine an artifact must fit: one GPU of a :class:`Device`, frozen and hashable."""

    cc: tuple[int, int]
    os: str
    gpu_name: str | None = None
    driver: tuple[int, ...] = ()                       # CUDA driver API version, () = unknown
    backends: tuple[tuple[str, str | None], ...] = ()  # installed versions, None = not installed

    @classmethod
    def from_device(cls, device: Device, gpu_index: int = 0) -> "Target":
        if not device.gpus:
            raise ResolveError("no NVIDIA GPU was found on this machine",
                               fix="install the NVIDIA driver, or set RTXPACK_DEVICE=8.9 to resolve for another GPU",
                               device=device.to_dict())
        if not 0 <= gpu_index < len(device.gpus):
            listed = ", ".join(f"{g.index}: {g.name} (CC {g.compute_capability})" for g in device.gpus)
            raise DeviceError(f"there is no GPU {gpu_index} on this machine; it has {len(device.gpus)} "
                              f"({listed})", fix=f"pass a GPU index from 0 to {len(device.gpus) - 1} "
                              "(`rtxpack detect` lists them)", value=gpu_index)
        g = device.gpus[gpu_index]
        return cls(cc=g.cc, os=device.os, gpu_name=g.name, driver=version_tuple(g.driver_version),
                   backends=device.backends)

    def backend_version(self, name: str) -> str | None:
        return dict(self.backends).get(name)

    @property
    def cc_str(self) -> str:
        return format_cc(self.cc)

    def describe(self) -> str:
        drv = f", CUDA driver {'.'.join(map(str, self.driver))}" if self.driver else ""
        return f"{self.gpu_name or 'GPU'} (CC {self.cc_str}, {self.os}{drv})"


@dataclass(frozen=True)
class Candidate:
    """One option, ranked (``tier`` set, ``ok`` True) or rejected (``ok`` False, ``reason`` says why)."""

    tier: str | None
    ok: bool
    reason: str
    artifact: Artifact | None = None          # None for the JIT tier
    backend: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.artifact.id if self.artifact else f"jit:{self.backend}"

    def to_dict(self) -> dict:
        d = {"id": self.id, "tier": self.tier, "ok": self.ok, "reason": self.reason, "backend": self.backend}
        if self.artifact is not None:
            a = self.artifact
            d.update({"kind": a.kind, "backend_version": a.backend_version, "compute_capabilities": list(a.compute_capabilities),
                      "stripped": a.stripped, "size": a.size, "sha256": a.sha256})
        if self.notes:
            d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class CacheMatch:
    artifact: Artifact
    ok: bool
    reason: str

    def to_dict(self) -> dict:
        return {"id": self.artifact.id, "kind": self.artifact.kind, "ok": self.ok, "reason": self.reason,
                "gpu_name": self.artifact.gpu_name, "sha256": self.artifact.sha256, "size": self.artifact.size}


@dataclass(frozen=True)
class Resolution:
    target: Target
    model: str
    candidates: tuple[Candidate, ...]          # accepted, best first
    rejected: tuple[Candidate, ...]
    caches: tuple[CacheMatch, ...] = ()        # for the best candidate: used (ok) and near misses
    notes: tuple[str, ...] = ()
    backend: str | None = None                 # the only backend asked for (None: any)
    models: tuple[str, ...] | None = None      # the repository's models (None: no repository)

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    @property
    def artifacts(self) -> list[Artifact]:
        """What to fetch for the best candidate: its engine plus matching caches."""
        best = self.best
        if best is None or best.artifact is None:
            return []
        return [best.artifact] + [c.artifact for c in self.caches if c.ok]

    def to_dict(self) -> dict:
        return {"model": self.model, "target": {"cc": self.target.cc_str, "os": self.target.os,
                                                "gpu_name": self.target.gpu_name,
                                                "driver": ".".join(map(str, self.target.driver)) or None,
                                                "backends": dict(self.target.backends)},
                "chosen": self.best.to_dict() if self.best else None,
                "candidates": [c.to_dict() for c in self.candidates],
                "rejected": [c.to_dict() for c in self.rejected],
                "caches": [c.to_dict() for c in self.caches], "notes": list(self.notes)}


# ---- the manifest index (built once per manifest, so a lookup touches only one model's entries) -----
def _index(manifest: Manifest) -> Mapping[str, tuple[tuple[Artifact, ...], tuple[Artifact, ...]]]:
    cached = manifest.__dict__.get("_resolve_index")
    if cached is not None:
        return cached
    engines: dict[str, list[Artifact]] = {}
    caches: dict[str, list[Artifact]] = {}
    for a in manifest.artifacts:
        (engines if a.kind == "engine" else caches if a.kind in ("runtime-cache", "timing-cache") else {}).setdefault(
            a.model, []).append(a)
    models = set(engines) | set(caches)
    index = {m: (tuple(engines.get(m, ())), tuple(caches.get(m, ()))) for m in models}
    object.__setattr__(manifest, "_resolve_index", index)  # a derived, immutable view of a frozen value
    return index


def backend_supports(backend: str, cc: tuple[int, int]) -> bool:
    return registry.get(backend).supports(cc)


def classify(a: Artifact, target: Target, *, weights_digest: str | None, backend: str | None) -> Candidate:
    """One engine against ``target``: accepted with its tier, or rejected with the reason."""
    def reject(reason: str) -> Candidate:
        return Candidate(tier=None, ok=False, reason=reason, artifact=a, backend=a.backend)

    if backend is not None and a.backend != backend:
        return reject(f"backend {a.backend}, {backend} was asked for")
    spec = registry.get(a.backend)
    cc = target.cc
    tier = spec.coverage(a.ccs, a.ptx, cc)
    if tier is None:
        why = f"built for CC {', '.join(a.compute_capabilities)}, this GPU is {target.cc_str}"
        if a.ptx:
            why += " (its PTX only runs on newer GPUs)"
        return reject(why)
    if not spec.supports(cc):
        return reject(f"{a.backend} does not support CC {target.cc_str}")
    if a.os and a.os != target.os:
        return reject(f"built for {a.os}, this machine runs {target.os}")
    if a.min_driver_version and target.driver and version_tuple(a.min_driver_version) > target.driver:
        return reject(f"needs CUDA driver {a.min_driver_version} or newer, this machine has "
                      f"{'.'.join(map(str, target.driver))} (update the NVIDIA driver)")
    why = spec.precision_problem(a.precision, cc)
    if why:
        return reject(why)
    notes: tuple[str, ...] = ()
    installed = target.backend_version(a.backend)
    if installed is None:
        notes = (f"{a.backend} is not installed here; it needs {a.backend} {a.backend_version}",)
    else:
        why = spec.version_compatible(a.backend_version, installed)
        if why:
            return reject(why)
    if a.stripped and weights_digest is None:
        return reject("weight-stripped engine and no local ONNX to refit it from (pass onnx=...)")
    if weights_digest is not None and a.weights_digest != weights_digest:
        return reject(f"built from other weights (weights digest {a.weights_digest[:12]}, the local ONNX has "
                      f"{weights_digest[:12]})")
    label = {"exact-cc": f"engine for exactly CC {target.cc_str}",
             "portable": f"portable engine for CC {', '.join(a.compute_capabilities)} covers {target.cc_str}",
             "ptx": f"PTX engine built for CC {', '.join(a.compute_capabilities)} runs forward on {target.cc_str}"}[tier]
    if a.stripped:
        label += "; weight-stripped, refit from the local ONNX (weights digest matches)"
    return Candidate(tier=tier, ok=True, reason=label, artifact=a, backend=a.backend, notes=notes)


def _sort_key(c: Candidate, target: Target) -> tuple:
    a = c.artifact
    assert a is not None
    return (TIERS.index(c.tier or "jit"), registry.rank(a.backend, target.cc),
            tuple(-x for x in version_tuple(a.backend_version)), 0 if a.stripped else 1, a.size, a.id)


def candidates(manifest: Manifest, target: Target, model: str, *, weights_digest: str | None = None,
               backend: str | None = None) -> Iterator[Candidate]:
    """Every engine of ``model``, classified; accepted ones best first, then the rejected ones."""
    engines, _ = _index(manifest).get(model, ((), ()))
    classified = [classify(a, target, weights_digest=weights_digest, backend=backend) for a in engines]
    yield from sorted((c for c in classified if c.ok), key=lambda c: _sort_key(c, target))
    yield from sorted((c for c in classified if not c.ok), key=lambda c: c.artifact.id if c.artifact else "")


def jit_backend(target: Target, backend: str | None = None) -> str | None:
    """The backend a JIT build on this machine would use, or None."""
    return registry.jit_backend(target.cc, dict(target.backends), backend)


def fallback_backend(cc: tuple[int, int]) -> str | None:
    """The first registered backend that supports ``cc`` (what to name when another one does not)."""
    return next((s.name for s in registry.specs() if s.supports(cc)), None)


def match_caches(manifest: Manifest, target: Target, engine: Artifact) -> tuple[CacheMatch, ...]:
    """Runtime/timing caches for ``engine``: the ones that fit this GPU (ok) and near misses."""
    _, caches = _index(manifest).get(engine.model, ((), ()))
    out = []
    for c in caches:
        if c.backend != engine.backend:
            continue
        if c.kind == "runtime-cache":
            if c.engine != engine.sha256:
                continue
            reasons = []
            if target.gpu_name and c.gpu_name != target.gpu_name:
                reasons.append(f"made on {c.gpu_name}, this GPU is {target.gpu_name}")
            if target.cc not in c.ccs:
                reasons.append(f"made for CC {', '.join(c.compute_capabilities)}")
            if c.os and c.os != target.os:
                reasons.append(f"made on {c.os}")
            if c.backend_version != engine.backend_version:
                reasons.append(f"backend version {c.backend_version} differs from the engine's")
            cache_drv = version_tuple(c.driver_version)
            if cache_drv and target.driver:
                if cache_drv[0] != target.driver[0]:
                    reasons.append(f"driver major {cache_drv[0]}, this machine has {target.driver[0]}")
                elif target.driver < cache_drv:
                    reasons.append(f"made with newer driver {c.driver_version}")
            out.append(CacheMatch(c, not reasons, "; ".join(reasons) or f"runtime cache for {c.gpu_name} matches"))
        else:  # timing cache: per CC and exact backend version
            ok = target.cc in c.ccs and c.backend_version == engine.backend_version
            out.append(CacheMatch(c, ok, "timing cache matches" if ok else "timing cache for another CC or version"))
    return tuple(sorted(out, key=lambda m: (not m.ok, m.artifact.id)))


def resolve(manifest: Manifest | None, target: Target, model: str, *, weights_digest: str | None = None,
            have_onnx: bool = False, backend: str | None = None) -> Resolution:
    """Rank every option for ``model`` on ``target``. Deterministic and free of I/O."""
    accepted: list[Candidate] = []
    rejected: list[Candidate] = []
    notes: list[str] = []
    if manifest is not None:
        for c in candidates(manifest, target, model, weights_digest=weights_digest, backend=backend):
            (accepted if c.ok else rejected).append(c)
        if not any(True for _ in _index(manifest).get(model, ((), ()))[0]):
            notes.append(f"the repository has no engine for model {model!r} (it has: {', '.join(manifest.models()) or 'nothing'})")
    jb = jit_backend(target, backend)
    if have_onnx and jb:
        accepted.append(Candidate(tier="jit", ok=True, backend=jb,
                                  reason=f"build on this machine from the local ONNX with {jb} (cached for the next start)"))
    elif have_onnx:
        hints = ", ".join(f"rtxpack[{s.extra}] for {s.name}" for s in registry.specs())
        rejected.append(Candidate(tier=None, ok=False, backend=backend,
                                  reason=f"no backend installed here can build for CC {target.cc_str} "
                                         f"(pip install {hints})"))
    fb = fallback_backend(target.cc)
    for spec in registry.specs():
        if not spec.supports(target.cc) and fb:
            notes.append(f"{spec.label} does not support CC {target.cc_str}; the {fb} backend is the fallback")
    caches: tuple[CacheMatch, ...] = ()
    if accepted and accepted[0].artifact is not None and manifest is not None:
        caches = match_caches(manifest, target, accepted[0].artifact)
    return Resolution(target=target, model=model, candidates=tuple(accepted), rejected=tuple(rejected),
                      caches=caches, notes=tuple(notes), backend=backend,
                      models=tuple(manifest.models()) if manifest is not None else None)


def no_match_error(res: Resolution, *, repo: str | None = None) -> ResolveError:
    """One error naming the GPU, what the repository offers, and what to do."""
    t = res.target
    where = f" {repo}" if repo else ""
    if res.models is not None and res.model not in res.models:
        return unknown_model_error(res.model, res.models, repo=repo)
    offered = sorted({f"{c.artifact.backend} CC {'/'.join(c.artifact.compute_capabilities)}"
                      for c in res.rejected if c.artifact is not None})
    offers = f"; the repository offers {', '.join(offered)}" if offered else ""
    backends = {c.artifact.backend for c in res.rejected if c.artifact is not None}
    if res.backend is not None:
        label = registry.get(res.backend).label
        if res.backend not in backends:
            head = f"the repository{where} has no {label} artifact of model {res.model!r}"
        else:
            head = f"no {label} artifact of model {res.model!r} fits this GPU {t.describe()}"
    elif len(backends) == 1:
        head = f"no {registry.get(backends.pop()).label} artifact for this GPU {t.describe()}"
    else:
        head = f"no artifact of model {res.model!r} fits this GPU {t.describe()}"
    nb = jit_backend(t, res.backend) or res.backend or fallback_backend(t.cc) or "nvrtc"
    fix = (f"next fallback: a JIT build with the {nb} backend from the app's ONNX "
           f"(rtxpack.load(..., onnx='model.onnx') or `rtxpack install --onnx model.onnx`), "
           + ("or drop --backend / backend= to use what the repository has" if res.backend is not None
              else f"or ask the publisher to add CC {t.cc_str} to the repository"))
    return ResolveError(head + offers, fix=fix, model=res.model, gpu=t.describe(), repo=repo,
                        rejected=[c.to_dict() for c in res.rejected])


def unknown_model_error(model: str, models: tuple[str, ...] | list[str], *, repo: str | None = None) -> ResolveError:
    """The repository has no model of that name: say so, and list the ones it has."""
    where = f" {repo}" if repo else ""
    have = ", ".join(models) if models else "no models at all"
    return ResolveError(f"the repository{where} has no model {model!r} (it has: {have})",
                        fix=(f"pass one of its models (--model / load(model)): {', '.join(models)}" if models
                             else "publish artifacts into the repository first (`rtxpack build`)"),
                        model=model, repo=repo, available=list(models))


def explain(res: Resolution) -> str:
    """A human table: chosen first, then the other candidates, rejected ones with their reasons."""
    rows = [("", "id", "tier", "backend", "reason")]
    for i, c in enumerate(res.candidates):
        rows.append(("*" if i == 0 else " ", c.id, c.tier or "", f"{c.backend or ''} {c.artifact.backend_version if c.artifact else ''}".strip(), c.reason))
    for c in res.rejected:
        rows.append(("x", c.id, "-", f"{c.backend or ''} {c.artifact.backend_version if c.artifact else ''}".strip(), c.reason))
    for m in res.caches:
        rows.append(("+" if m.ok else "~", m.artifact.id, m.artifact.kind, m.artifact.backend, m.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"model {res.model!r} on {res.target.describe()}"]
    lines += ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    lines += [f"note: {n}" for n in res.notes]
    lines.append("(* chosen, x rejected, + cache used, ~ cache near miss)")
    return "\n".join(lines)
