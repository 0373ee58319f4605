"""fp16 nvrtc plans (tensor-core kernels) and the on-device tuner whose choices live in the runtime cache.

On the CPU (CI): the CUDA emulator runs the very tensor-core kernels (mma.sync / ldmatrix as warp
exchanges): every whole model of test_nvrtc_gpu.py within fp16 tolerance of the fp32 reference,
every tuning candidate of every layer (each tile, split-K or not) with the same answer, tuned
choices round-tripping through the runtime cache, and a cache made on another GPU never selecting
a kernel. On a GPU (marker ``gpu``): the same models with real timing-based tuning, the second
load taking its choices from the runtime cache without tuning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cudaemu import EmuLoadedPlan, build_plan, compiler
from nvrtc_helpers import local_cc, rand, reference
from rtxpack.backends.nvrtc import NvrtcBackend
from rtxpack.backends.nvrtc.kernels_tc import tc_tiles
from rtxpack.backends.nvrtc.plan import read_plan
from rtxpack.core.errors import UnsupportedModel
from test_nvrtc_gpu import _models

#: fp16 storage of the tensor-core operands, fp32 accumulation: error bound relative to the output's scale
FP16_TOL = 1e-2
FEATURES = {"mlp": [64], "resnet_small": [3, 32, 32], "small_cnn": [3, 32, 32], "inception_block": [32, 16, 16],
            "transformer_block": [16, 64]}
emu = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(float(np.abs(ref).max()), 1e-6))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tuple[Path, bytes]]:
    tmp = tmp_path_factory.mktemp("fp16")
    return {name: (path, build_plan(path, precision="fp16")) for name, (path, _) in _models(tmp).items()}


def _prefer(k: int):
    """A tune_timer that makes candidate ``k`` of every layer the fastest (wrapping around)."""
    return lambda layer, label: 0.0 if label == layer.labels[k % len(layer.labels)] else 1.0


def _every_candidate(plan: bytes, feeds: dict, ref: dict, case: str, **emu) -> set[str]:
    """Run ``plan`` once per tuning candidate (candidate k of every layer forced), each within fp16 tolerance
    of ``ref`` and the same answer twice; the launch labels seen."""
    shapes = {k: v.shape for k, v in feeds.items()}
    with EmuLoadedPlan(plan, options={"tune_timer": _prefer(0)}, **emu) as p0:
        p0.run(feeds)
        most = max(len(t.labels) for t in p0._state(shapes).plan.tunable)
    seen: set[str] = set()
    for k in range(most):
        with EmuLoadedPlan(plan, options={"tune_timer": _prefer(k)}, **emu) as p:
            out = p.run(feeds)
            out2 = p.run(feeds)
            seen |= set(p.launch_counts)
        for key, r in ref.items():
            assert rel_err(out[key], r) <= FP16_TOL, (case, k, key)
            assert np.array_equal(out[key], out2[key]), (case, k, key)
    return seen


@emu
@pytest.mark.parametrize("name", list(FEATURES))
def test_fp16_model_within_tolerance_on_the_emulator(models, name: str) -> None:
    path, plan = models[name]
    _, graph, index, _, _ = read_plan(plan)
    assert graph["precision"] == "fp16" and NvrtcBackend().inspect(plan).details["precision"] == "fp16"
    assert {k["family"] for k in index["kernels"]} & {"conv_tc", "gemm_tc"}
    with EmuLoadedPlan(plan) as p:
        for batch in (1, 3):
            x = rand(batch, *FEATURES[name])
            for k, r in reference(path, {"x": x}).items():
                assert rel_err(p.run({"x": x})[k], r) <= FP16_TOL, (name, batch, k)
        assert any(lab.startswith(("conv_tc<", "gemm_tc<")) for lab in p.launch_counts), p.launch_counts


@emu
def test_every_tuning_candidate_gives_the_same_answer(models) -> None:
    """Forcing each candidate in turn (through the tuner, as a GPU's timings would) runs every tile
    and split-K choice of every layer; all agree with the reference, and every tensor-core tile runs
    for the im2col and the 1x1 convolution path and for GEMM."""
    seen: set[str] = set()
    for name in ("resnet_small", "transformer_block", "inception_block"):
        path, plan = models[name]
        x = rand(2, *FEATURES[name])
        ref = reference(path, {"x": x})
        most = 0
        with EmuLoadedPlan(plan, options={"tune_timer": _prefer(0)}) as p0:
            p0.run({"x": x})
            most = max(len(t.labels) for t in p0._state({"x": x.shape}).plan.tunable)
        for k in range(most):
            with EmuLoadedPlan(plan, options={"tune_timer": _prefer(k)}) as p:
                out = p.run({"x": x})
                assert p.tuning["source"] == "tuned on this GPU"
                seen |= set(p.launch_counts)
            for key, r in ref.items():
                assert rel_err(out[key], r) <= FP16_TOL, (name, k, key)
    for k1 in (0, 1):
        for tile in tc_tiles("conv_tc", (k1,)).values():
            head = "conv_tc<" + ",".join(map(str, tile + (k1,))) + ","     # then the activation
            assert any(s.startswith(head) for s in seen), head
    for tile in tc_tiles("gemm_tc", (0, 1)).values():
        head = "gemm_tc<" + ",".join(map(str, tile + (0, 1))) + ","
        assert any(s.startswith(head) for s in seen), head
    assert any(s.endswith("/splitK") and s.startswith("conv_tc<") for s in seen)    # GEMM's: the next test


@emu
def test_every_fp16_gemm_candidate_gives_the_same_answer(tmp_path: Path) -> None:
    """Tensor-core GEMMs long enough in k to split: forcing each (tile, split-K) candidate runs every tile
    with and without split-K (the reducer runs the epilogue: bias, alpha/beta) for a weight and for two
    activations, on an 8-SM GPU so that every tile is offered a split; all within fp16 tolerance."""
    from nvrtc_helpers import op_model

    a = rand(130, 1100)          # k deep enough to split for every tile (8 k steps of 64 per split)
    cases = {
        "weight": (op_model(tmp_path / "mm.onnx", "MatMul", {"a": a}, extra_inputs=["b"], inits={"b": rand(1100, 90)}),
                   {"a": a}),
        "gemm_bias": (op_model(tmp_path / "gt.onnx", "Gemm", {"a": rand(45, 520)}, extra_inputs=["b", "c"],
                               inits={"b": rand(29, 520), "c": rand(29)}, transB=1, alpha=0.5, beta=2.0),
                      {"a": rand(45, 520)}),
        "activations": (op_model(tmp_path / "aa.onnx", "MatMul", {"a": a, "b": rand(1100, 70)}),
                        {"a": a, "b": rand(1100, 70)}),
    }
    seen: set[str] = set()
    for name, (path, feeds) in cases.items():
        seen |= _every_candidate(build_plan(path, precision="fp16"), feeds, reference(path, feeds), name, num_sms=8)
    for halves in ((0, 1), (0, 0)):        # a weight (fp16 in shared memory), two activations (fp32)
        for tile in tc_tiles("gemm_tc", halves).values():
            head = "gemm_tc<" + ",".join(map(str, tile + halves + (0,))) + ">"     # no activation
            assert any(s.startswith(head) and s.endswith("/splitK") for s in seen), head
    assert any(s.startswith("gemm_splitk_reduce") for s in seen)


@emu
def test_hopper_wgmma_gemms_every_candidate(tmp_path: Path, models) -> None:
    """gemm_wg (Hopper's warpgroup MMA, B from a 128-byte-swizzled shared tile): planned as on an sm_90a GPU,
    every tile with and without split-K on weights in both layouts, k not a multiple of 8 (the gathered
    B path), an odd number of columns (the element-wise epilogue), a batched MatMul sharing its weight,
    and a transformer block (bias, residual, GELU in the epilogue): all within fp16 tolerance, the same
    answer run after run. The heuristic takes a gemm_wg tile there; on any other GPU none is planned."""
    from nvrtc_helpers import op_model
    from rtxpack.backends.nvrtc.kernels_tc import WG_TILES

    a = rand(130, 1100)
    cases = {
        "weight": (op_model(tmp_path / "mm.onnx", "MatMul", {"a": a}, extra_inputs=["b"], inits={"b": rand(1100, 90)}),
                   {"a": a}),
        "gemm_bias": (op_model(tmp_path / "gt.onnx", "Gemm", {"a": rand(45, 520)}, extra_inputs=["b", "c"],
                               inits={"b": rand(72, 520), "c": rand(72)}, transB=1, alpha=0.5, beta=2.0),
                      {"a": rand(45, 520)}),
        "k_odd": (op_model(tmp_path / "ko.onnx", "MatMul", {"a": rand(70, 100)}, extra_inputs=["b"],
                           inits={"b": rand(100, 64)}), {"a": rand(70, 100)}),
        "batched_odd_n": (op_model(tmp_path / "bn.onnx", "MatMul", {"a": rand(3, 37, 136)}, extra_inputs=["b"],
                                   inits={"b": rand(136, 29)}), {"a": rand(3, 37, 136)}),
        "transformer": (models["transformer_block"][0], {"x": rand(2, *FEATURES["transformer_block"])}),
        # no C: beta plays no part (an outside review found beta=inf times the missing bias giving NaN)
        "gemm_no_c": (op_model(tmp_path / "nc.onnx", "Gemm", {"a": rand(40, 64)}, extra_inputs=["b"],
                               inits={"b": rand(64, 48)}, beta=float("inf")), {"a": rand(40, 64)}),
    }
    seen: set[str] = set()
    for name, (path, feeds) in cases.items():
        plan = models["transformer_block"][1] if name == "transformer" else build_plan(path, precision="fp16")
        ref = reference(path, feeds)
        with EmuLoadedPlan(plan, num_sms=8) as p:          # not Hopper: never planned
            p.run(feeds)
            assert not any(lab.startswith("gemm_wg<") for lab in p.launch_counts), p.launch_counts
            others = sum(n for lab, n in p.launch_counts.items() if not lab.startswith(("gemm_tc<", "gemm_splitk")))
        with EmuLoadedPlan(plan, num_sms=8, wgmma=True) as p:   # the heuristic takes them on Hopper
            out = p.run(feeds)
            assert any(lab.startswith("gemm_wg<") for lab in p.launch_counts), p.launch_counts
            # the same fusions: a residual add still runs in the GEMM's epilogue, not as a launch of its own
            assert sum(n for lab, n in p.launch_counts.items()
                       if not lab.startswith(("gemm_wg<", "gemm_splitk"))) == others, p.launch_counts
        for key, r in ref.items():
            assert rel_err(out[key], r) <= FP16_TOL, (name, key)
        seen |= _every_candidate(plan, feeds, ref, name, num_sms=8, wgmma=True)
    for tile in WG_TILES.values():
        head = "gemm_wg<" + ",".join(map(str, tile + (0, 1, 0))) + ">"       # fp32 A, fp16 B, no activation
        assert any(s.startswith(head) and s.endswith("/splitK") for s in seen), head
        assert any(s.startswith(head) and not s.endswith("/splitK") for s in seen), head
    assert any(s.startswith("gemm_wg<") and not s.endswith(",0>") for s in seen)   # an activation (GELU)


@emu
def test_tuned_choices_ship_in_the_runtime_cache(models) -> None:
    path, plan = models["resnet_small"]
    x = rand(1, 3, 32, 32)
    calls: list[str] = []

    def timer(layer, label):
        calls.append(label)
        return 0.0 if label == layer.labels[-1] else 1.0

    with EmuLoadedPlan(plan, options={"tune_timer": timer, "emu_gpu": "GPU A"}) as p:
        y = p.run({"x": x})["y"]
        tuned = p.tuning
        cache = p.runtime_cache()
        planned = [ln.spec for ln in p._state({"x": x.shape}).plan.launches]
    assert tuned["source"] == "tuned on this GPU" and tuned["timed"] >= 1 and calls
    assert tuned["distinct"] <= tuned["layers"]          # same-shaped layers are timed once
    # the next start on the same GPU: choices from the cache, no timing at all
    calls.clear()
    with EmuLoadedPlan(plan, runtime_cache=cache, options={"tune_timer": timer, "emu_gpu": "GPU A"}) as p:
        np.testing.assert_array_equal(p.run({"x": x})["y"], y)
        assert p.tuning["source"] == "runtime cache" and not calls
        assert [ln.spec for ln in p._state({"x": x.shape}).plan.launches] == planned
    # another GPU never selects a kernel from that cache: it tunes for itself
    with EmuLoadedPlan(plan, runtime_cache=cache, options={"tune_timer": timer, "emu_gpu": "GPU B"}) as p:
        p.run({"x": x})
        assert p.tuning["source"] == "tuned on this GPU" and calls
    # no time for tuning: the heuristic's kernels, said so
    with EmuLoadedPlan(plan, options={"tune_timer": timer, "tune_budget_s": 0}) as p:
        p.run({"x": x})
        assert p.tuning["source"].startswith("heuristic")


@emu
def test_a_tampered_choice_falls_back_to_the_heuristic(models) -> None:
    from rtxpack.backends.nvrtc.cache import RuntimeCache
    from rtxpack.backends.nvrtc.tuning import cache_key, shape_key

    path, plan = models["small_cnn"]
    _, _, index, _, _ = read_plan(plan)
    x = rand(1, 3, 32, 32)
    with EmuLoadedPlan(plan) as p:
        heur = [ln.spec for ln in p._state({"x": x.shape}).plan.launches]
        layers = [t.node["name"] for t in p._state({"x": x.shape}).plan.tunable]
    cache = RuntimeCache()
    key = cache_key(index["module"], 0, "CPU emulator", 0)
    skey = shape_key({"x": x.shape}, ["x"])
    cache.put(key, ('{"shapes": {"%s": {%s}}}' % (skey, ", ".join(f'"{n}": "t999x1/s99"' for n in layers))).encode())
    with EmuLoadedPlan(plan, runtime_cache=cache.serialize()) as p:
        out = p.run({"x": x})["y"]
        assert p.tuning["source"] == "runtime cache"
        assert [ln.spec for ln in p._state({"x": x.shape}).plan.launches] == heur
    assert rel_err(out, reference(path, {"x": x})["y"]) <= FP16_TOL
    # garbage instead of JSON: ignored, tuned again
    cache.put(key, b"\xff not json")
    with EmuLoadedPlan(plan, runtime_cache=cache.serialize(), options={"tune_timer": _prefer(1)}) as p:
        p.run({"x": x})
        assert p.tuning["source"] == "tuned on this GPU"


@emu
@pytest.mark.parametrize("bad", ["abc", "2", -1, float("nan"), float("inf"), True, [2]])
def test_a_bad_tuning_budget_is_one_clear_error(models, bad) -> None:
    from rtxpack.core.errors import BackendError

    with EmuLoadedPlan(models["small_cnn"][1], options={"tune_timer": _prefer(0), "tune_budget_s": bad}) as p:
        with pytest.raises(BackendError, match="tune_budget_s") as e:
            p.run({"x": rand(1, 3, 32, 32)})
    assert "seconds" in e.value.fix


@emu
def test_a_budget_cut_tuning_is_finished_by_a_later_start(models) -> None:
    """A start with no time to tune keeps the heuristic's kernels but does not freeze them: the next
    start with time tunes the layers it did not reach (and the one after that uses the cache)."""
    _, plan = models["resnet_small"]
    x = rand(1, 3, 32, 32)
    last = _prefer(0)     # the 128x64 tile: not what the heuristic picks for these small layers
    with EmuLoadedPlan(plan, options={"tune_timer": last, "tune_budget_s": 1e-12}) as p:
        p.run({"x": x})
        assert p.tuning["source"] == "heuristic (tuning budget spent)" and p.tuning["timed"] == 0, p.tuning
        cache = p.runtime_cache()
        heur = [ln.spec for ln in p._state({"x": x.shape}).plan.launches]
    with EmuLoadedPlan(plan, runtime_cache=cache, options={"tune_timer": last}) as p:
        p.run({"x": x})
        assert p.tuning["source"].startswith("tuned on this GPU") and p.tuning["timed"] >= 1, p.tuning
        tuned = [ln.spec for ln in p._state({"x": x.shape}).plan.launches]
        cache = p.runtime_cache()
    assert tuned != heur
    with EmuLoadedPlan(plan, runtime_cache=cache, options={"tune_timer": last}) as p:
        p.run({"x": x})
        assert p.tuning["source"] == "runtime cache"


def test_a_forged_cache_with_a_valid_checksum_is_ignored_not_raised() -> None:
    import hashlib
    import struct

    from rtxpack.backends.nvrtc.cache import MAGIC, VERSION, RuntimeCache

    def forged(key: bytes) -> bytes:
        blob = b"x"
        out = MAGIC + struct.pack("<II", VERSION, 1) + struct.pack("<I", len(key)) + key + \
            struct.pack("<Q", len(blob)) + blob + hashlib.sha256(blob).digest()
        return out + hashlib.sha256(out).digest()

    for key in (b"[1, 2]", b'{"module": "m"}', b'{"module": "m", "arch": "sm_90", "compiler": "c", '
                b'"compiler_version": "1", "driver": [1]}', b"[" * 100000, b'"text"'):
        c = RuntimeCache.parse(forged(key))
        assert not c.entries and c.status.startswith("ignored"), (key[:40], c.status)


def test_a_float_compute_capability_reads_as_written() -> None:
    from rtxpack.backends.nvrtc.compile import cc_to_sm
    from rtxpack.core.errors import ConfigError

    assert cc_to_sm(9.0) == 90 and cc_to_sm(8.6) == 86 and cc_to_sm(12.0) == 120
    with pytest.raises(ConfigError, match="compute capability"):
        cc_to_sm(None)


def test_fp16_needs_tensor_cores_and_names_the_fix(models) -> None:
    path, _ = models["small_cnn"]
    with pytest.raises(UnsupportedModel, match="7.5 and newer") as e:
        NvrtcBackend().build(path, compute_capabilities=["6.1", "8.6"], precision="fp16")
    assert "fp32" in e.value.fix
    with pytest.raises(UnsupportedModel, match="fp32 and fp16"):
        NvrtcBackend().build(path, precision="int8")


def test_fp16_plan_stores_tensor_core_weights_in_half(models) -> None:
    """Conv and Linear weights are fp16 in the plan's device section (about half of fp32's bytes)."""
    path, plan16 = models["resnet_small"]
    plan32 = build_plan(path)
    assert NvrtcBackend().inspect(plan32).details["precision"] == "fp32"
    dev = {r["name"]: r["nbytes"] for r in read_plan(plan16)[1]["device_tensors"]}
    dev32 = {r["name"]: r["nbytes"] for r in read_plan(plan32)[1]["device_tensors"]}
    half = [n for n in dev if n.endswith("#h")]
    assert half and all(dev[n] * 2 == dev32[n[:-2]] for n in half)
    assert sum(dev.values()) < 0.6 * sum(dev32.values())


@emu
@pytest.mark.parametrize("name", ["small_cnn", "transformer_block"])
def test_an_fp16_onnx_builds_as_is(tmp_path: Path, models, name: str) -> None:
    """fp16 initializers, inputs and outputs (a model converted to float16): float16 in and out, fp32
    inside (fp16 plans: fp16 tensor-core operands), within fp16 tolerance of the fp32 model."""
    from rtxpack.demo.models import fp16_variant

    src = models[name][0]
    half = fp16_variant(src, tmp_path / f"{name}16.onnx")
    x = rand(2, *FEATURES[name]).astype(np.float16)
    ref = reference(src, {"x": x.astype(np.float32)})
    for precision in ("fp32", "fp16"):
        with EmuLoadedPlan(build_plan(half, precision=precision)) as p:
            out = p.run({"x": x})
        for k, r in ref.items():
            assert out[k].dtype == np.float16
            assert rel_err(out[k].astype(np.float32), r) <= FP16_TOL, (precision, k)


@emu
def test_stripped_fp16_plan_refits_to_the_same_weights(models) -> None:
    path, full = models["resnet_small"]
    stripped = build_plan(path, precision="fp16", strip_weights=True)
    assert NvrtcBackend().inspect(stripped).stripped and "DWGT" not in NvrtcBackend().inspect(stripped).details["sections"]
    x = rand(2, 3, 32, 32)
    with EmuLoadedPlan(full) as a, EmuLoadedPlan(stripped) as b:
        b.refit(path)
        np.testing.assert_array_equal(a.run({"x": x})["y"], b.run({"x": x})["y"])


def test_inspect_says_the_precision_and_checks_it_against_the_manifest(tmp_path: Path, models) -> None:
    from types import SimpleNamespace

    from rtxpack.backends.inspect import cross_check, inspect_file

    path = tmp_path / "net.plan"
    path.write_bytes(models["mlp"][1])
    info = inspect_file(path)
    assert info["precision"] == "fp16"
    art = SimpleNamespace(backend="nvrtc", backend_version=info["backend_version"], ptx=info["ptx"],
                          compute_capabilities=info["compute_capabilities"], size=info["size"], precision="fp32")
    assert cross_check(info, art) == ["precision: plan is fp16, manifest says fp32"]
    art.precision = "fp16"
    assert cross_check(info, art) == []


def test_the_resolver_knows_fp16_needs_turing() -> None:
    from rtxpack.core import registry

    nvrtc = registry.get("nvrtc")
    assert "fp16" in nvrtc.precisions
    assert nvrtc.precision_problem("fp16", (8, 6)) is None and nvrtc.precision_problem("fp32", (6, 1)) is None
    assert "7.5" in nvrtc.precision_problem("fp16", (6, 1))
    assert "7.5" in nvrtc.plan_problem(["6.1", "8.6"], "fp16", False, [], "t")
    assert nvrtc.plan_problem(["7.5", "8.6"], "fp16", False, [], "t") is None


# ---------------------------------------------------------------- on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(local_cc() is None, reason="needs an NVIDIA GPU with a driver")
@pytest.mark.parametrize("name", list(FEATURES))
def test_fp16_on_the_gpu_tunes_then_uses_the_cache(tmp_path: Path, name: str) -> None:
    path, _ = _models(tmp_path)[name]
    be = NvrtcBackend()
    plan = be.build(path, compute_capabilities=[local_cc()], precision="fp16")
    x = rand(2, *FEATURES[name])
    ref = reference(path, {"x": x})
    with be.load(plan) as p:
        out = p.run({"x": x})
        assert p.tuning["source"] == "tuned on this GPU" and p.tuning["seconds"] <= 2.5, p.tuning
        cache = p.runtime_cache()
        for _ in range(2):                          # CUDA graph replays give the same answer
            np.testing.assert_array_equal(p.run({"x": x})[next(iter(ref))], out[next(iter(ref))])
    for k, r in ref.items():
        assert rel_err(out[k], r) <= FP16_TOL, (k, rel_err(out[k], r))
    with be.load(plan, runtime_cache=cache) as p:
        again = p.run({"x": x})
        assert p.tuning["source"] == "runtime cache", p.tuning
    for k in ref:
        np.testing.assert_array_equal(again[k], out[k])


_CHILD = r'''
import json, sys
import numpy as np
import rtxpack
from rtxpack.demo import models as examples
a = json.loads(sys.argv[1])
s = rtxpack.load("net", repo=a["repo"], backend="nvrtc", precision="fp16")
x = np.random.default_rng(0).standard_normal(a["shape"]).astype(np.float32)
y = s.run({s.input_names[0]: x})
ref = examples.reference_run(a["onnx"], {s.input_names[0]: x})
err = max(float(np.abs(y[k] - ref[k]).max()) / max(1e-6, float(np.abs(ref[k]).max())) for k in ref)
s.close()
p = s.provenance.to_dict()
print("RESULT " + json.dumps({"err": err, "steps": p["steps"], "plan": p["plan"], "runtime_cache": p["runtime_cache"]}))
'''


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(local_cc() is None, reason="needs an NVIDIA GPU with a driver")
def test_warm_on_a_farm_gpu_ships_the_tuned_choices(tmp_path: Path) -> None:
    """precision = "fp16" in rtxpack.toml -> rtxpack build (no GPU) -> rtxpack warm (tunes on this GPU) ->
    a fresh app process loads with precision="fp16": its kernels come from the shipped choices, no tuning."""
    import json
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import load_flow
    from rtxpack.demo import models as examples

    onnx = examples.resnet(tmp_path / "models" / "net.onnx", layers=(1, 2, 1, 1), width=16, size=32, classes=10)
    cc = local_cc()
    (tmp_path / "rtxpack.toml").write_text(f'''[project]
name = "fp16"
version = "1.0.0"
[[models]]
name = "net"
onnx = "{onnx}"
precision = "fp16"
warmup = [{{x = [1, 3, 32, 32]}}]
[[targets]]
name = "gpu"
backend = "nvrtc"
compute_capabilities = ["{cc}"]
''')
    repo = tmp_path / "repo"
    built = load_flow.rtxpack_cli(["build", str(tmp_path / "rtxpack.toml"), "--repo", str(repo)],
                                  load_flow.env_for(tmp_path / "farm", CUDA_VISIBLE_DEVICES=""))
    assert built["failed"] == 0 and built["built"] == 1, built
    warmed = load_flow.rtxpack_cli(["warm", str(tmp_path / "rtxpack.toml"), "--repo", str(repo)],
                                   load_flow.env_for(tmp_path / "farm"))
    assert warmed["warmed"] == 1, warmed
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({"repo": str(repo), "onnx": str(onnx),
                                                                 "shape": [1, 3, 32, 32]})],
                       capture_output=True, text=True, env=load_flow.env_for(tmp_path / "app"), timeout=300)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(line[7:])
    tuning = next(st for st in res["steps"] if st["step"] == "tuning")
    assert tuning["source"] == "runtime cache", tuning
    assert res["runtime_cache"].startswith("shipped"), res["runtime_cache"]
    assert res["err"] <= FP16_TOL, res["err"]


def test_the_heuristic_never_picks_a_k_slice_tile() -> None:
    """Untuned layers (tuning off or over budget) keep a one-slice tile: k-slice tiles (512 threads on a
    32 x 32 tile) are for the tuner to pick where they measure faster, not a default for tiny layers."""
    from rtxpack.backends.nvrtc.lowering import _tile_candidates

    for family, suffix in (("gemm_tc", (0, 1)), ("gemm_tc", (0, 0)), ("conv_tc", (0,))):
        tiles = tc_tiles(family, suffix)
        assert any(t[5] > 1 for t in tiles.values())
        for rows, cols, k in ((5, 17, 7), (1, 1, 1), (197, 768, 7), (197, 2304, 768), (64, 49, 4608), (4096, 4096, 4096)):
            cands, (label, _) = _tile_candidates(rows, cols, k, 1, 132, True, tiles)
            assert tiles[label][5] == 1, (family, rows, cols, k, label)
            assert any(tiles[c][5] > 1 for c, _ in cands)
