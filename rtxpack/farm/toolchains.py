"""Toolchains: one virtual environment per (backend, exact version, CUDA major), created and reused.

The default toolchain is this interpreter with the backend it already has. For a backend whose
registry spec names a ``toolchain_package`` (TensorRT-RTX), any other ``[[toolchains]]`` entry
gets ``<toolchains_dir>/<backend>-<version>-cu<cuda>/``, a venv holding nothing but that package
(e.g. ``tensorrt-rtx-cu<cuda>==<version>``); its build worker (``backends/tensorrt_rtx/build_worker.py``)
needs nothing else. Backends without one (nvrtc) build with what this interpreter has. A venv counts as installed only
once ``rtxpack-toolchain.json`` is written (after a verified import), so a half-made venv is
rebuilt, and a file lock keeps two builds on one node from installing it twice.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import filelock

from ..core import config as env_config
from ..core import registry
from ..core.errors import BuildError
from ..core.fsutil import atomic_write
from .config import ToolchainSpec

MARKER = "rtxpack-toolchain.json"
INDEX_TTL_S = 3600.0
_index_memo: dict[str, tuple[list[str] | None, str | None]] = {}


@dataclass(frozen=True)
class Toolchain:
    """A resolved toolchain: exact version, its interpreter (None until installed) or why it is unusable."""

    backend: str
    version: str | None
    cuda: str | None
    python: str | None
    local: bool                         # this interpreter
    problem: str | None = None          # set: every cell on it is skipped with this reason

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.version or 'missing'}" + (f"-cu{self.cuda}" if self.cuda else "")

    @property
    def package(self) -> str:
        pattern = registry.get(self.backend).toolchain_package or self.backend
        return pattern.format(cuda=self.cuda)

    def venv_dir(self) -> Path:
        return env_config.toolchains_dir() / self.name

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "backend": self.backend, "version": self.version, "cuda": self.cuda,
                "local": self.local, "installed": self.python is not None, "problem": self.problem}


def _venv_python(d: Path) -> Path:
    return d / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _local(backend: str) -> tuple[str | None, str | None, str | None]:
    """(version, CUDA major, why not) of ``backend`` as this interpreter has it."""
    try:
        info = registry.create(backend).info()
    except Exception as e:  # noqa: BLE001 - the backend's package may not be importable here
        return None, None, f"{type(e).__name__}: {e}"
    return info.version, (info.details or {}).get("cuda"), None


def available_versions(package: str) -> tuple[list[str] | None, str | None]:
    """Versions of ``package`` on the configured index (``pip index versions``), cached for an hour."""
    if package in _index_memo:
        return _index_memo[package]
    cache = env_config.toolchains_dir() / "index-cache.json"
    try:
        data = json.loads(cache.read_text())
        hit = data.get(package)
        if hit and time.time() - hit["at"] < INDEX_TTL_S:
            _index_memo[package] = (hit["versions"], None)
            return _index_memo[package]
    except (OSError, ValueError, KeyError, TypeError):
        data = {}
    if env_config.offline():
        return None, "RTXPACK_OFFLINE=1, so the package index cannot be asked"
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package, "--disable-pip-version-check"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"pip index versions {package} failed: {e}"
    versions = None
    for line in out.stdout.splitlines():
        if line.strip().startswith("Available versions:"):
            versions = [v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()]
    if versions is None:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        result: tuple[list[str] | None, str | None] = (None, f"{package} is not on the package index ({tail})")
        _index_memo[package] = result
        return result
    _index_memo[package] = (versions, None)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        data[package] = {"at": time.time(), "versions": versions}
        atomic_write(cache, json.dumps(data).encode())
    except OSError:
        pass
    return versions, None


def resolve(spec: ToolchainSpec, *, check_index: bool = True) -> Toolchain:
    """What ``spec`` means on this node, without installing anything (plan time)."""
    bspec = registry.get(spec.backend)
    local_version, local_cuda, why = _local(spec.backend)
    if bspec.toolchain_package is None:     # builds with what this interpreter has
        if local_version is None:
            return Toolchain(spec.backend, None, spec.cuda, None, True,
                             problem=f"the {spec.backend} backend is not usable here ({why or 'not installed'}); "
                                     f"pip install rtxpack[{bspec.extra}]")
        if spec.version and spec.version != local_version:
            return Toolchain(spec.backend, spec.version, spec.cuda, None, False,
                             problem=f"{spec.backend} toolchains use what is installed here ({local_version}), not "
                                     f"{spec.version}; pin it with pip or drop version")
        return Toolchain(spec.backend, local_version, spec.cuda, sys.executable, True)
    if spec.version is None or (spec.version == local_version and (spec.cuda or local_cuda) == local_cuda):
        if local_version is None:
            return Toolchain(spec.backend, None, spec.cuda, None, True,
                             problem=f"{spec.backend} is not installed in this Python; pip install rtxpack[{bspec.extra}] "
                                     "or list an exact version under [[toolchains]]")
        return Toolchain(spec.backend, local_version, local_cuda, sys.executable, True)
    tc = Toolchain(spec.backend, spec.version, spec.cuda or "13", None, False)
    d = tc.venv_dir()
    if (d / MARKER).is_file() and _venv_python(d).exists():
        return Toolchain(tc.backend, tc.version, tc.cuda, str(_venv_python(d)), False)
    if env_config.offline():
        return Toolchain(tc.backend, tc.version, tc.cuda, None, False,
                         problem=f"toolchain {tc.name} is not installed and RTXPACK_OFFLINE=1 forbids installing it "
                                 f"(pip install {tc.package}=={tc.version}); build once online or unset RTXPACK_OFFLINE")
    if check_index:
        versions, why = available_versions(tc.package)
        if versions is None:
            return Toolchain(tc.backend, tc.version, tc.cuda, None, False,
                             problem=f"toolchain {tc.name} cannot be installed: {why}")
        if tc.version not in versions:
            return Toolchain(tc.backend, tc.version, tc.cuda, None, False,
                             problem=f"toolchain {tc.name} cannot be installed: {tc.package}=={tc.version} is not on "
                                     f"the package index (available: {', '.join(versions)})")
    return tc


def ensure(tc: Toolchain, *, log=None) -> str:
    """The interpreter of ``tc``, creating its venv (``pip install tensorrt-rtx-cuXX==VERSION``) if needed."""
    if tc.problem:
        raise BuildError(tc.problem, fix="fix or remove the [[toolchains]] entry", toolchain=tc.name)
    if tc.python:
        return tc.python
    d = tc.venv_dir()
    py = _venv_python(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(d) + ".lock"):
        if (d / MARKER).is_file() and py.exists():
            return str(py)
        if env_config.offline():
            raise BuildError(f"toolchain {tc.name} is not installed and RTXPACK_OFFLINE=1",
                             fix="install it once online (rtxpack build) or unset RTXPACK_OFFLINE", toolchain=tc.name)
        if d.exists():
            shutil.rmtree(d)  # a half-made venv from a crashed install
        if log:
            log(f"installing toolchain {tc.name} into {d} (pip install {tc.package}=={tc.version})")
        steps = [[sys.executable, "-m", "venv", str(d)],
                 [str(py), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
                  f"{tc.package}=={tc.version}"]]
        for cmd in steps:
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                tail = "\n".join((out.stderr or out.stdout).strip().splitlines()[-5:])
                raise BuildError(f"installing toolchain {tc.name} failed: {' '.join(cmd[:4])}...: {tail}",
                                 fix="check the version exists (pip index versions " + tc.package + ") and the network",
                                 toolchain=tc.name)
        mod = registry.get(tc.backend).toolchain_module
        check = subprocess.run([str(py), "-c", f"import {mod}; print({mod}.__version__)"],
                               capture_output=True, text=True)
        got = check.stdout.strip()
        if check.returncode != 0 or got != tc.version:
            raise BuildError(f"toolchain {tc.name}: {mod} in the new venv reports {got or check.stderr.strip()!r}",
                             fix=f"remove {d} and retry", toolchain=tc.name)
        atomic_write(d / MARKER, json.dumps({"backend": tc.backend, "version": tc.version, "cuda": tc.cuda,
                                             "package": f"{tc.package}=={tc.version}", "created": time.time()}).encode())
    return str(py)
