import dataclasses

import pytest

from rtxpack.core.errors import ResolveError
from rtxpack.core.resolve import Target, explain, no_match_error, resolve

from manifest_factory import WD, engine, manifest, runtime_cache

TRT = ("tensorrt-rtx", "1.7.1.116")
NV = ("nvrtc", "1.0.0")


def target(cc=(8, 9), os="linux", gpu="NVIDIA GeForce RTX 4090", driver=(13, 0), backends=(NV, TRT)):
    return Target(cc=cc, os=os, gpu_name=gpu, driver=driver, backends=tuple(sorted(backends)))


def test_tier_order_exact_portable_ptx_jit():
    exact = engine(ccs=("8.9",))
    portable = engine(ccs=("8.6", "8.9", "12.0"))
    ptx = engine(ccs=("7.5",), backend="nvrtc", version="1.0.0", ptx=True)
    res = resolve(manifest(ptx, portable, exact), target(), "m", have_onnx=True)
    assert [c.tier for c in res.candidates] == ["exact-cc", "portable", "ptx", "jit"]
    assert res.best.artifact == exact
    assert res.candidates[-1].backend == "tensorrt-rtx"


def test_deterministic_regardless_of_manifest_order():
    arts = [engine(ccs=("8.9",), size=s) for s in (5, 3, 9)] + [engine(ccs=("8.6", "8.9"), size=1)]
    r1 = resolve(manifest(*arts), target(), "m")
    r2 = resolve(manifest(*reversed(arts)), target(), "m")
    assert [c.id for c in r1.candidates] == [c.id for c in r2.candidates]
    assert r1.best.artifact.size == 3


@pytest.mark.parametrize("art, t, needle", [
    (engine(ccs=("8.6",)), target(), "built for CC 8.6, this GPU is 8.9"),
    (engine(version="1.6.1.120"), target(), "built with tensorrt-rtx 1.6.1.120"),
    (engine(os="windows"), target(os="linux"), "built for windows"),
    (engine(min_driver_version="13.1"), target(driver=(12, 8)), "needs CUDA driver 13.1"),
    (engine(stripped=True), target(), "no local ONNX"),
    (engine(ccs=("8.6",), precision="fp8"), target(cc=(8, 6)), "fp8 needs CC 8.9"),
    (engine(ccs=("9.0",)), target(cc=(9, 0)), "does not support CC 9.0"),
    (engine(backend="nvrtc", version="2.0.0"), target(), "not readable"),
])
def test_rejections_have_reasons(art, t, needle):
    res = resolve(manifest(art), t, "m")
    assert not res.candidates
    assert needle in res.rejected[0].reason


def test_stripped_needs_matching_weights_digest():
    stripped = engine(stripped=True, size=10)
    full = engine(ccs=("8.9",), size=1000)
    res = resolve(manifest(stripped, full), target(), "m", weights_digest=WD, have_onnx=True)
    assert res.best.artifact == stripped          # smaller download, refit from the local ONNX
    res = resolve(manifest(stripped, full), target(), "m", weights_digest="ef" * 32, have_onnx=True)
    assert all(c.artifact is None for c in res.candidates)  # both built from other weights: JIT only
    assert any("other weights" in c.reason for c in res.rejected)


def test_hopper_falls_back_to_nvrtc_and_names_it():
    trt = engine(ccs=("8.6", "8.9", "12.0"))
    res = resolve(manifest(trt), target(cc=(9, 0)), "m")
    assert not res.candidates
    err = no_match_error(res, repo="r")
    assert isinstance(err, ResolveError)
    assert "no TensorRT-RTX artifact for this GPU" in str(err)
    assert "nvrtc" in err.fix and "onnx" in err.fix
    nv = engine(ccs=("7.5", "8.6", "8.9", "9.0", "12.0"), backend="nvrtc", version="1.0.0", ptx=True)
    res = resolve(manifest(trt, nv), target(cc=(9, 0)), "m")
    assert res.best.artifact == nv


def test_ptx_runs_forward_only():
    nv = engine(ccs=("8.6", "8.9"), backend="nvrtc", version="1.0.0", ptx=True)
    assert resolve(manifest(nv), target(cc=(12, 0)), "m").best.tier == "ptx"
    assert not resolve(manifest(nv), target(cc=(7, 5)), "m").candidates


def test_backend_not_installed_is_a_note_not_a_rejection():
    res = resolve(manifest(engine()), target(backends=(NV,)), "m")
    assert res.best is not None and "not installed" in res.best.notes[0]


def test_runtime_cache_matching_and_near_misses():
    e = engine()
    good = runtime_cache(e, "NVIDIA GeForce RTX 4090", "8.9")
    other_gpu = runtime_cache(e, "NVIDIA GeForce RTX 4080", "8.9")
    other_drv = runtime_cache(e, "NVIDIA GeForce RTX 4090", "8.9", driver="12.8")
    newer_drv = runtime_cache(e, "NVIDIA GeForce RTX 4090", "8.9", driver="13.1")
    other_engine = runtime_cache(engine(ccs=("8.6", "8.9")), "NVIDIA GeForce RTX 4090", "8.9")
    res = resolve(manifest(e, good, other_gpu, other_drv, newer_drv, other_engine), target(), "m")
    by_id = {m.artifact.id: m for m in res.caches}
    assert by_id[good.id].ok
    assert not by_id[other_gpu.id].ok and "RTX 4080" in by_id[other_gpu.id].reason
    assert not by_id[other_drv.id].ok and "driver major 12" in by_id[other_drv.id].reason
    assert not by_id[newer_drv.id].ok and "newer driver" in by_id[newer_drv.id].reason
    assert other_engine.id not in by_id
    assert [a.id for a in res.artifacts] == [e.id, good.id]
    assert "~" in explain(res) and "+" in explain(res)


def test_no_engine_for_model_is_noted():
    res = resolve(manifest(engine(model="other")), target(), "m")
    assert "no engine for model 'm'" in res.notes[0]


def test_resolve_is_pure():
    m = manifest(engine(), engine(ccs=("8.6", "8.9")))
    before = dataclasses.asdict(m)
    for _ in range(3):
        resolve(m, target(), "m")
    assert dataclasses.asdict(m) == before
