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
