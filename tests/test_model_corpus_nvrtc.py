"""The exported-model corpus (tests/models/: torch.onnx exports of torchvision, transformers and
hand-written UNet/speech modules, plus the zoo classics) through the nvrtc backend without a GPU.

* every model imports, plans at its profile's min, opt and max shapes and generates its kernels
  (no exception of any kind; weights re-materialized as zeros: planning never reads their values);
* every kernel specialization any corpus model needs compiles with NVRTC (one program, sm_75 and sm_90);
* a few small models build end to end (``NvrtcBackend.build``) and run on the CPU CUDA emulator,
  matching onnxruntime within 1e-3 of the output's scale.

The same models run on a real GPU with ``scripts/check_corpus.py --run gpu`` (tests/GPU_RESULTS.md).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

import model_corpus as mc
from rtxpack.backends.nvrtc import NvrtcBackend
from rtxpack.backends.nvrtc.compile import compile_program, nvrtc_version
from rtxpack.backends.nvrtc.kernels import KernelSpec, program_source
from rtxpack.backends.nvrtc.lowering import kernels_for
from rtxpack.backends.nvrtc.onnx_import import import_onnx
from rtxpack.backends.nvrtc.schedule import concrete_input_shapes, plan_shapes
from rtxpack.backends.nvrtc.weights import device_weight_names

MODELS = mc.list_models()
#: small enough for the CPU emulator in CI: (model, named dims)
EMULATED = [("bert-dynamo", {"seq": 12}), ("gpt2-ts", {"seq": 9}), ("unet_tiny-dynamo", {"height": 32, "width": 48}),
            ("hf_vit-dynamo", {})]


@lru_cache(maxsize=None)
def needed_specs(name: str) -> frozenset[KernelSpec]:
    """Import + plan at min/opt/max; every kernel the plan would carry (raises what the build would)."""
    graph, weights = import_onnx(mc.materialize_model(name, zeros=True))
    prof = mc.profiles(name)
    checks = [concrete_input_shapes(graph, {k: v[f] for k, v in prof.items()}) for f in ("min", "opt", "max")]
    resident = set(device_weight_names(graph))
    plans = [plan_shapes(graph, shapes, weights, resident) for shapes in checks]
    wshapes = {k: v for sp in plans for k, v in sp.shapes.items()}
    wshapes.update({k: v.shape for k, v in weights.items()})
    return frozenset({s for nd in graph["nodes"] if nd["where"] == "device" for s in kernels_for(nd, wshapes)}
                     | {ln.spec for sp in plans for ln in sp.launches})


@pytest.mark.parametrize("name", MODELS)
def test_model_imports_plans_and_generates_kernels(name: str) -> None:
    specs = needed_specs(name)
    assert specs and len(program_source(sorted(specs, key=lambda s: s.key()))) > 1000


@pytest.mark.skipif(nvrtc_version() is None, reason="NVRTC (pip install rtxpack[gpu]) is not installed")
def test_every_kernel_the_corpus_needs_compiles_with_nvrtc() -> None:
    union = sorted(set().union(*(needed_specs(n) for n in MODELS)), key=lambda s: s.key())
    assert len(union) > 40
    source = program_source(union)
    for sm in (75, 90):
        assert compile_program(source, sm)[:4] == b"\x7fELF"


@pytest.mark.skipif(nvrtc_version() is None, reason="NVRTC (pip install rtxpack[gpu]) is not installed")
@pytest.mark.parametrize("name,dims", EMULATED, ids=[n for n, _ in EMULATED])
def test_small_models_build_and_match_onnxruntime_on_the_emulator(name: str, dims: dict, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from cudaemu import EmuLoadedPlan

    path = mc.materialize(name, tmp_path, seed=0)
    plan = NvrtcBackend().build(path, compute_capabilities=["8.6"], ptx=False, profiles=mc.profiles(name))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with EmuLoadedPlan(plan) as p:
        for batch in (1, 2):
            feeds = mc.typical_inputs(name, batch=batch, dims=dims, seed=3)
            ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
            got = p.run(feeds)
            for k, r in ref.items():
                scale = max(float(np.max(np.abs(r))), 1e-6)
                err = float(np.max(np.abs(got[k].astype(np.float64) - r.astype(np.float64)))) / scale
                assert err <= 1e-3, (name, batch, k, err)
