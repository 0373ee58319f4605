"""End to end on a GPU with the nvrtc backend (issue: app runtime): a repository built on the CPU,
warmed on the GPU, served on loopback, loaded in fresh processes four ways; every output matches
the ONNX reference. Skips cleanly without a GPU."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def gpu():
    from rtxpack.core.device import detect_gpus

    gpus, notes = detect_gpus()
    if not gpus:
        pytest.skip(f"needs an NVIDIA GPU with a driver ({notes[0] if notes else 'none found'})")
    return gpus[0]


def test_farm_to_pc_four_paths(gpu, tmp_path):
    import load_flow
    from rtxpack.demo import models as examples

    onnx = examples.small_cnn(tmp_path / "models" / "net.onnx", channels=16, size=32)
    repo, built, warmed = load_flow.build_repo(tmp_path, onnx, gpu.compute_capability, [1, 3, 32, 32])
    assert built["failed"] == 0 and built["built"] == 2, built
    assert warmed["warmed"] >= 1, warmed
    with load_flow.Server(repo) as srv:
        res = load_flow.run_paths(tmp_path, srv.url, onnx, [1, 3, 32, 32])
    for name, r in res.items():
        assert r["max_err"] <= 1e-4, (name, r["max_err"])
    a, b, c, d = (res[k] for k in ("a_full_shipped_cache", "b_stripped_refit", "c_offline_jit", "d_second_start"))
    assert a["path"] == "repository" and a["plan"]["tier"] == "ptx" and not a["plan"]["stripped"]
    assert a["runtime_cache"].startswith("shipped"), a["runtime_cache"]
    assert b["path"] == "repository" and b["plan"]["stripped"] and b["plan"]["tier"] == "exact-cc"
    assert any(st["step"] == "refit" for st in b["steps"])
    assert c["path"] == "jit-build"
    assert d["path"] == "jit-cached" and d["runtime_cache"].startswith("runtime cache persisted")
