"""Helpers for the trust and fault tests: real repositories on disk and the real CLI in a subprocess."""
from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rtxpack.core.manifest import Artifact, Manifest, artifact_id, blob_relpath

ROOT = Path(__file__).resolve().parent.parent
MD = "cd" * 32
WD = "ab" * 32
CC = "8.9"


def data_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def engine_for(data: bytes, model: str = "mlp", cc: str = CC, **kw: Any) -> Artifact:
    sha = hashlib.sha256(data).hexdigest()
    fields: dict[str, Any] = dict(id=artifact_id("engine", model, sha), kind="engine", model=model, model_digest=MD,
                                  weights_digest=WD, backend="tensorrt-rtx", backend_version="1.7.1.116",
                                  compute_capabilities=(cc,), size=len(data), sha256=sha, path=blob_relpath(sha))
    fields.update(kw)
    return Artifact(**fields)


def cache_for(engine: Artifact, data: bytes, gpu_name: str = "forced sm_89", cc: str = CC, **kw: Any) -> Artifact:
    sha = hashlib.sha256(data).hexdigest()
    fields: dict[str, Any] = dict(id=artifact_id("runtime-cache", engine.model, sha), kind="runtime-cache",
                                  model=engine.model, model_digest=engine.model_digest,
                                  weights_digest=engine.weights_digest, backend=engine.backend,
                                  backend_version=engine.backend_version, compute_capabilities=(cc,), size=len(data),
                                  sha256=sha, path=blob_relpath(sha), gpu_name=gpu_name, engine=engine.sha256)
    fields.update(kw)
    return Artifact(**fields)


def write_repo(root: Path, blobs: Sequence[tuple[Artifact, bytes]], *, version: int = 1, **kw: Any) -> Manifest:
    """A repository directory: the blobs at their paths plus an (unsigned) manifest.json."""
    root.mkdir(parents=True, exist_ok=True)
    for art, data in blobs:
        p = root / art.path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    m = Manifest(artifacts=tuple(a for a, _ in blobs), version=version, **kw)
    m.save(root)
    return m


H100 = {"os": "linux", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                 "driver_version": "13.0", "memory_bytes": 80 << 30}],
        "backends": {"reference": "1.0.0", "nvrtc": None, "tensorrt-rtx": None}}


def device(cc: str = CC) -> Any:
    """A forced device of compute capability ``cc`` (what RTXPACK_DEVICE=8.9 gives)."""
    from rtxpack.core.device import parse_override

    return parse_override(cc)


def one_engine(root: Path, size: int, seed: int = 0, **kw: Any) -> tuple[Artifact, bytes]:
    """A directory repository holding one engine of ``size`` random bytes: (its entry, its bytes)."""
    data = data_of(size, seed)
    e = engine_for(data, **kw)
    write_repo(root, [(e, data)])
    return e, data


def edit_first_artifact(root: Path, **fields: Any) -> None:
    """Change fields of the first entry of ``root/manifest.json`` by hand (what a tamperer does)."""
    import json

    doc = json.loads((root / "manifest.json").read_text())
    doc["artifacts"][0].update(fields)
    (root / "manifest.json").write_text(json.dumps(doc))


def fault(name: str, expected: str, category: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Label a test for the published table (docs/RELIABILITY.md, grouped by ``category``)."""
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.fault = (name, expected, category)  # type: ignore[attr-defined]
        return fn
    return deco


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess:
    """``python -m rtxpack.cli ARGS`` in a subprocess (the real entry point), text output."""
    e = child_env(**extra) if env is None else env
    return subprocess.run([sys.executable, "-m", "rtxpack.cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=str(ROOT))
