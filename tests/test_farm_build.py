"""Building with the real TensorRT-RTX builder: two toolchains (one a venv rtxpack installs), parallel
workers, the repository layout and manifest entries, no-op rebuilds, a cell the builder rejects."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtxpack.backends.tensorrt_rtx.header import parse_header
from rtxpack.core import registry
from rtxpack.farm import build, load_config, make_plan
from rtxpack.core.manifest import Manifest, blob_relpath
from test_farm_common import (CNN, LOCAL, MLP, OTHER, ROOT, cli, farm, farm_env, matrix_repo,  # noqa: F401
                              target, toolchain, write_config)


def test_matrix_builds_every_cell_with_both_toolchains(matrix_repo, farm_env) -> None:
    cfg, repo, report = matrix_repo
    assert (report["built"], report["failed"], report["skipped"]) == (8, 0, 0), report
    m = Manifest.load(repo)
    assert len(m) == 8
    assert {a.backend_version for a in m} == {LOCAL, OTHER}
    for a in m:
        blob = repo / a.path
        data = blob.read_bytes()
        assert a.path == blob_relpath(a.sha256) and hashlib.sha256(data).hexdigest() == a.sha256 and len(data) == a.size
        assert a.kind == "engine" and a.backend == "tensorrt-rtx" and a.cuda == "13" and a.min_driver_version == "13.0"
        assert a.ptx is False and a.os is None and a.stripped is False and a.precision == "fp32"
        assert a.compute_capabilities in (("8.6", "8.9", "12.0"), ("12.0",))
        assert a.cell and a.id == f"{a.model}/engine/{a.cell[:16]}"
        h = parse_header(data)  # the plan agrees with its manifest entry
        assert a.backend_version.startswith(h.version + ".") and h.compute_capabilities == a.compute_capabilities
        assert a.extra["target"] in ("portable", "blackwell")
        if a.model == "mlp":
            assert a.profiles == {"x": {"min": [1, 64], "opt": [4, 64], "max": [16, 64]}}
    # the 1.6.1.120 toolchain is a venv rtxpack made, holding that exact version
    venv = farm_env.toolchains / f"tensorrt-rtx-{OTHER}-cu13"
    marker = json.loads((venv / "rtxpack-toolchain.json").read_text())
    assert marker["version"] == OTHER
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorrt_rtx; print(tensorrt_rtx.__version__)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == OTHER


def test_unchanged_rebuild_does_no_builder_work(matrix_repo, farm, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, repo, _ = matrix_repo
    first = build(cfg, repo, jobs=2)      # fills this test's model digest cache
    assert first.builder_runs == 0 and first.count("up-to-date") == 8

    def no_hashing(path, *args):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{path} was hashed or parsed again although its identity and fingerprint did not change")

    import rtxpack.core.digest_cache as digest_cache
    for name in ("model_digest_of", "load_structure", "weights_digest", "weights_digest_of_structure"):
        monkeypatch.setattr(digest_cache, name, no_hashing)
    again = build(cfg, repo, jobs=2)
    assert again.builder_runs == 0
    assert (again.count("built"), again.count("up-to-date"), again.count("failed")) == (0, 8, 0)


def test_builder_rejection_fails_alone(farm, tmp_path: Path) -> None:
    """TensorRT-RTX 1.7 refuses FP32 GEMM on Turing: that cell fails with the builder's message, the other builds."""
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, target("turing", ["7.5"]), target("ada", ["8.9"]))
    proc = cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "--json", check=False)
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert (d["built"], d["failed"]) == (1, 1)
    failed = next(c for c in d["cells"] if c["status"] == "failed")
    assert failed["target"] == "turing" and "FP32 GEMM is not supported" in failed["error"]
    assert len(Manifest.load(tmp_path / "repo")) == 1


def test_cli_progress_lines_and_json(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("stripped", ["8.9"], strip_weights=True))    # skipped: no GPU on this node
    proc = cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "-j", "2")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "built" in lines[-1] and "[skip]" in lines[0], proc.stderr
    proc = cli("build", str(cfg), "--repo", str(tmp_path / "repo"), "--json")
    assert proc.stderr == ""
    d = json.loads(proc.stdout)
    assert {"built", "skipped", "failed", "cells"} <= set(d) and d["up_to_date"] == 1 and d["skipped"] == 1


def test_parallel_processes_into_one_repository_lose_nothing(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("b", ["12.0"]), target("a", ["8.6"]))
    ids = [c.id for c in make_plan(load_config(cfg)).cells]
    assert len(ids) == 6
    repo = tmp_path / "repo"
    env = dict(__import__("os").environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "rtxpack.cli", "build", str(cfg), "--repo", str(repo), "--json",
                               *sum((["--cell", i] for i in ids[k::3]), [])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    m = Manifest.load(repo)
    assert sorted(a.cell for a in m) == sorted(ids)
    assert not list((repo / ".tmp").iterdir())


def test_workers_are_reused_across_cells(farm, tmp_path: Path) -> None:
    """-j N starts at most N long-lived workers and sends every cell to one of them; the manifest is batched."""
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("b", ["12.0"]), target("a", ["8.6"]))
    two = build(cfg, tmp_path / "repo2", jobs=2)
    assert (two.count("built"), two.count("failed")) == (6, 0), two.to_dict()
    assert two.builder_runs == 6 and two.worker_crashes == 0
    assert 1 <= two.workers_started <= 2 and two.peak_workers <= 2
    assert 1 <= two.manifest_writes < 6
    one = build(cfg, tmp_path / "repo1", jobs=1)
    assert one.count("built") == 6 and one.builder_runs == 6
    assert (one.workers_started, one.peak_workers) == (1, 1)
    for repo in ("repo1", "repo2"):
        m = Manifest.load(tmp_path / repo)
        assert len(m) == 6 and all((tmp_path / repo / a.path).is_file() for a in m)
        assert not list((tmp_path / repo / ".tmp").iterdir())


def test_matrix_of_two_toolchains_keeps_at_most_j_workers(matrix_repo) -> None:
    _, _, report = matrix_repo
    assert report["builder_runs"] == 8 and report["peak_workers"] <= 2
    assert report["workers_started"] < 8 and report["worker_crashes"] == 0


CRASHY_WORKER = '''
import ctypes, os, resource, sys
sys.path.insert(0, {real_dir!r})
import build_worker as bw

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_real = bw.build_plan


def build_plan(onnx_path, **kw):
    if os.path.basename(onnx_path).startswith("crash"):
        ctypes.string_at(0)  # a real segfault in the worker process
    return _real(onnx_path, **kw)


bw.build_plan = build_plan
sys.exit(bw.main())
'''


def test_worker_crash_fails_only_its_cell(farm, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A worker that segfaults fails the cell it was building (with the signal) and is replaced for the next cell."""
    real = registry.get("tensorrt-rtx")
    real_worker = Path(real.worker_argv(sys.executable)[2])
    wrapper = tmp_path / "crashy_worker.py"
    wrapper.write_text(CRASHY_WORKER.format(real_dir=str(real_worker.parent)))
    # the same backend, registered again with a builder that crashes on model "crash"
    registry.register(dataclasses.replace(real, worker_argv=lambda py: [py, "-I", str(wrapper), "--serve"]), replace=True)
    request.addfinalizer(lambda: registry.register(real, replace=True))
    models = tmp_path / "models"
    models.mkdir()
    (models / "crash.onnx").write_bytes((farm.models / "mlp.onnx").read_bytes())
    crash = MLP.replace('name = "mlp"', 'name = "crash"').replace("{models}/mlp.onnx", str(models / "crash.onnx"))
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, crash, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("b", ["12.0"]))
    report = build(cfg, tmp_path / "repo", jobs=2)
    d = report.to_dict()
    assert (d["built"], d["failed"]) == (4, 2), d
    for c in d["cells"]:
        if c["model"] == "crash":
            assert c["status"] == "failed" and "worker crashed" in c["error"] and "SIGSEGV" in c["error"], c
        else:
            assert c["status"] == "built", c
    assert report.worker_crashes == 2 and report.builder_runs == 6
    assert report.peak_workers <= 2 and report.workers_started <= 2 + 2
    m = Manifest.load(tmp_path / "repo")
    assert sorted(a.model for a in m) == ["cnn", "cnn", "mlp", "mlp"]
    assert not list((tmp_path / "repo" / ".tmp").iterdir())


def test_interrupted_build_keeps_finished_cells(farm, tmp_path: Path) -> None:
    """SIGTERM mid-build: the cells finished so far are in the manifest, and every entry's blob exists."""
    import os
    import signal

    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, CNN, target("p", ["8.6", "8.9", "12.0"]),
                       target("b", ["12.0"]), target("a", ["8.6"]), target("z", ["8.9"]))
    repo = tmp_path / "repo"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "rtxpack.cli", "build", str(cfg), "--repo", str(repo), "-j", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert "built" in first, first
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    m = Manifest.load(repo)
    assert len(m) >= 1
    assert all((repo / a.path).is_file() for a in m)
