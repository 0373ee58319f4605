"""`rtxpack warm` (runtime caches published into a repository) and `rtxpack selftest`."""
import json
import subprocess
import sys

import numpy as np
import pytest

import rtxpack
from rtxpack.demo import models as examples
from rtxpack.core.manifest import Manifest
from rtxpack.farm.warm import warm

import refbackend
from test_runtime import H100


def test_warm_adds_a_runtime_cache_that_load_then_uses(tmp_path, monkeypatch, reference_backend):
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    onnx = examples.mlp(tmp_path / "models" / "mlp.onnx")
    cfg = tmp_path / "rtxpack.toml"
    cfg.write_text('[project]\nname = "t"\nversion = "1"\n[[models]]\nname = "mlp"\nonnx = "models/mlp.onnx"\n'
                   'warmup = [{x = [1, 64]}, {x = [8, 64]}]\n'
                   '[[targets]]\nname = "p"\nbackend = "nvrtc"\ncompute_capabilities = ["9.0"]\n')
    repo = tmp_path / "repo"
    eng = refbackend.publish(repo, "mlp", onnx)
    results = warm(cfg, repo)
    assert [r.status for r in results] == ["warmed"]
    m = Manifest.load(repo)
    (rc,) = m.select(kind="runtime-cache")
    assert rc.engine == eng.sha256 and rc.gpu_name == "NVIDIA H100 80GB HBM3" and rc.driver_version == "13.0"
    assert warm(cfg, repo)[0].status == "warmed"          # warming again replaces, not duplicates
    assert len(Manifest.load(repo).select(kind="runtime-cache")) == 1
    with rtxpack.load("mlp", repo=repo) as s:
        assert s.provenance.runtime_cache.startswith("shipped")
        s.run({"x": np.ones((8, 64), np.float32)})
        assert s._loaded.kernel_sources == {"runtime-cache": 1, "jit": 0}


def test_warm_without_gpu_is_a_clear_error(tmp_path):
    cfg = tmp_path / "rtxpack.toml"
    examples.mlp(tmp_path / "m.onnx")
    cfg.write_text('[project]\nname = "t"\nversion = "1"\n[[models]]\nname = "mlp"\nonnx = "m.onnx"\n'
                   '[[targets]]\nname = "p"\nbackend = "nvrtc"\ncompute_capabilities = ["9.0"]\n')
    refbackend.publish(tmp_path / "repo", "mlp", tmp_path / "m.onnx", backend="nvrtc")
    from rtxpack.core.device import detect_gpus
    if detect_gpus()[0]:
        pytest.skip("this machine has a GPU")
    r = subprocess.run([sys.executable, "-m", "rtxpack.cli", "warm", str(cfg), "--repo", str(tmp_path / "repo")],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "needs a GPU" in r.stderr and "fix:" in r.stderr and "Traceback" not in r.stderr


def test_selftest_reports_each_step(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rtxpack.cli", "selftest", "--json"], capture_output=True, text=True,
                       timeout=600)
    report = json.loads(r.stdout)
    steps = {s["step"]: s["status"] for s in report["steps"]}
    assert steps["detect"] == "pass" and steps["build"] == "pass"
    assert r.returncode == (0 if report["ok"] else 1)
    if not report["device"]["gpus"]:
        assert report["backend"] == "nvrtc"
        assert steps["load+run"] == "skip" and report["ok"]
