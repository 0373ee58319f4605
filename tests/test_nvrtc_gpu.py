"""nvrtc backend on a real GPU: every operator against onnx.reference, whole models, JIT paths,
runtime cache, refit. Skipped cleanly without an NVIDIA GPU and driver."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rtxpack.demo import models as examples
from rtxpack.backends.nvrtc import NvrtcBackend
from rtxpack.core.errors import BackendError, RefitError

from nvrtc_helpers import assert_close, local_cc, op_cases, rand, reference, softmax_coerced_2d

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(local_cc() is None, reason="needs an NVIDIA GPU with a driver")]

CI_CCS = ["7.5", "8.6", "8.9", "9.0", "12.0"]
CASES = op_cases()


@pytest.fixture(scope="module")
def backend() -> NvrtcBackend:
    return NvrtcBackend()


@pytest.mark.parametrize("cid,build", CASES, ids=[c for c, _ in CASES])
def test_operator_matches_reference(tmp_path: Path, backend: NvrtcBackend, cid, build) -> None:
    path, inputs = build(tmp_path)
    plan = backend.build(path, compute_capabilities=[local_cc()], ptx=False)
    ref = reference(path, inputs)
    if cid == "softmax_opset11":
        ref = {"y0": softmax_coerced_2d(inputs["a"], 1)}
    with backend.load(plan) as p:
        assert p.kernel_sources["cubin"] == backend.inspect(plan).details["kernels"], p.provenance
        out = p.run(inputs)
    for name, r in ref.items():
        assert_close(out[name], r)


def _models(tmp: Path) -> dict[str, tuple[Path, dict[str, list[int]]]]:
    return {
        "mlp": (examples.mlp(tmp / "mlp.onnx"), {"x": [64]}),
        "resnet_small": (examples.resnet(tmp / "resnet_small.onnx", layers=(1, 2, 1, 1), width=8, size=32, classes=10),
                         {"x": [3, 32, 32]}),
        "small_cnn": (examples.small_cnn(tmp / "small_cnn.onnx", dynamic_batch=True), {"x": [3, 32, 32]}),
        "inception_block": (examples.inception_block(tmp / "inception.onnx"), {"x": [32, 16, 16]}),
        "transformer_block": (examples.transformer_block(tmp / "transformer.onnx"), {"x": [16, 64]}),
    }


@pytest.mark.parametrize("name", ["mlp", "resnet_small", "small_cnn", "inception_block", "transformer_block"])
def test_whole_model_aot_then_gpu(tmp_path: Path, backend: NvrtcBackend, name: str) -> None:
    path, feature = _models(tmp_path)[name]
    plan = backend.build(path, compute_capabilities=CI_CCS)      # AOT: every CI target, no GPU used
    with backend.load(plan) as p:
        for batch in (1, 3):                                      # dynamic batch: a runtime argument
            x = rand(batch, *feature["x"])
            ref = reference(path, {"x": x})
            out = p.run({"x": x})
            for k, r in ref.items():
                assert_close(out[k], r)
        assert p.kernel_sources["cubin"] > 0, p.provenance


def test_cuda_graph_and_direct_launch_agree(tmp_path: Path, backend: NvrtcBackend) -> None:
    path, _ = _models(tmp_path)["resnet_small"]
    plan = backend.build(path, compute_capabilities=[local_cc()])
    x = rand(2, 3, 32, 32)
    with backend.load(plan) as a, backend.load(plan, options={"cuda_graph": False}) as b:
        first = a.run({"x": x})["y"]           # first run of a shape: direct launches
        graphed = a.run({"x": x})["y"]         # from the second run: one CUDA graph launch
        assert next(iter(a._states.values())).graph_exec is not None
        np.testing.assert_array_equal(first, graphed)
        np.testing.assert_array_equal(graphed, b.run({"x": x})["y"])
        np.testing.assert_array_equal(graphed, b.run({"x": x})["y"])
        assert next(iter(b._states.values())).graph_exec is None


def test_profile_rejects_out_of_range_shape(tmp_path: Path, backend: NvrtcBackend) -> None:
    path = examples.mlp(tmp_path / "m.onnx")
    plan = backend.build(path, compute_capabilities=[local_cc()], profiles={"x": {"min": [1, 64], "opt": [4, 64], "max": [8, 64]}})
    with backend.load(plan) as p:
        p.run({"x": rand(8, 64)})
        with pytest.raises(BackendError, match="'x'.*between"):
            p.run({"x": rand(9, 64)})


def test_stripped_plan_refit(tmp_path: Path, backend: NvrtcBackend) -> None:
    path, _ = _models(tmp_path)["resnet_small"]
    full = backend.build(path, compute_capabilities=[local_cc()])
    plan = backend.build(path, compute_capabilities=[local_cc()], strip_weights=True)
    assert len(plan) < len(full)
    x = rand(2, 3, 32, 32)
    with backend.load(plan) as p:
        with pytest.raises(BackendError, match="refit"):
            p.run({"x": x})
        # a model with one changed weight is refused, naming it, before anything is uploaded
        import onnx
        from onnx import numpy_helper

        m = onnx.load(str(path))
        for t in m.graph.initializer:
            if t.name == "layer2.0.conv2.weight":
                arr = numpy_helper.to_array(t).copy()
                arr[0, 0, 0, 0] += 1e-3
                t.CopyFrom(numpy_helper.from_array(arr, t.name))
        onnx.save(m, str(tmp_path / "other.onnx"))
        with pytest.raises(RefitError, match="layer2.0.conv2.weight"):
            p.refit(tmp_path / "other.onnx")
        with pytest.raises(BackendError):
            p.run({"x": x})
        p.refit(path)
        assert_close(p.run({"x": x})["y"], reference(path, {"x": x})["y"])


def _other_arch(cc: str) -> str:
    return "8.6" if cc != "8.6" else "7.5"


def test_jit_paths_and_runtime_cache(tmp_path: Path, backend: NvrtcBackend) -> None:
    from rtxpack.backends.nvrtc import compile as nv_compile
    from rtxpack.backends.nvrtc.cache import CacheKey, RuntimeCache

    path, _ = _models(tmp_path)["inception_block"]
    x = rand(2, 32, 16, 16)
    ref = reference(path, {"x": x})["y"]
    other = _other_arch(local_cc())
    # no cubin for this GPU, no PTX: NVRTC compiles for the exact arch
    plan = backend.build(path, compute_capabilities=[other], ptx=False)
    with backend.load(plan) as p:
        assert p.kernel_sources["nvrtc-jit"] > 0, p.provenance
        assert_close(p.run({"x": x})["y"], ref)
        cache = p.runtime_cache()
    calls = nv_compile.NVRTC_CALLS
    with backend.load(plan, runtime_cache=cache) as p:
        assert p.kernel_sources["runtime-cache"] > 0, p.provenance
        assert_close(p.run({"x": x})["y"], ref)
    assert nv_compile.NVRTC_CALLS == calls, "a warm runtime cache must need no NVRTC call"
    # corrupt / foreign caches are ignored, never trusted
    bad = bytearray(cache)
    bad[len(bad) // 2] ^= 0xFF
    with backend.load(plan, runtime_cache=bytes(bad)) as p:
        assert p.cache_status.startswith("ignored"), p.cache_status
        assert p.kernel_sources["nvrtc-jit"] > 0
    foreign = RuntimeCache.parse(cache)
    moved = RuntimeCache({CacheKey(k.module, "sm_10", k.compiler, k.compiler_version, k.driver): v
                          for k, v in foreign.entries.items()})
    moved.entries.update({CacheKey(k.module, k.arch, k.compiler, "0.1", k.driver): v for k, v in foreign.entries.items()})
    with backend.load(plan, runtime_cache=moved.serialize()) as p:
        assert p.kernel_sources["runtime-cache"] == 0 and p.kernel_sources["nvrtc-jit"] > 0
    # PTX through the driver when the NVRTC that made it is not newer than the driver
    plan_ptx = backend.build(path, compute_capabilities=[other], ptx=True)
    with backend.load(plan_ptx) as p:
        drv = (p.driver_version // 1000, p.driver_version % 1000 // 10)
        made_by = tuple(backend.inspect(plan_ptx).details["nvrtc_version"].split("."))
        ptx_arch_ok = max(int(float(other) * 10), 0) <= p.sm
        if tuple(map(int, made_by)) <= drv and ptx_arch_ok:
            assert p.kernel_sources["ptx-jit"] > 0, p.provenance
        else:
            assert p.kernel_sources["nvrtc-jit"] > 0 and "not attempted" in p.provenance
        assert_close(p.run({"x": x})["y"], ref)
        c2 = p.runtime_cache()
    with backend.load(plan_ptx, runtime_cache=c2) as p:
        assert p.kernel_sources["runtime-cache"] > 0


@pytest.mark.skipif(not os.environ.get("NVRTC_FOREIGN_PLANS"),
                    reason="set NVRTC_FOREIGN_PLANS to a folder of plans built by another NVRTC")
def test_plans_built_by_another_nvrtc(backend: NvrtcBackend) -> None:
    """Plans AOT-built elsewhere (e.g. CI's NVRTC 13.5) load on this driver: cubin or fallback."""
    folder = Path(os.environ["NVRTC_FOREIGN_PLANS"])
    plans = sorted(folder.glob("*.plan"))
    assert plans
    for f in plans:
        name = f.stem.split("__")[0]
        onnx_path = folder / f"{name}.onnx"
        x = np.load(folder / f"{name}.x.npy")
        with backend.load(f.read_bytes()) as p:
            print(f.name, p.provenance, p.kernel_sources)
            assert_close(p.run({"x": x})["y"], reference(onnx_path, {"x": x})["y"])


def test_warm_runtime_cache_never_loads_nvrtc(tmp_path: Path, backend: NvrtcBackend) -> None:
    """In a fresh process, a plan with no cubin for this GPU + a warm cache: NVRTC is not even imported."""
    import json
    import subprocess
    import sys

    path, _ = _models(tmp_path)["small_cnn"]
    plan = backend.build(path, compute_capabilities=[_other_arch(local_cc())], ptx=False)
    with backend.load(plan) as p:
        (tmp_path / "cache.bin").write_bytes(p.runtime_cache())
    (tmp_path / "p.plan").write_bytes(plan)
    code = (
        "import json, sys, numpy as np\n"
        "from rtxpack.backends.nvrtc import NvrtcBackend\n"
        f"d = {str(tmp_path)!r}\n"
        "p = NvrtcBackend().load(open(d + '/p.plan', 'rb').read(), runtime_cache=open(d + '/cache.bin', 'rb').read())\n"
        "p.run({'x': np.zeros((1, 3, 32, 32), np.float32)})\n"
        "print(json.dumps({'sources': p.kernel_sources, 'nvrtc': 'cuda.bindings.nvrtc' in sys.modules}))\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["sources"]["runtime-cache"] > 0 and res["sources"]["nvrtc-jit"] == 0
    assert res["nvrtc"] is False, "a warm runtime cache must not need NVRTC"
