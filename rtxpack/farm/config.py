"""``rtxpack.toml``: what the farm builds (models x targets x toolchains) and the GPUs it warms for.

Parsing is strict: an unknown key or a wrong type is a :class:`ConfigError` naming the file,
the key and the fix, because a typo in a release matrix should fail before a build, not after.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core import registry
from ..core.errors import ConfigError
from ..core.manifest import OS_FAMILIES, PRECISIONS
from ..core.versions import format_cc, parse_cc

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CUDA_MAJORS = ("12", "13")
#: ``[project]`` keys (strings, copied into the manifest): what it is and which release
PROJECT_KEYS = {"name": "the product or model set", "version": "its release, e.g. \"1.4.0\"",
                "description": "one line", "url": "where people learn more"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    onnx: Path                                      # absolute (resolved against the config file)
    precision: str = "fp32"
    inputs: Mapping[str, Mapping[str, tuple[int, ...]]] = field(default_factory=dict)  # profiles
    warmup: tuple[Mapping[str, tuple[int, ...]], ...] = ()

    def profiles_json(self) -> dict[str, dict[str, list[int]]]:
        return {k: {m: list(v[m]) for m in ("min", "opt", "max")} for k, v in sorted(self.inputs.items())}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    backend: str
    compute_capabilities: tuple[str, ...]
    strip_weights: bool = False
    os: str | None = None
    ptx: bool = False                               # nvrtc: also embed PTX for newer GPUs


@dataclass(frozen=True)
class ToolchainSpec:
    backend: str
    version: str | None = None                      # None = what this interpreter has
    cuda: str | None = None

    @property
    def name(self) -> str:
        v = self.version or "local"
        return f"{self.backend}-{v}" + (f"-cu{self.cuda}" if self.cuda else "")


@dataclass(frozen=True)
class GpuSpec:
    """A GPU SKU the app supports: ``rtxpack warm --cluster`` makes runtime caches on a worker that has one.

    A farm GPU worker declares it as the Dask resource :attr:`resource` (``gpu-<sku>``), next to
    its compute capability's ``gpu-sm<XY>`` (what weight-stripped builds need)."""

    sku: str                                        # short id: "rtx4090"
    compute_capability: str                         # "8.9"
    name: str | None = None                         # the name the driver reports, checked on the worker

    @property
    def resource(self) -> str:
        return f"gpu-{self.sku}"


#: a SKU id is one Dask resource name: no spaces, commas or '=' (``dask worker --resources``), and not
#: ``sm<digits>``, which names a compute capability's resource
SKU_PATTERN = re.compile(r"^(?!sm\d+$)[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class FarmConfig:
    path: Path
    project: Mapping[str, Any]
    models: tuple[ModelSpec, ...]
    targets: tuple[TargetSpec, ...]
    toolchains: tuple[ToolchainSpec, ...]           # explicit ones; empty = defaults per backend
    gpus: tuple[GpuSpec, ...] = ()                  # SKUs to warm runtime caches for ([[gpus]])

    @property
    def root(self) -> Path:
        return self.path.parent

    def toolchains_for(self, backend: str) -> tuple[ToolchainSpec, ...]:
        mine = tuple(t for t in self.toolchains if t.backend == backend)
        return mine or (ToolchainSpec(backend=backend),)


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {problem}", fix=fix, path=str(self.path), key=key)

    def table(self, d: Any, key: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.err(key, f"expected a table, got {type(d).__name__}", f"write [{key}] as a TOML table")
        return d

    def known(self, d: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            raise self.err(f"{key}.{extra[0]}", "unknown key", f"remove it or use one of: {', '.join(sorted(allowed))}")

    def string(self, d: Mapping[str, Any], key: str, name: str, *, required: bool = True,
               choices: tuple[str, ...] | None = None) -> str | None:
        if name not in d:
            if required:
                raise self.err(f"{key}.{name}", "is missing", f"add {name} = \"...\" to {key}")
            return None
        v = d[name]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            raise self.err(f"{key}.{name}", f"expected a string, got the number {v!r}", f"quote it: {name} = \"{v}\"")
        if not isinstance(v, str) or not v.strip():
            raise self.err(f"{key}.{name}", f"expected a non-empty string, got {v!r}", f"write {name} = \"...\"")
        if choices and v not in choices:
            raise self.err(f"{key}.{name}", f"{v!r} is not one of {', '.join(choices)}", f"use one of: {', '.join(choices)}")
        return v

    def boolean(self, d: Mapping[str, Any], key: str, name: str) -> bool:
        v = d.get(name, False)
        if not isinstance(v, bool):
            raise self.err(f"{key}.{name}", f"expected true or false, got {v!r}", f"write {name} = true or false")
        return v

    def shape(self, v: Any, key: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
            raise self.err(key, f"expected a list of positive integers, got {v!r}", "write a shape such as [1, 3, 224, 224]")
        return tuple(v)


def _model(r: _Reader, i: int, d: Any, seen: set[str]) -> ModelSpec:
    key = f"models[{i}]"
    d = r.table(d, key)
    r.known(d, key, {"name", "onnx", "precision", "inputs", "warmup"})
    name = r.string(d, key, "name")
    assert name is not None
    if name in seen:
        raise r.err(f"{key}.name", f"model {name!r} is defined twice", "give every [[models]] a unique name")
    if "/" in name or "\\" in name or name.startswith("."):
        raise r.err(f"{key}.name", f"{name!r} contains a path separator or starts with '.'", "use a plain name such as resnet50")
    seen.add(name)
    onnx = r.string(d, key, "onnx")
    path = (r.path.parent / str(onnx)).resolve()
    if path.is_dir():
        raise r.err(f"{key}.onnx", f"{path} is a directory, not an ONNX file", "name the .onnx file itself")
    if not path.is_file():
        raise r.err(f"{key}.onnx", f"{path} does not exist (paths are relative to {r.path.name}'s folder)",
                    "fix the path, or generate the model before planning")
    precision = r.string(d, key, "precision", required=False, choices=PRECISIONS) or "fp32"
    inputs: dict[str, dict[str, tuple[int, ...]]] = {}
    for iname, prof in r.table(d.get("inputs", {}), f"{key}.inputs").items():
        pkey = f"{key}.inputs.{iname}"
        prof = r.table(prof, pkey)
        r.known(prof, pkey, {"min", "opt", "max"})
        shapes = {}
        for m in ("min", "opt", "max"):
            if m not in prof:
                raise r.err(f"{pkey}.{m}", "is missing", "give min, opt and max shapes for every dynamic input")
            shapes[m] = r.shape(prof[m], f"{pkey}.{m}")
        if not (len(shapes["min"]) == len(shapes["opt"]) == len(shapes["max"])):
            raise r.err(pkey, "min, opt and max have different ranks", "give shapes of the same length")
        if not all(a <= b <= c for a, b, c in zip(shapes["min"], shapes["opt"], shapes["max"])):
            raise r.err(pkey, f"needs min <= opt <= max in every dimension (got {shapes})", "fix the shapes")
        inputs[iname] = shapes
    warmup = d.get("warmup", [])
    if not isinstance(warmup, list):
        raise r.err(f"{key}.warmup", "expected a list of tables", "write warmup = [{x = [1, 3, 224, 224]}]")
    wl = []
    for j, w in enumerate(warmup):
        wkey = f"{key}.warmup[{j}]"
        w = r.table(w, wkey)
        wl.append({n: r.shape(s, f"{wkey}.{n}") for n, s in w.items()})
    return ModelSpec(name=name, onnx=path, precision=precision, inputs=inputs, warmup=tuple(wl))


def _ccs(r: _Reader, key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise r.err(key, f"expected a non-empty list such as [\"8.6\", \"8.9\"], got {v!r}",
                    "list the GPU compute capabilities to build for")
    out = []
    for cc in v:
        if isinstance(cc, (int, float)) and not isinstance(cc, bool):
            raise r.err(key, f"{cc!r} is a number; compute capabilities are strings (a TOML number cannot tell "
                        "8.9 from 8.90)", f"write it as \"{cc}\"")
        try:
            norm = format_cc(parse_cc(cc))
        except ValueError:
            raise r.err(key, f"{cc!r} is not a compute capability", "write them as strings such as \"8.9\"") from None
        if parse_cc(norm) not in registry.KNOWN_CCS:
            raise r.err(key, f"{norm} is not the compute capability of any NVIDIA GPU rtxpack knows",
                        f"use one of: {', '.join(format_cc(c) for c in sorted(registry.KNOWN_CCS))}")
        if norm not in out:
            out.append(norm)
    return tuple(sorted(out, key=parse_cc))


def _check_target_ccs(r: _Reader, key: str, backend: str, ccs: tuple[str, ...]) -> None:
    """A target its backend can never build is a mistake in the config, not a skip."""
    spec = registry.get(backend)
    bad = [c for c in ccs if not spec.supports(parse_cc(c))]
    if bad:
        others = [s.name for s in registry.specs() if s.name != backend and all(s.supports(parse_cc(c)) for c in bad)]
        alt = f", or a target with backend = \"{others[0]}\" for {', '.join(bad)}" if others else ""
        raise r.err(key, f"{spec.label} cannot target compute capability {', '.join(bad)} (it supports "
                    f"{spec.supported_text()})", f"remove {', '.join(bad)}{alt}")
    alone = [c for c in ccs if parse_cc(c) in spec.must_build_alone]
    if alone and len(ccs) > 1:
        raise r.err(key, f"{alone[0]} must be its own engine: {spec.label} does not support mixing it with other "
                    "compute capabilities", f"move {alone[0]} into a target of its own")


def _target(r: _Reader, i: int, d: Any, seen: set[str]) -> TargetSpec:
    key = f"targets[{i}]"
    d = r.table(d, key)
    r.known(d, key, {"name", "backend", "compute_capabilities", "strip_weights", "os", "ptx"})
    name = r.string(d, key, "name")
    assert name is not None
    if name in seen:
        raise r.err(f"{key}.name", f"target {name!r} is defined twice", "give every [[targets]] a unique name")
    seen.add(name)
    backend = r.string(d, key, "backend", required=False, choices=registry.names()) or "tensorrt-rtx"
    if "compute_capabilities" not in d:
        raise r.err(f"{key}.compute_capabilities", "is missing", "add compute_capabilities = [\"8.6\", \"8.9\", \"12.0\"]")
    ccs = _ccs(r, f"{key}.compute_capabilities", d["compute_capabilities"])
    _check_target_ccs(r, f"{key}.compute_capabilities", backend, ccs)
    os_ = r.string(d, key, "os", required=False, choices=OS_FAMILIES)
    return TargetSpec(name=name, backend=backend, compute_capabilities=ccs,
                      strip_weights=r.boolean(d, key, "strip_weights"), os=os_, ptx=r.boolean(d, key, "ptx"))


def _toolchain(r: _Reader, i: int, d: Any) -> ToolchainSpec:
    key = f"toolchains[{i}]"
    d = r.table(d, key)
    r.known(d, key, {"backend", "version", "cuda"})
    backend = r.string(d, key, "backend", required=False, choices=registry.names()) or "tensorrt-rtx"
    version = r.string(d, key, "version", required=False)
    if version is not None and not all(p.isdigit() for p in version.split(".")):
        raise r.err(f"{key}.version", f"{version!r} is not an exact version", "write an exact version such as \"1.7.1.116\"")
    cuda = d.get("cuda")
    if cuda is not None:
        if isinstance(cuda, bool) or not isinstance(cuda, (str, int)):
            raise r.err(f"{key}.cuda", f"expected a CUDA major such as \"13\", got {cuda!r}",
                        f"use one of: {', '.join(CUDA_MAJORS)}")
        cuda = str(cuda)
        if cuda not in CUDA_MAJORS:
            raise r.err(f"{key}.cuda", f"{cuda!r} is not a CUDA major rtxpack knows", f"use one of: {', '.join(CUDA_MAJORS)}")
    if backend == "tensorrt-rtx" and version is not None and cuda is None:
        cuda = "13"
    return ToolchainSpec(backend=backend, version=version, cuda=cuda)


def _gpu(r: _Reader, i: int, d: Any, seen: set[str]) -> GpuSpec:
    key = f"gpus[{i}]"
    d = r.table(d, key)
    r.known(d, key, {"sku", "compute_capability", "name"})
    sku = r.string(d, key, "sku")
    assert sku is not None
    if not SKU_PATTERN.match(sku):
        raise r.err(f"{key}.sku", f"{sku!r} cannot be a Dask resource name",
                    "use lower-case letters, digits, '.', '_' or '-' (e.g. \"rtx4090\"), not sm<digits>")
    if sku in seen:
        raise r.err(f"{key}.sku", f"GPU {sku!r} is listed twice", "give every [[gpus]] a unique sku")
    seen.add(sku)
    if "compute_capability" not in d:
        raise r.err(f"{key}.compute_capability", "is missing", "add compute_capability = \"8.9\" (the SKU's)")
    (cc,) = _ccs(r, f"{key}.compute_capability", [d["compute_capability"]])
    return GpuSpec(sku=sku, compute_capability=cc, name=r.string(d, key, "name", required=False))


def load_config(path: str | Path) -> FarmConfig:
    """Parse and check ``rtxpack.toml``; ConfigError names the file, key and fix."""
    p = Path(path).resolve()
    r = _Reader(p)
    if p.is_dir():
        inside = p / "rtxpack.toml"
        raise ConfigError(f"{p}: is a directory, the config file is expected",
                          fix=f"pass {inside}" if inside.is_file() else "pass the path of your rtxpack.toml",
                          path=str(p))
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such config file", fix="pass the path of your rtxpack.toml", path=str(p)) from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a text file ({e.reason})", fix="pass your rtxpack.toml", path=str(p)) from e
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})", fix="check the path and its permissions",
                          path=str(p)) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})", fix="fix the syntax at the line shown", path=str(p)) from e
    r.known(data, "(top level)", {"project", "models", "targets", "toolchains", "gpus"})
    project = r.table(data.get("project", {}), "project")
    r.known(project, "project", set(PROJECT_KEYS))
    for name in project:
        r.string(project, "project", name)
    for name in ("models", "targets"):
        if not isinstance(data.get(name), list) or not data[name]:
            raise r.err(name, "is missing or empty", f"add at least one [[{name}]] table")
    seen_m: set[str] = set()
    seen_t: set[str] = set()
    models = tuple(_model(r, i, d, seen_m) for i, d in enumerate(data["models"]))
    targets = tuple(_target(r, i, d, seen_t) for i, d in enumerate(data["targets"]))
    tcs = data.get("toolchains", [])
    if not isinstance(tcs, list):
        raise r.err("toolchains", "expected an array of tables", "write [[toolchains]] tables")
    toolchains = tuple(_toolchain(r, i, d) for i, d in enumerate(tcs))
    if len(set(toolchains)) != len(toolchains):
        raise r.err("toolchains", "the same toolchain is listed twice", "remove the duplicate [[toolchains]]")
    gpus = data.get("gpus", [])
    if not isinstance(gpus, list):
        raise r.err("gpus", "expected an array of tables", "write [[gpus]] tables")
    seen_g: set[str] = set()
    return FarmConfig(path=p, project=dict(project), models=models, targets=targets, toolchains=toolchains,
                      gpus=tuple(_gpu(r, i, d, seen_g) for i, d in enumerate(gpus)))
