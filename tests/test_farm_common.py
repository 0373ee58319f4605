"""Shared fixtures of the farm tests (imported by the other test_farm_* modules; no tests here).

The 1.6.1.120 toolchain is a real venv created by rtxpack (``pip install tensorrt-rtx-cu13==1.6.1.120``)
in one session-wide directory, so a test run installs it once. Set ``RTXPACK_TEST_TOOLCHAINS_DIR``
to keep it across runs (CI can cache that directory).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rtxpack.demo import models as examples
from rtxpack.demo.models import fp16_variant

ROOT = Path(__file__).resolve().parent.parent
LOCAL = "1.7.1.116"     # the tensorrt-rtx of this interpreter (CI installs it)
OTHER = "1.6.1.120"     # installed by rtxpack into its own venv


@dataclass
class FarmEnv:
    base: Path
    toolchains: Path
    models: Path


@pytest.fixture(scope="session")
def farm_env(tmp_path_factory: pytest.TempPathFactory) -> FarmEnv:
    base = tmp_path_factory.mktemp("farm")
    keep = os.environ.get("RTXPACK_TEST_TOOLCHAINS_DIR")
    toolchains = Path(keep) if keep else tmp_path_factory.getbasetemp() / "toolchains"
    models = base / "models"
    examples.mlp(models / "mlp.onnx")
    examples.small_cnn(models / "cnn.onnx")
    fp16_variant(models / "mlp.onnx", models / "mlp16.onnx")
    return FarmEnv(base=base, toolchains=toolchains, models=models)


@pytest.fixture
def farm(farm_env: FarmEnv, monkeypatch: pytest.MonkeyPatch) -> FarmEnv:
    """farm_env with RTXPACK_TOOLCHAINS_DIR pointing at the shared toolchains (per test)."""
    monkeypatch.setenv("RTXPACK_TOOLCHAINS_DIR", str(farm_env.toolchains))
    return farm_env


MLP = """
[[models]]
name = "mlp"
onnx = "{models}/mlp.onnx"
[models.inputs.x]
min = [1, 64]
opt = [4, 64]
max = [16, 64]
"""
MLP16 = """
[[models]]
name = "mlp"
onnx = "{models}/mlp16.onnx"
precision = "fp16"
[models.inputs.x]
min = [1, 64]
opt = [4, 64]
max = [16, 64]
"""
CNN = """
[[models]]
name = "cnn"
onnx = "{models}/cnn.onnx"
"""


def target(name: str, ccs: list[str], **extra: object) -> str:
    lines = ["[[targets]]", f'name = "{name}"', 'backend = "tensorrt-rtx"', f"compute_capabilities = {json.dumps(ccs)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def toolchain(version: str, cuda: str = "13") -> str:
    return f'[[toolchains]]\nbackend = "tensorrt-rtx"\nversion = "{version}"\ncuda = "{cuda}"\n'


def write_config(path: Path, env: FarmEnv, *parts: str) -> Path:
    text = '[project]\nname = "test"\nversion = "1.0.0"\n' + "".join(p.format(models=env.models) for p in parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def matrix_config(path: Path, env: FarmEnv) -> Path:
    """MLP (dynamic batch) + small CNN, x portable [8.6, 8.9, 12.0] + [12.0], x two toolchains: 8 cells."""
    return write_config(path, env, MLP, CNN, target("portable", ["8.6", "8.9", "12.0"]), target("blackwell", ["12.0"]),
                        toolchain(LOCAL), toolchain(OTHER))


def cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m rtxpack.cli ARGS`` as a real subprocess (the environment of this test + ``env``)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "rtxpack.cli", *args], capture_output=True, text=True, env=e,
                          cwd=str(ROOT), timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rtxpack {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def matrix_repo(farm_env: FarmEnv) -> tuple[Path, Path, dict]:
    """The 8-cell matrix built once per session with -j 2 (config path, repo path, build report)."""
    from rtxpack.farm import build

    cfg = matrix_config(farm_env.base / "matrix" / "rtxpack.toml", farm_env)
    repo = farm_env.base / "matrix" / "repo"
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("RTXPACK_"):
                mp.delenv(name)
        mp.setenv("RTXPACK_CACHE_DIR", str(farm_env.base / "matrix-cache"))
        mp.setenv("RTXPACK_TOOLCHAINS_DIR", str(farm_env.toolchains))
        report = build(cfg, repo, jobs=2)
    return cfg, repo, report.to_dict()
