"""The nvrtc backend's CUDA C, run on the CPU by tests/cudaemu, against onnx.reference.

The same single-operator cases and whole models as test_nvrtc_gpu.py, with the same
references and tolerances (fp32), but no GPU: each plan is built as usual (NVRTC skipped: the
emulator needs only the plan's program source), loaded by ``EmuLoadedPlan`` (rtxpack's own
plan reading, weights, shape planning and argument packing) and every launch runs the real
kernel code compiled with g++ against cuda_shim.h. One program holding every kernel the tests
need is compiled once per module (about a second; cached on disk between runs).
"""
from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from cudaemu import EmuError, EmuLoadedPlan, build_plan, compile_source, compiler, plan_kernel_specs
from nvrtc_helpers import assert_close, op_cases, rand, reference, softmax_coerced_2d
from rtxpack.backends.nvrtc import runtime as nv_runtime
from rtxpack.backends.nvrtc.kernels import FAMILIES, GEMM_TILES, TILES, KernelSpec, program_source
from rtxpack.backends.nvrtc.plan import read_header, read_plan
from test_nvrtc_gpu import _models

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")

CASES = op_cases()
#: whole models of test_nvrtc_gpu.py and their per-sample input shape
FEATURES = {"mlp": [64], "resnet_small": [3, 32, 32], "small_cnn": [3, 32, 32], "inception_block": [32, 16, 16],
            "transformer_block": [16, 64]}
EXTRA_NAMES = ["conv_large", "conv_large_splitk", "conv1x1_large", "conv1x1_large_splitk", "conv_big_splitk",
               "conv1x1_big", "gemm_big_splitk", "gemm_big"]
BATCHES = (1, 3)


def _extra_cases(tmp: Path) -> dict[str, tuple[Path, dict[str, np.ndarray], int, set[str]]]:
    """Shapes that take the tile / split-K paths the 132-SM defaults never pick at test sizes:
    (onnx, inputs, num_sms, launch labels that must occur)."""
    from nvrtc_helpers import op_model

    x, x128 = rand(1, 16, 12, 12), rand(1, 128, 12, 12)
    w3, w1 = rand(130, 16, 3, 3), rand(130, 128, 1, 1)
    a, b = rand(130, 256), rand(256, 90)
    big = TILES["big"]
    large = TILES["large"]

    def conv(name: str, w: np.ndarray, **attrs) -> tuple[Path, dict[str, np.ndarray]]:
        xin = x128 if w.shape[1] == 128 else x
        return op_model(tmp / f"{name}.onnx", "Conv", {"x": xin}, extra_inputs=["w", "b"],
                        inits={"w": w, "b": rand(w.shape[0])}, **attrs), {"x": xin}

    def key(family: str, targs: tuple, split: bool = False) -> str:
        return KernelSpec(family, targs).key() + ("/splitK" if split else "")

    pads = {"pads": [1, 1, 1, 1]}
    gemm = op_model(tmp / "gemm_big.onnx", "MatMul", {"a": a, "b": b})
    return {
        # M = 130 output channels: the 128x64 tile; 6 blocks fill 2 SMs, split-K for 4
        "conv_large": (*conv("conv_large", w3, **pads), 2, {key("conv_igemm", large + (0,))}),
        "conv_large_splitk": (*conv("conv_large", w3, **pads), 4, {key("conv_igemm", large + (0,), True)}),
        "conv1x1_large": (*conv("conv1x1_large", w1), 2, {key("conv_igemm", large + (1,))}),
        "conv1x1_large_splitk": (*conv("conv1x1_large", w1), 4, {key("conv_igemm", large + (1,), True)}),
        # M = 72: the 64x64 tile
        "conv_big_splitk": (*conv("conv_big", rand(72, 16, 3, 3), **pads), 8, {key("conv_igemm", big + (0,), True)}),
        "conv1x1_big": (*conv("conv1x1_big", rand(72, 16, 1, 1)), 2, {key("conv_igemm", big + (1,))}),
        # M = 130 rows: the 128x64 fp32 GEMM tile, split-K when 4 blocks leave SMs idle
        "gemm_big_splitk": (gemm, {"a": a, "b": b}, 4, {key("gemm", GEMM_TILES["f128x64"], True)}),
        "gemm_big": (gemm, {"a": a, "b": b}, 2, {key("gemm", GEMM_TILES["f128x64"])}),
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, dict, bytes]]:
    """Every plan these tests run, built once: op cases, whole models, tile variants."""
    tmp = tmp_path_factory.mktemp("cudaemu")
    out: dict[str, tuple[Path, dict, bytes]] = {}
    for cid, build in CASES:
        path, inputs = build(tmp)
        out[cid] = (path, inputs, build_plan(path))
    for name, (path, _) in _models(tmp).items():
        out["model:" + name] = (path, {}, build_plan(path))
    for name, (path, inputs, _, _) in _extra_cases(tmp).items():
        out["extra:" + name] = (path, inputs, build_plan(path))
    for name in ("resnet_small", "transformer_block"):      # fp16: the tensor-core families (test_nvrtc_fp16.py)
        path = out["model:" + name][0]
        out["fp16:" + name] = (path, {"x": rand(1, *FEATURES[name])}, build_plan(path, precision="fp16"))
    # fp16 attention over many keys and few queries: the split-key kernels (attn_tc_part, attn_combine)
    from attention_models import attn_model
    path = Path(attn_model(str(tmp / "attn_long.onnx"), Sq=20, Skv=300, D=64, DV=48, mask=False, guard=False))
    out["fp16:attention_long_keys"] = (path, {"q": rand(1, 2, 20, 64), "k": rand(1, 2, 300, 64),
                                              "v": rand(1, 2, 300, 48)}, build_plan(path, precision="fp16"))
    # a LayerNorm over the channels of NCHW (ConvNeXt's): layernorm_cs reads it in place
    from onnx import TensorProto, helper, numpy_helper
    ln = helper.make_graph([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                            helper.make_node("LayerNormalization", ["t", "g", "b"], ["y"], axis=-1)], "cln",
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 12, 3, 5])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                           [numpy_helper.from_array(rand(12), "g"), numpy_helper.from_array(rand(12), "b")])
    path = tmp / "layernorm_nchw.onnx"
    onnx.save(helper.make_model(ln, opset_imports=[helper.make_opsetid("", 17)]), path)
    out["layernorm_nchw"] = (path, {"x": rand(2, 12, 3, 5)}, build_plan(path))
    return out


@pytest.fixture(scope="module")
def program(corpus):
    """One emulator program with every kernel specialization of every corpus plan."""
    specs = sorted({s for _, _, plan in corpus.values() for s in plan_kernel_specs(plan)}, key=lambda s: s.key())
    return compile_source(program_source(specs))


@pytest.mark.parametrize("cid", [c for c, _ in CASES])
def test_operator_matches_reference(corpus, program, cid: str) -> None:
    path, inputs, plan = corpus[cid]
    ref = reference(path, inputs)
    if cid == "softmax_opset11":
        ref = {"y0": softmax_coerced_2d(inputs["a"], 1)}
    with EmuLoadedPlan(plan, module=program) as p:
        assert p.kernel_sources["emulator"] == read_header(plan).n_kernels
        out = p.run(inputs)
    for name, r in ref.items():
        assert_close(out[name], r)
    # every output element is computed in a fixed order whatever order the threads run in: any
    # difference is a race between the threads of a block
    with EmuLoadedPlan(plan, module=program, schedule="reverse") as p:
        rev = p.run(inputs)
    for name in ref:
        np.testing.assert_array_equal(rev[name], out[name], err_msg="thread order changed the result")


@pytest.mark.parametrize("num_sms,schedule", [(132, "forward"), (8, "reverse"), (132, "random")])
@pytest.mark.parametrize("name", list(FEATURES))
def test_whole_model(corpus, program, name: str, num_sms: int, schedule: str) -> None:
    """132 SMs (an H100: the launches a GPU run makes) and 8 (other tiles and split-K choices);
    threads of a block run in index, reverse or random order between barriers."""
    path, _, plan = corpus["model:" + name]
    feature = FEATURES[name]
    with EmuLoadedPlan(plan, module=program, num_sms=num_sms, schedule=schedule, seed=7) as p:
        for batch in BATCHES:                                   # dynamic batch: a runtime argument
            x = rand(batch, *feature)
            out = p.run({"x": x})
            for k, r in reference(path, {"x": x}).items():
                assert_close(out[k], r)
        assert sum(p.launch_counts.values()) > 0


@pytest.mark.parametrize("name", EXTRA_NAMES)
def test_tile_and_split_variants(tmp_path: Path, corpus, program, name: str) -> None:
    """The 128x64 and 64x64 tiles (im2col and 1x1) with and without split-K: a GPU with fewer SMs
    picks them for these shapes, and so does the planner when told so (num_sms)."""
    path, inputs, plan = corpus["extra:" + name]
    _, _, num_sms, want = _extra_cases(tmp_path)[name]
    with EmuLoadedPlan(plan, module=program, num_sms=num_sms) as p:
        out = p.run(inputs)
        assert want <= set(p.launch_counts), (want, dict(p.launch_counts))
    for k, r in reference(path, inputs).items():
        assert_close(out[k], r)


def test_every_kernel_family_and_path_is_exercised(tmp_path: Path, corpus, program) -> None:
    """The launches the tests above make cover every family of kernels.py, every conv/gemm tile,
    the 1x1 and im2col conv paths and split-K for conv and gemm."""
    labels: set[str] = set()
    extra = _extra_cases(tmp_path)
    for key, (_, inputs, plan) in corpus.items():
        num_sms = extra[key.split(":", 1)[1]][2] if key.startswith("extra:") else 132
        for wgmma in (False, True) if key.startswith("fp16:") else (False,):   # Hopper's gemm_wg: fp16 on sm_90a
            with EmuLoadedPlan(plan, module=program, num_sms=num_sms, wgmma=wgmma) as p:
                shapes = [{"x": (b, *FEATURES[key[6:]])} for b in BATCHES] if key.startswith("model:") else \
                    [{k: v.shape for k, v in inputs.items()}]
                for s in shapes:
                    labels |= {ln[0] for ln in p._state(s).launches}
    families = {lab.split("<")[0] for lab in labels}
    assert families == set(FAMILIES), set(FAMILIES) ^ families
    for t in TILES.values():
        for k1 in (0, 1):
            assert any(lab.startswith(KernelSpec("conv_igemm", t + (k1,)).key()) for lab in labels), (t, k1)
    assert any(lab.startswith("gemm<") for lab in labels)   # every fp32 GEMM tile: the test below
    for fam in ("conv_igemm", "gemm"):
        assert any(lab.startswith(fam + "<") and lab.endswith("/splitK") for lab in labels), fam
        assert any(lab.startswith(fam + "<") and not lab.endswith("/splitK") for lab in labels), fam


def test_every_fp32_gemm_candidate_gives_the_same_answer(tmp_path: Path) -> None:
    """fp32 GEMMs are tuned like the tensor-core layers: forcing each (tile, split-K) candidate in turn
    runs every GEMM tile, with and without split-K, on every operand layout the loaders know (k- or
    row-contiguous runs of 4, odd sizes and offsets that take the element-wise path), all exact."""
    from nvrtc_helpers import op_model

    def prefer(k: int):
        return lambda layer, label: 0.0 if label == layer.labels[k % len(layer.labels)] else 1.0

    a, b = rand(130, 256), rand(256, 90)
    cases = {
        "matmul": (op_model(tmp_path / "mm.onnx", "MatMul", {"a": a}, extra_inputs=["b"], inits={"b": b}), {"a": a}),
        "gemm_t": (op_model(tmp_path / "gt.onnx", "Gemm", {"a": rand(45, 37)}, extra_inputs=["b", "c"],
                            inits={"b": rand(29, 45), "c": rand(29)}, transA=1, transB=1, alpha=0.5, beta=2.0),
                   {"a": rand(45, 37)}),
        "batched_odd": (op_model(tmp_path / "bo.onnx", "MatMul", {"a": rand(3, 37, 45), "b": rand(3, 45, 29)}),
                        {"a": rand(3, 37, 45), "b": rand(3, 45, 29)}),
        "gemv": (op_model(tmp_path / "gv.onnx", "MatMul", {"a": rand(1, 300)}, extra_inputs=["b"],
                          inits={"b": rand(300, 70)}), {"a": rand(1, 300)}),
    }
    seen: set[str] = set()
    for name, (path, feeds) in cases.items():
        plan = build_plan(path)
        ref = reference(path, feeds)
        with EmuLoadedPlan(plan, num_sms=4, options={"tune_timer": prefer(0)}) as p0:
            p0.run(feeds)
            most = max(len(t.labels) for t in p0._state({k: v.shape for k, v in feeds.items()}).plan.tunable)
        for k in range(most):
            with EmuLoadedPlan(plan, num_sms=4, options={"tune_timer": prefer(k)}) as p:
                out = p.run(feeds)
                assert p.tuning["source"] == "tuned on this GPU", (name, p.tuning)
                seen |= set(p.launch_counts)
            for key, r in ref.items():
                assert_close(out[key], r)
    for t in GEMM_TILES.values():
        assert any(s.startswith(KernelSpec("gemm", t).key()) and not s.endswith("/splitK") for s in seen), t
    assert any(s.startswith("gemm<") and s.endswith("/splitK") for s in seen)


def test_plan_source_runs_as_is(corpus) -> None:
    """Default path: the plan's own KERN program source compiled for the emulator."""
    path, _, plan = corpus["model:resnet_small"]
    x = rand(2, 3, 32, 32)
    with EmuLoadedPlan(plan) as p:
        assert "the plan source" in p.provenance
        assert_close(p.run({"x": x})["y"], reference(path, {"x": x})["y"])


def test_argument_packing_is_the_gpu_runtimes(monkeypatch, corpus, program) -> None:
    """NvrtcLoadedPlan._state, driven by a fake driver, packs byte for byte the arguments the
    emulator launches with (same arena address), for every launch of two whole models."""
    arena = 0x7F0000000000
    fake = SimpleNamespace(cuMemAlloc=lambda n: (0, arena), cuMemcpyHtoD=lambda *a: (0,), cuCtxSynchronize=lambda: (0,))
    monkeypatch.setattr(nv_runtime, "_driver", lambda: fake)
    for name, shape in (("resnet_small", (2, 3, 32, 32)), ("transformer_block", (2, 16, 64))):
        with EmuLoadedPlan(corpus["model:" + name][2], module=program) as p:
            gpu_state = nv_runtime.NvrtcLoadedPlan._state(p, {"x": shape})
            assert gpu_state.arena == arena
            mine = p.pack_launches(gpu_state.plan, arena)
            assert len(mine) == len(gpu_state.launches) > 0
            for (spec, grid, block, args, offs), (fn, g2, b2, ptrs, blob, smem) in zip(mine, gpu_state.launches):
                assert (grid, block, smem) == (tuple(g2), b2, spec.smem_bytes) and fn == p._funcs[spec]
                assert bytes(blob) == args + b"\0" * 8
                assert [int(q) - blob.ctypes.data for q in ptrs] == offs


def test_tuning_times_a_candidate_replayed_from_a_cuda_graph(monkeypatch) -> None:
    """NvrtcLoadedPlan._graph_ms, driven by a fake driver: the candidate's launches are captured
    TUNE_REPS times into one graph, replayed TUNE_RUNS + 1 times between events, the first replay
    dropped, the median of the rest divided by TUNE_REPS; graph and instance destroyed. The plan's
    own capture goes through the same helper."""
    calls: list[str] = []
    elapsed = iter([9.0, 5.0, 7.0, 6.0])

    def rec(name, *ret):
        return lambda *a: (calls.append(name), (0, *ret))[1]

    fake = SimpleNamespace(
        CUstreamCaptureMode=SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL=0),
        cuStreamBeginCapture=rec("begin"), cuStreamEndCapture=rec("end", "graph"),
        cuGraphInstantiate=rec("instantiate", "exec"), cuEventRecord=rec("record"),
        cuGraphLaunch=rec("replay"), cuEventSynchronize=rec("sync"),
        cuEventElapsedTime=lambda *a: (calls.append("elapsed"), (0, next(elapsed)))[1],
        cuGraphExecDestroy=lambda e: calls.append(f"destroy {e}"), cuGraphDestroy=lambda g: calls.append(f"destroy {g}"))
    monkeypatch.setattr(nv_runtime, "_driver", lambda: fake)
    lp = nv_runtime.NvrtcLoadedPlan.__new__(nv_runtime.NvrtcLoadedPlan)
    lp._stream = "stream"
    lp._launch = lambda p: calls.append(f"launch {p}")
    reps, runs = lp.TUNE_REPS, lp.TUNE_RUNS
    assert (reps, runs) == (5, 3)
    ms = lp._graph_ms(["a", "b"], "start", "end")
    assert ms == 6.0 / reps                       # 9 (warm-up) dropped, median of 5, 7, 6
    replay = ["record", "replay", "record", "sync", "elapsed"]
    assert calls == ["begin"] + ["launch a", "launch b"] * reps + ["end", "instantiate"] + replay * (runs + 1) + \
        ["destroy exec", "destroy graph"]
    calls.clear()
    state = SimpleNamespace(launches=["x", "y", "z"])
    lp._capture(state)
    assert calls == ["begin", "launch x", "launch y", "launch z", "end", "instantiate"]
    assert (state.graph, state.graph_exec) == ("graph", "exec")


def test_refit_stripped_plan_and_interface(corpus, program) -> None:
    from rtxpack.backends.nvrtc import runtime

    path, _, _ = corpus["model:resnet_small"]
    plan = build_plan(path, strip_weights=True)
    x = rand(2, 3, 32, 32)
    with EmuLoadedPlan(plan, module=program, runtime_cache=b"blob") as p:
        assert p.input_names == ["x"] and p.output_names == ["y"]
        with pytest.raises(runtime.BackendError, match="refit"):
            p.run({"x": x})
        p.refit(path)
        assert_close(p.run({"x": x})["y"], reference(path, {"x": x})["y"])
        assert p.runtime_cache() == b"blob"
    with pytest.raises(runtime.BackendError, match="closed"):
        p.run({"x": x})


# ------------------------------------------------------------------ the oracle can fail
def _mutated_program(program_src: str) -> str:
    """Three deliberate kernel bugs: the double-buffered k loop (gemm's) loses the barrier between
    storing the next shared tile and reading it; warp_sum loses its last butterfly step (xor 1); unary writes past
    the end of its output."""
    barrier = "      store(buf ^ 1);\n      __syncthreads();\n"
    assert program_src.count(barrier) == 1
    shuffle = "for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);"
    assert program_src.count(shuffle) == 1
    store = "y[i] = unary_op<OP>(x[i], a, b);"
    assert program_src.count(store) == 1
    return (program_src.replace(barrier, barrier.replace("    __syncthreads();\n", ""))
            .replace(shuffle, shuffle.replace("o > 0", "o > 1")).replace(store, store.replace("y[i]", "y[i + n]")))


@pytest.fixture(scope="module")
def broken_program(corpus):
    cids = ("gemm_activations", "softmax_last", "relu")
    specs = sorted({s for cid in cids for s in plan_kernel_specs(corpus[cid][2])}, key=lambda s: s.key())
    return compile_source(_mutated_program(program_source(specs)))


@pytest.mark.parametrize("cid", ["gemm_activations", "softmax_last"])
def test_oracle_catches_kernel_bugs(corpus, program, broken_program, cid: str) -> None:
    path, inputs, plan = corpus[cid]
    ref = reference(path, inputs)["y0"]
    with EmuLoadedPlan(plan, module=program) as good, EmuLoadedPlan(plan, module=broken_program) as bad:
        assert_close(good.run(inputs)["y0"], ref)
        with pytest.raises(AssertionError, match="max abs error"):
            assert_close(bad.run(inputs)["y0"], ref)


def test_oracle_catches_out_of_bounds_writes(corpus, broken_program) -> None:
    path, inputs, plan = corpus["relu"]
    with EmuLoadedPlan(plan, module=broken_program) as p:
        with pytest.raises(EmuError, match="unary<0>.*red zone"):
            p.run(inputs)


def test_oracle_catches_corrupted_weights(corpus, program) -> None:
    path, inputs, plan = corpus["conv3x3"]
    off = read_header(plan).sections["DWGT"][0]
    rec = next(r for r in read_plan(plan, verify_weights=False)[1]["device_tensors"] if r["name"] == "w")
    bad = bytearray(plan)
    pos = off + rec["offset"] + 4 * 37                            # one conv weight of the device copy
    bad[pos:pos + 4] = struct.pack("<f", struct.unpack_from("<f", plan, pos)[0] + 0.5)
    ref = reference(path, inputs)["y0"]
    with EmuLoadedPlan(bytes(bad), module=program) as p:         # the runtime does not re-hash weights
        with pytest.raises(AssertionError, match="max abs error"):
            assert_close(p.run(inputs)["y0"], ref)
    with pytest.raises(nv_runtime.BackendError, match="DWGT"):
        EmuLoadedPlan(bytes(bad), module=program, options={"verify_weights": True})
