"""rtxpack.load(): the whole installer-side chain on the CPU, with a reference backend standing in
for the GPU (tests/refbackend.py). The real nvrtc backend runs the same chain on a GPU in
tests/test_e2e_gpu.py."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rtxpack
from rtxpack.demo import models as examples
from rtxpack.installer import runtime_caches as rcs
from rtxpack.installer.store import Store
from rtxpack.core.errors import ResolveError

import refbackend

H100 = {"os": "linux", "gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                 "driver_version": "13.0", "memory_bytes": 80 << 30}],
        "backends": {"reference": "1.0.0", "nvrtc": None, "tensorrt-rtx": None}}


@pytest.fixture
def env(tmp_path, monkeypatch, reference_backend):
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps(H100))
    backend = reference_backend
    onnx = examples.mlp(tmp_path / "app" / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    ref = examples.reference_run(onnx, {"x": x})["y"]
    return type("Env", (), {"tmp": tmp_path, "onnx": onnx, "x": x, "ref": ref, "backend": backend,
                            "repo": tmp_path / "repo"})


def test_full_plan_from_directory_repo(env):
    art = refbackend.publish(env.repo, "mlp", env.onnx)
    with rtxpack.load("mlp", repo=env.repo) as s:
        out = s.run({"x": env.x})["y"]
        p = s.provenance
    np.testing.assert_allclose(out, env.ref, rtol=1e-5, atol=1e-6)
    assert p.path == "repository" and p.plan["id"] == art.id and p.plan["tier"] == "portable"
    assert [st["step"] for st in p.steps][:4] == ["detect", "open-repository", "resolve", "fetch"]
    assert all(st["seconds"] >= 0 for st in p.steps)
    assert "H100" in p.device


def test_stripped_plan_is_refit_from_the_app_onnx(env):
    art = refbackend.publish(env.repo, "mlp", env.onnx, stripped=True)
    with rtxpack.load("mlp", repo=env.repo, onnx=env.onnx) as s:
        out = s.run({"x": env.x})["y"]
        assert s.provenance.plan["id"] == art.id and s.provenance.plan["stripped"]
        assert any(st["step"] == "refit" for st in s.provenance.steps)
    np.testing.assert_allclose(out, env.ref, rtol=1e-5, atol=1e-6)


def test_stripped_plan_with_other_weights_falls_back_to_jit(env, tmp_path):
    refbackend.publish(env.repo, "mlp", env.onnx, stripped=True)
    other = examples.mlp(tmp_path / "other" / "mlp.onnx", seed=7)
    with rtxpack.load("mlp", repo=env.repo, onnx=other) as s:
        assert s.provenance.path == "jit-build"
        rej = s.provenance.resolution["rejected"]
        assert any("other weights" in r["reason"] for r in rej)
        np.testing.assert_allclose(s.run({"x": env.x})["y"], examples.reference_run(other, {"x": env.x})["y"], rtol=1e-5)


def test_stripped_plan_without_onnx_is_not_a_candidate(env):
    refbackend.publish(env.repo, "mlp", env.onnx, stripped=True)
    with pytest.raises(ResolveError) as ei:
        rtxpack.load("mlp", repo=env.repo)
    assert "H100" in str(ei.value) and "onnx" in ei.value.fix


def test_runtime_cache_persists_and_is_used_on_the_next_start(env):
    refbackend.publish(env.repo, "mlp", env.onnx)
    with rtxpack.load("mlp", repo=env.repo) as s:
        s.run({"x": env.x})
        assert "no runtime cache" in s.provenance.runtime_cache
    files = list((Path(rtxpack.core.config.cache_dir()) / "state" / "runtime-caches").glob("*.rtcache"))
    assert len(files) == 1
    with rtxpack.load("mlp", repo=env.repo) as s:
        assert s.provenance.runtime_cache.startswith("runtime cache persisted on this machine")
        assert "loaded 1 specialisations" in s.provenance.runtime_cache
        s.run({"x": env.x})
        assert s._loaded.kernel_sources == {"runtime-cache": 1, "jit": 0}


def test_corrupt_persisted_cache_is_ignored_and_replaced(env):
    refbackend.publish(env.repo, "mlp", env.onnx)
    with rtxpack.load("mlp", repo=env.repo) as s:
        s.run({"x": env.x})
    (f,) = (Path(rtxpack.core.config.cache_dir()) / "state" / "runtime-caches").glob("*.rtcache")
    good = f.read_bytes()
    f.write_bytes(good[:-5] + b"XXXXX")           # flipped payload bytes: checksum fails
    with rtxpack.load("mlp", repo=env.repo) as s:
        assert "corrupt" in s.provenance.runtime_cache
        np.testing.assert_allclose(s.run({"x": env.x})["y"], env.ref, rtol=1e-5)
    assert f.read_bytes() == good                   # replaced by a valid one on close
    f.write_bytes(b"garbage")
    with rtxpack.load("mlp", repo=env.repo) as s:
        assert "corrupt" in s.provenance.runtime_cache


def test_shipped_runtime_cache_is_used(env):
    art = refbackend.publish(env.repo, "mlp", env.onnx)
    # make a real cache for this plan, publish it as a runtime-cache artifact for this GPU
    plan = (env.repo / art.path).read_bytes()
    loaded = env.backend.load(plan)
    loaded.run({"x": env.x})
    blob = loaded.runtime_cache()
    from rtxpack.core.digest import sha256_bytes
    from rtxpack.farm.repo import RepositoryWriter as Repository
    from rtxpack.core.manifest import Artifact, artifact_id, blob_relpath

    sha = sha256_bytes(blob)
    (env.repo / ".rc").write_bytes(blob)
    Repository(env.repo).add_blob_file(env.repo / ".rc", move=True)
    rc = Artifact(id=artifact_id("runtime-cache", "mlp", sha), kind="runtime-cache", model="mlp",
                  model_digest=art.model_digest, weights_digest=art.weights_digest, backend="reference",
                  backend_version=art.backend_version, compute_capabilities=("9.0",), size=len(blob), sha256=sha,
                  path=blob_relpath(sha), gpu_name="NVIDIA H100 80GB HBM3", os="linux", driver_version="13.0",
                  engine=art.sha256)
    Repository(env.repo).add_artifacts([rc])
    with rtxpack.load("mlp", repo=env.repo) as s:
        assert s.provenance.runtime_cache.startswith(f"shipped {rc.id}")
        s.run({"x": env.x})
        assert s._loaded.kernel_sources["runtime-cache"] == 1


def test_offline_with_only_the_onnx_builds_then_reuses(env, monkeypatch):
    monkeypatch.setenv("RTXPACK_OFFLINE", "1")
    builds = refbackend.STATS["builds"]
    with rtxpack.load("mlp", repo="http://127.0.0.1:9/never", onnx=env.onnx) as s:
        assert s.provenance.path == "jit-build"
        assert "offline" in s.provenance.fallbacks[0]["reason"].lower()
        np.testing.assert_allclose(s.run({"x": env.x})["y"], env.ref, rtol=1e-5)
    assert refbackend.STATS["builds"] == builds + 1
    with rtxpack.load("mlp", onnx=env.onnx) as s:
        assert s.provenance.path == "jit-cached"
        assert s.provenance.runtime_cache.startswith("runtime cache persisted")
    assert refbackend.STATS["builds"] == builds + 1   # the second start built nothing


def test_invalid_artifact_falls_back_to_next_candidate(env):
    good = refbackend.publish(env.repo, "mlp", env.onnx, ccs=("8.9", "9.0", "12.0"))
    # an exact-CC "plan" that the backend refuses to load (bad magic) ranks first
    from rtxpack.core.digest import sha256_bytes
    from rtxpack.farm.repo import RepositoryWriter as Repository
    from rtxpack.core.manifest import Artifact, artifact_id, blob_relpath

    junk = b"NOTAPLAN" * 100
    sha = sha256_bytes(junk)
    (env.repo / ".j").write_bytes(junk)
    Repository(env.repo).add_blob_file(env.repo / ".j", move=True)
    bad = Artifact(id=artifact_id("engine", "mlp", sha), kind="engine", model="mlp", model_digest=good.model_digest,
                   weights_digest=good.weights_digest, backend="reference", backend_version="1.0.0",
                   compute_capabilities=("9.0",), size=len(junk), sha256=sha, path=blob_relpath(sha))
    Repository(env.repo).add_artifacts([bad])
    with rtxpack.load("mlp", repo=env.repo) as s:
        assert s.provenance.plan["id"] == good.id
        assert s.provenance.fallbacks[0]["from"] == bad.id and "bad magic" in s.provenance.fallbacks[0]["reason"]


def test_nothing_can_run_is_one_clear_error(env, monkeypatch):
    refbackend.publish(env.repo, "mlp", env.onnx, ccs=("8.6", "8.9"))   # no PTX tier for 9.0? it has ptx=True
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps({**H100, "gpus": [{**H100["gpus"][0], "compute_capability": "8.0"}]}))
    with pytest.raises(ResolveError) as ei:
        rtxpack.load("mlp", repo=env.repo)
    msg = str(ei.value)
    assert "CC 8.0" in msg and "offers reference CC 8.6/8.9" in msg and ei.value.fix


def test_two_processes_closing_at_once_leave_a_valid_cache(env, tmp_path):
    refbackend.publish(env.repo, "mlp", env.onnx)
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import refbackend, rtxpack
        refbackend.install()
        s = rtxpack.load("mlp", repo={str(env.repo)!r})
        s.run({{"x": np.ones((int(sys.argv[1]), 64), np.float32)}})
        sys.stdin.readline()          # wait for the go signal, then close together
        s.close()
    """))
    import os
    procs = [subprocess.Popen([sys.executable, str(script), str(n)], stdin=subprocess.PIPE, env=dict(os.environ))
             for n in (1, 2, 3, 4)]
    import time
    time.sleep(3)
    for p in procs:
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=60) == 0
    (f,) = (Path(rtxpack.core.config.cache_dir()) / "state" / "runtime-caches").glob("*.rtcache")
    payload, why = rcs.read(Store(), _key_for(f, env))
    assert payload is not None, why
    assert not list(f.parent.glob(".rc.*"))          # no temp files left behind


def _key_for(path, env):
    # the key digest is in the file name; rebuild the key from the repo's engine
    from rtxpack.core.manifest import Manifest
    art = Manifest.load(env.repo).artifacts[0]
    key = rcs.CacheKey(model="mlp", plan_sha256=art.sha256, gpu_name="NVIDIA H100 80GB HBM3", cc="9.0", os="linux",
                       driver_major=13, backend="reference", backend_version="1.0.0")
    assert rcs.path_for(Store(), key) == path
    return key


def test_onnx_digests_are_cached_by_file_identity(env, monkeypatch):
    """Apps start often: the second start does not hash the app's ONNX again, unless it changed."""
    refbackend.publish(env.repo, "mlp", env.onnx, stripped=True)
    with rtxpack.load("mlp", repo=env.repo, onnx=env.onnx):
        pass
    import rtxpack.core.digest_cache as dc

    def no_hashing(path, *args):
        raise AssertionError(f"{path} was hashed again")

    monkeypatch.setattr(dc, "weights_digest", no_hashing)
    monkeypatch.setattr(dc, "weights_digest_of_structure", no_hashing)
    with rtxpack.load("mlp", repo=env.repo, onnx=env.onnx) as s:
        assert s.provenance.plan["stripped"]
    examples.mlp(env.onnx, seed=3)                       # the app's model changed: hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        rtxpack.load("mlp", repo=env.repo, onnx=env.onnx)
