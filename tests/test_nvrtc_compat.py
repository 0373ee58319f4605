"""Plans built by an earlier rtxpack keep loading after the nvrtc plan format moves on.

``tests/data/nvrtc-format-1.0.0/`` holds two plans built (for CC 8.6, cubin only) by the nvrtc backend
at commit 1b8e132, format 1.0.0, before typed tensors and the exported-model operators (format 1.1.0),
with the ONNX models they were built from. Today's runtime must load them and give the reference's
answer; the version rule must let a 1.1.0 runtime read them and make a 1.0.0 runtime pass over
1.1.0 plans rather than fail on them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from cudaemu import EmuLoadedPlan, compiler
from nvrtc_helpers import assert_close, rand, reference
from rtxpack.backends.nvrtc import NVRTC_BACKEND_VERSION, NvrtcBackend
from rtxpack.core import registry

OLD = Path(__file__).parent / "data" / "nvrtc-format-1.0.0"
MODELS = {"small_cnn": [3, 32, 32], "transformer_block": [16, 64]}


def test_version_rule_between_formats() -> None:
    nvrtc = registry.get("nvrtc")
    assert NVRTC_BACKEND_VERSION == registry.NVRTC_FORMAT == "1.2.0"
    for old in ("1.0.0", "1.1.0"):
        assert nvrtc.version_compatible(old, NVRTC_BACKEND_VERSION) is None
        why = nvrtc.version_compatible(NVRTC_BACKEND_VERSION, old)
        assert why and "not readable" in why


@pytest.mark.parametrize("name", sorted(MODELS))
def test_old_plan_header_reads(name: str) -> None:
    info = NvrtcBackend().inspect((OLD / f"{name}.plan").read_bytes())
    assert info.backend_version == "1.0.0" and info.compute_capabilities == ("8.6",)


@pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_old_plan_runs_in_todays_runtime(name: str) -> None:
    onnx_path = OLD / f"{name}.onnx"
    with EmuLoadedPlan((OLD / f"{name}.plan").read_bytes()) as p:
        for batch in (1, 3):
            x = rand(batch, *MODELS[name])
            ref = reference(onnx_path, {"x": x})
            got = p.run({"x": x})
            for k, r in ref.items():
                assert_close(got[k], r)


FP16_OLD = Path(__file__).parent / "data" / "nvrtc-fp16-1.2.0"


@pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")
def test_fp16_plan_from_before_k_slices_runs_in_todays_runtime() -> None:
    """``tests/data/nvrtc-fp16-1.2.0/small_cnn.plan``: an fp16 plan built (CC 8.6, without NVRTC: the
    emulator runs its source) at commit 4aaf228, before tensor-core tiles had a k-slice count, so its
    conv_tc / gemm_tc kernels have one template argument fewer. Today's planner must take its tiles as
    they are (block size, tuning candidates) and every candidate must give the reference's answer."""
    from test_nvrtc_fp16 import FP16_TOL, _prefer, rel_err

    onnx_path = FP16_OLD / "small_cnn.onnx"
    plan = (FP16_OLD / "small_cnn.plan").read_bytes()
    x = rand(2, 3, 32, 32)
    ref = reference(onnx_path, {"x": x})
    with EmuLoadedPlan(plan, options={"tune_timer": _prefer(0)}) as p0:
        p0.run({"x": x})
        state = p0._state({"x": x.shape}).plan
        most = max(len(t.labels) for t in state.tunable)
        assert {len(ln.spec.targs) for ln in state.launches if ln.spec.family == "conv_tc"} == {6}
    for k in range(most):
        with EmuLoadedPlan(plan, options={"tune_timer": _prefer(k)}) as p:
            out = p.run({"x": x})
        for key, r in ref.items():
            assert rel_err(out[key], r) <= FP16_TOL, (k, key)
