"""The backend registry: the one place that knows which backends exist and their rules.

Each backend is one :class:`BackendSpec`: its name, how to recognise its plans (magic), which GPUs
it supports and how a plan's compute capabilities cover a GPU, which installed versions can load
a plan, how it builds on the device (JIT rule), its precision floors, how to probe the installed
version cheaply, how the farm runs its builder, and the pip extra to name in errors. Manifest
validation, the resolver, the farm (config, plan, build, toolchains), device detection, the CLI's
choices, ``inspect``, ``selftest`` and ``load()``'s fallbacks all read it.

Implementations live in ``rtxpack/backends/<name>/`` and are imported lazily by ``factory``
(a ``"module:attribute"`` string, or a callable), so importing rtxpack never needs CUDA or
TensorRT-RTX. Adding a backend = its package + one ``BackendSpec`` in :data:`BUILTIN` (tests
register their reference backend with :func:`register`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import BackendNotInstalled, ConfigError
from .versions import format_cc, parse_cc, version_tuple

CC = tuple[int, int]
#: tiers of how a plan covers a GPU, best first (the resolver ranks by them)
TIERS = ("exact-cc", "portable", "ptx", "jit")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    #: implementation: "package.module:Class" (imported on first use) or a zero-argument callable
    factory: str | Callable[[], Any]
    #: leading bytes of this backend's plan files (``rtxpack inspect`` sniffs with them)
    magic: bytes
    #: installed version, cheaply (package metadata, no import of a large library); None = not installed
    probe: Callable[[], str | None]
    #: pip extra that installs it (``pip install rtxpack[extra]``)
    extra: str
    #: compute capabilities it runs on; None = every NVIDIA GPU
    supported_ccs: frozenset[CC] | None = None
    #: lowest compute capability per precision, and precisions a CC cannot run
    precision_floors: Mapping[str, CC] = field(default_factory=dict)
    precision_excluded: Mapping[str, frozenset[CC]] = field(default_factory=dict)
    #: precisions its builder produces
    precisions: tuple[str, ...] = ("fp32",)
    #: a plan's version must equal the installed one exactly (True), or share its major and not be newer
    exact_version: bool = True
    #: the targets a JIT build on the device asks for: "current" (the GPU the process runs on) or "exact"
    jit_target: str = "exact"
    #: a JIT build needs explicit optimization profiles for dynamic inputs
    jit_needs_profiles: bool = False
    #: CCs a farm target may not mix with others (each must be its own engine)
    must_build_alone: frozenset[CC] = frozenset()
    #: weight-stripped builds need a GPU of the target CC on the build node
    strip_needs_gpu: bool = False
    #: farm builder: argv of a ``--serve`` worker for an interpreter (see farm/build.py)
    worker_argv: Callable[[str], list[str]] | None = None
    #: the worker needs rtxpack on its PYTHONPATH (False: a self-contained script in a bare venv)
    worker_needs_rtxpack: bool = True
    #: pip package of a pinned toolchain for a CUDA major ({cuda} is substituted); None: local only
    toolchain_package: str | None = None
    #: the module a toolchain venv must import (its ``__version__`` is checked after installing)
    toolchain_module: str | None = None
    #: default compute capabilities of a build that names none
    default_ccs: tuple[str, ...] = ()
    #: short words for messages ("TensorRT-RTX")
    display: str = ""

    # ---- compatibility rules (pure) ------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.display or self.name

    def supports(self, cc: CC) -> bool:
        return self.supported_ccs is None or cc in self.supported_ccs

    def supported_text(self) -> str:
        if self.supported_ccs is None:
            return "any NVIDIA GPU"
        return ", ".join(format_cc(c) for c in sorted(self.supported_ccs))

    def coverage(self, plan_ccs: Sequence[CC], ptx: bool, cc: CC) -> str | None:
        """How a plan built for ``plan_ccs`` covers a GPU of ``cc``: a tier name, or None."""
        if cc in plan_ccs:
            return "exact-cc" if len(plan_ccs) == 1 else "portable"
        if ptx and any(c < cc for c in plan_ccs):
            return "ptx"
        return None

    def version_compatible(self, built: str, installed: str) -> str | None:
        """None when a plan made by ``built`` loads in ``installed``, else why not."""
        b, i = version_tuple(built), version_tuple(installed)
        if self.exact_version:
            if b != i:
                return (f"built with {self.name} {built}, this machine has {installed} "
                        "(engines load only in the exact version)")
            return None
        if b[:1] != i[:1] or b > i:
            return f"plan format {built} is not readable by {self.name} backend {installed}"
        return None

    def precision_problem(self, precision: str, cc: CC) -> str | None:
        floor = self.precision_floors.get(precision)
        if floor and cc < floor:
            return f"{precision} needs CC {format_cc(floor)} or newer"
        if cc in self.precision_excluded.get(precision, frozenset()):
            return f"{precision} is not supported on CC {format_cc(cc)}"
        return None

    def jit_ccs(self, cc: CC) -> list[str]:
        """What a JIT build on the device asks the builder for."""
        return ["current"] if self.jit_target == "current" else [format_cc(cc)]

    def plan_problem(self, ccs: Sequence[str], precision: str, strip_weights: bool, gpu_ccs: Sequence[str],
                     target: str) -> str | None:
        """Why a farm cell (``ccs`` of target ``target``) cannot be built on this node (None: it can)."""
        parsed = [parse_cc(c) for c in ccs]
        floor = self.precision_floors.get(precision)
        low = [c for c, p in zip(ccs, parsed) if floor and p < floor]
        if floor and low:
            return (f"{precision} needs compute capability {format_cc(floor)} or newer; target '{target}' includes "
                    f"{', '.join(low)}: drop them or use another precision")
        bad = [c for c, p in zip(ccs, parsed) if not self.supports(p)]
        if bad:
            return (f"{self.label} cannot target compute capability {', '.join(bad)} (supported: "
                    f"{self.supported_text()})")
        alone = [c for c, p in zip(ccs, parsed) if p in self.must_build_alone]
        if alone and len(ccs) > 1:
            return (f"{alone[0]} must be its own engine: {self.label} does not support mixing it with other "
                    f"compute capabilities; split target '{target}' into a {alone[0]}-only target")
        excluded = [c for c, p in zip(ccs, parsed) if p in self.precision_excluded.get(precision, frozenset())]
        if excluded:
            return f"{precision} is not supported on compute capability {', '.join(excluded)}"
        if strip_weights and self.strip_needs_gpu:
            if len(ccs) != 1:
                return (f"weight-stripped {self.label} engines are built for one compute capability on a GPU of it; "
                        f"target '{target}' lists {len(ccs)}")
            if ccs[0] not in gpu_ccs:
                have = ", ".join(gpu_ccs) or "no GPU"
                return (f"weight stripping (STRIP_PLAN) needs a GPU of compute capability {ccs[0]} on the build node "
                        f"(this node: {have}); run this cell on such a node (--cell) or set strip_weights = false")
        return None

    # ---- the implementation ---------------------------------------------------------------------
    def create(self) -> Any:
        """A backend object (``rtxpack.backends.base.Backend``), importing the implementation now."""
        if callable(self.factory):
            return self.factory()
        module, _, attr = self.factory.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise BackendNotInstalled(f"the {self.name} backend cannot be imported ({e})",
                                      fix=f"pip install 'rtxpack[{self.extra}]'", value=self.name) from e
        return cls()


# ---- built-in backends -------------------------------------------------------------------------
_TRT_DISTS = ("tensorrt_rtx", "tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt_rtx_cu13", "tensorrt_rtx_cu12")
#: compute capabilities of NVIDIA GPUs (Maxwell to Blackwell): a value outside this set is a typo
KNOWN_CCS: frozenset[CC] = frozenset({(5, 0), (5, 2), (5, 3), (6, 0), (6, 1), (6, 2), (7, 0), (7, 2), (7, 5), (8, 0),
                                      (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 1), (10, 3), (11, 0), (12, 0),
                                      (12, 1)})
#: TensorRT-RTX's plan header bit -> compute capability (FACTS.md); also its supported CCs
TRT_RTX_CC_BITS: tuple[tuple[int, str], ...] = ((0, "7.5"), (1, "8.0"), (2, "8.6"), (3, "8.9"), (4, "12.0"), (5, "12.1"))
#: lowest compute capability per precision on any NVIDIA GPU (the hardware: FP8 from Ada, FP4 from
#: Blackwell, BF16 from Ampere)
HARDWARE_PRECISION_FLOORS: Mapping[str, CC] = {"fp8": (8, 9), "fp4": (12, 0), "bf16": (8, 0)}
#: our nvrtc plan format version (what an installed nvrtc backend reads and writes). Same major =
#: readable when not newer: 1.1.0 (typed int64/int32/bool tensors, the exported-model operators) reads
#: 1.0.0 plans; a 1.0.0 runtime refuses 1.1.0 plans, so the resolver passes them over instead of failing.
#: 1.2.0: fp16 plans (tensor-core kernels, fp16 weight copies) and per-layer kernel candidates for the tuner.
NVRTC_FORMAT = "1.2.0"


def tensorrt_rtx_installed() -> tuple[str | None, str | None]:
    """(exact version, CUDA major) of the tensorrt-rtx installed here, from package metadata
    (no import of the 238 MB library)."""
    from importlib import metadata

    version = cuda = None
    for dist in _TRT_DISTS:
        try:
            found = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        version = version or found
        if "cu13" in dist:
            cuda = "13"
        elif "cu12" in dist:
            cuda = "12"
    return version, cuda


def _nvrtc_probe() -> str | None:
    """Our plan-format version when cuda-python (driver API + NVRTC bindings) is importable."""
    try:
        import cuda.bindings  # noqa: F401
    except Exception:  # noqa: BLE001 - missing or broken: not installed
        return None
    return NVRTC_FORMAT


def _trt_worker(python: str) -> list[str]:
    script = Path(__file__).resolve().parent.parent / "backends" / "tensorrt_rtx" / "build_worker.py"
    return [python, "-I", str(script), "--serve"]


BUILTIN: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="tensorrt-rtx", display="TensorRT-RTX", factory="rtxpack.backends.tensorrt_rtx:TensorRTRTXBackend",
        magic=b"vtrt", probe=lambda: tensorrt_rtx_installed()[0], extra="rtx",
        supported_ccs=frozenset(parse_cc(cc) for _, cc in TRT_RTX_CC_BITS),
        precision_floors=HARDWARE_PRECISION_FLOORS,
        precision_excluded={p: frozenset({(7, 5)}) for p in ("bf16", "int8", "int4")},
        precisions=("fp32", "fp16", "bf16", "fp8", "int8", "fp4", "int4"),
        exact_version=True, jit_target="current", jit_needs_profiles=True,
        must_build_alone=frozenset({(7, 5)}), strip_needs_gpu=True,
        worker_argv=_trt_worker, worker_needs_rtxpack=False, toolchain_package="tensorrt-rtx-cu{cuda}",
        toolchain_module="tensorrt_rtx",
        default_ccs=("8.0", "8.6", "8.9", "12.0", "12.1")),
    BackendSpec(
        name="nvrtc", display="nvrtc", factory="rtxpack.backends.nvrtc:NvrtcBackend", magic=b"RTXPNVRT",
        probe=_nvrtc_probe, extra="gpu", supported_ccs=None, precisions=("fp32", "fp16"),
        precision_floors={**HARDWARE_PRECISION_FLOORS, "fp16": (7, 5)},   # fp16 = tensor cores (Turing+)
        exact_version=False, jit_target="exact",
        worker_argv=lambda python: [python, "-m", "rtxpack.farm.worker", "--serve"],
        default_ccs=("7.5", "8.6", "8.9", "9.0", "12.0")),
)

_registry: dict[str, BackendSpec] = {s.name: s for s in BUILTIN}


def register(spec: BackendSpec, *, replace: bool = False) -> BackendSpec:
    """Add a backend (tests register their reference backend here). Order = resolver preference."""
    if spec.name in _registry and not replace:
        raise ConfigError(f"a backend named {spec.name!r} is already registered", fix="pick another name",
                          value=spec.name)
    _registry[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    if name in {s.name for s in BUILTIN}:
        raise ConfigError(f"{name!r} is a built-in backend", fix="register another name instead", value=name)
    _registry.pop(name, None)


def specs() -> Iterator[BackendSpec]:
    """Every registered backend, in preference order (the resolver's tie-break)."""
    return iter(list(_registry.values()))


def names() -> tuple[str, ...]:
    return tuple(_registry)


def get(name: str) -> BackendSpec:
    spec = _registry.get(name)
    if spec is None:
        raise ConfigError(f"unknown backend {name!r}", fix=f"use one of: {', '.join(_registry)}", value=name,
                          option="backend")
    return spec


def known(name: str) -> bool:
    return name in _registry


def create(name: str) -> Any:
    """The implementation object of backend ``name`` (imported now)."""
    return get(name).create()


def sniff(data: bytes) -> BackendSpec | None:
    """The backend whose plans start like ``data``, or None."""
    head = bytes(data[:16])
    for spec in _registry.values():
        if spec.magic and head.startswith(spec.magic):
            return spec
    return None


def installed() -> tuple[tuple[str, str | None], ...]:
    """(name, installed version or None) for every registered backend, sorted by name."""
    out = {}
    for spec in _registry.values():
        try:
            out[spec.name] = spec.probe()
        except Exception:  # noqa: BLE001 - a broken probe means "not installed"
            out[spec.name] = None
    return tuple(sorted(out.items()))


def rank(name: str, cc: CC) -> int:
    """Preference of backend ``name`` on a GPU of ``cc``: backends that support it first, then order."""
    order = [s.name for s in _registry.values() if s.supports(cc)] + list(_registry)
    return order.index(name) if name in order else len(order)


def jit_backend(cc: CC, installed_versions: Mapping[str, str | None], wanted: str | None = None) -> str | None:
    """The backend a JIT build on a GPU of ``cc`` would use (installed and supporting it), or None."""
    for spec in ([get(wanted)] if wanted else list(_registry.values())):
        if installed_versions.get(spec.name) and spec.supports(cc):
            return spec.name
    return None

