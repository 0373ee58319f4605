"""Building with the real TensorRT-RTX builder: two toolchains (one a venv rtxpack installs), parallel
workers, the repository layout and manifest entries, no-op rebuilds, a cell the builder rejects."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtxpack.backends.tensorrt_rtx.header import parse_header
from rtxpack.farm import build, load_config, make_plan
from rtxpack.farm import plan as plan_mod
from rtxpack.manifest import Manifest, blob_relpath
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

    def no_hashing(path):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{path} was hashed again although size and mtime did not change")

    monkeypatch.setattr(plan_mod, "model_digest", no_hashing)
    monkeypatch.setattr(plan_mod, "weights_digest", no_hashing)
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
                       target("mixed", ["7.5", "8.9"]))
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
