"""The wheel carries everything: build it, install it (not editable) into a fresh virtual environment,
and run the demo from there, outside the checkout, with nothing of the checkout on the path.

The venv sees the system's site-packages (``--system-site-packages``) only to reuse the heavy
dependencies already installed (tensorrt-rtx, onnx, numpy); rtxpack itself must come from the wheel,
which the test checks by where ``import rtxpack`` finds it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ("rtxpack/demo/rtxpack.toml", "rtxpack/demo/flow.py", "rtxpack/demo/models.py",
          "rtxpack/installer/data/selftest_cnn.onnx", "rtxpack/backends/tensorrt_rtx/build_worker.py",
          "rtxpack/farm/publish.py", "rtxpack/py.typed")


def _build_backend_installed() -> bool:
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return False
    return tuple(int(x) for x in setuptools.__version__.split(".")[:1]) >= (68,)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"                    # a copy: building never writes into the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "rtxpack", src / "rtxpack", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the test extra installs the build backend (setuptools>=68, wheel): build with it, no download
    offline = ["--no-build-isolation"] if _build_backend_installed() else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dist), "--no-deps", "-q", *offline],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = dist.glob("rtxpack-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(whl)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return {"base": base, "wheel": whl, "venv": venv, "python": py}


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RTXPACK_")}
    tmp = base / "tmp"                    # the demo's temporary folders land here: it must be empty after
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def test_wheel_contains_what_the_demo_and_the_farm_need(wheel_venv: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(wheel_venv["wheel"]).namelist())
    missing = [n for n in NEEDED if n not in names]
    assert not missing, missing
    assert not any(n.startswith(("tests/", "scripts/")) for n in names)


def test_demo_runs_from_the_installed_wheel(wheel_venv: dict[str, Path]) -> None:
    py, base = wheel_venv["python"], wheel_venv["base"]
    env = _env(base)
    run = lambda *a: subprocess.run([*a], capture_output=True, text=True, env=env, cwd=str(base),  # noqa: E731
                                    timeout=600)
    r = run(str(py), "-c", "import rtxpack, rtxpack.demo.flow as f; print(rtxpack.__file__); print(f.config_text()[:9])")
    assert r.returncode == 0, r.stderr
    where = Path(r.stdout.splitlines()[0])
    assert wheel_venv["venv"] in where.parents, f"rtxpack came from {where}, not the wheel"
    assert ROOT not in where.parents

    # the console script: JSON summary on stdout, the story on stderr, temporary folders all removed
    r = run(str(wheel_venv["venv"] / "bin" / "rtxpack"), "demo", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["chosen"].startswith("mlp/engine/") and "covers 8.9" in summary["reason"]
    assert summary["build"]["failed"] == 0 and summary["temporary"]
    assert list((base / "tmp").iterdir()) == [], "the demo left files in the temp folder"

    # python -m rtxpack.demo with a kept folder: the public key stays, no private key anywhere
    keep = base / "kept"
    r = run(str(py), "-m", "rtxpack.demo", "--dir", str(keep), "--gpu", "7.5")
    assert r.returncode == 0, r.stderr
    assert "engine for exactly CC 7.5" in r.stdout
    assert (keep / "rtxpack.pub").is_file() and (keep / "repo" / "manifest.json").is_file()
    assert not list(keep.rglob("*.key")) and list((base / "tmp").iterdir()) == []
    assert not any("PRIVATE KEY" in p.read_text(errors="ignore") for p in keep.rglob("*") if p.is_file()
                   and p.stat().st_size < 100_000)
