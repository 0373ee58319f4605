"""`rtxpack inspect`: backend, version and CCs from a plan without a GPU; cross-check with a manifest."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtxpack.core.registry import create as get_backend
from rtxpack.backends.tensorrt_rtx.header import mask_from_ccs, parse_header
from rtxpack.core.errors import BackendError
from rtxpack.backends.inspect import inspect_file
from rtxpack.core.manifest import Manifest
from test_farm_common import LOCAL, MLP, cli, farm, farm_env, target, write_config  # noqa: F401


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    from rtxpack.demo import models as examples

    d = tmp_path_factory.mktemp("inspect")
    onnx = examples.small_cnn(d / "cnn.onnx")
    b = get_backend("tensorrt-rtx")
    return {"multi": b.build(onnx, compute_capabilities=["8.6", "8.9", "12.0"]),
            "one": b.build(onnx, compute_capabilities=["12.0"]), "default": b.build(onnx)}


def test_header_of_real_plans(plans) -> None:  # type: ignore[no-untyped-def]
    assert parse_header(plans["multi"]).compute_capabilities == ("8.6", "8.9", "12.0")
    assert parse_header(plans["multi"]).cc_mask == mask_from_ccs(["8.6", "8.9", "12.0"])
    assert parse_header(plans["one"]).compute_capabilities == ("12.0",)
    h = parse_header(plans["default"])  # no CC set: the portable default
    assert set(h.compute_capabilities) >= {"8.0", "8.6", "8.9", "12.0"}
    assert LOCAL.startswith(h.version + ".")
    info = get_backend("tensorrt-rtx").inspect(plans["one"])
    assert info.backend == "tensorrt-rtx" and info.compute_capabilities == ("12.0",)


def test_not_a_plan(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"\0" * 100)
    with pytest.raises(BackendError, match="x.bin"):
        inspect_file(tmp_path / "x.bin")
    with pytest.raises(BackendError, match="shorter"):
        parse_header(b"vtrt")


def test_cross_check_with_repository(farm, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "rtxpack.toml", farm, MLP, target("p", ["8.6", "8.9", "12.0"]))
    repo = tmp_path / "repo"
    cli("build", str(cfg), "--repo", str(repo))
    (a,) = Manifest.load(repo).artifacts
    info = inspect_file(repo / a.path, Manifest.load(repo), repo=str(repo))
    assert info["backend"] == "tensorrt-rtx" and info["compute_capabilities"] == ["8.6", "8.9", "12.0"]
    assert info["manifest"] == {"repo": str(repo), "artifact": a.id, "mismatches": []}
    # a manifest that lies about the CCs and version is caught
    raw = json.loads((repo / "manifest.json").read_text())
    raw["artifacts"][0]["compute_capabilities"] = ["8.9"]
    raw["artifacts"][0]["backend_version"] = "1.6.1.120"
    (repo / "manifest.json").write_text(json.dumps(raw))
    proc = cli("inspect", str(repo / a.path), "--repo", str(repo), "--json", check=False)
    assert proc.returncode == 1
    mm = json.loads(proc.stdout)["manifest"]["mismatches"]
    assert any(m.startswith("compute_capabilities") for m in mm) and any(m.startswith("backend_version") for m in mm)
    # a file the manifest does not know
    other = tmp_path / "other.plan"
    other.write_bytes((repo / a.path).read_bytes() + b"\0")
    assert inspect_file(other, Manifest.load(repo))["manifest"]["artifact"] is None


def test_nvrtc_plans_when_the_backend_is_there(tmp_path: Path) -> None:
    try:
        from rtxpack.backends import nvrtc  # noqa: F401
        from rtxpack.backends.nvrtc import NvrtcBackend, is_nvrtc_plan  # noqa: F401
    except ImportError as e:
        pytest.skip(f"nvrtc backend not importable here: {e}")
    from rtxpack.demo import models as examples

    onnx = examples.mlp(tmp_path / "mlp.onnx")
    try:
        data = NvrtcBackend().build(onnx, compute_capabilities=["8.9"], profiles={"x": {"min": [1, 64], "opt": [4, 64], "max": [16, 64]}})
    except Exception as e:  # noqa: BLE001 - NVRTC not usable on this machine
        pytest.skip(f"nvrtc build not possible here: {type(e).__name__}: {e}")
    (tmp_path / "p.bin").write_bytes(data)
    info = inspect_file(tmp_path / "p.bin")
    assert info["backend"] == "nvrtc" and "8.9" in info["compute_capabilities"]
