"""Epilogue fusion at import: the erf GELU as exporters write it becomes one Gelu node, and a Linear's
bias (either Add order, an initializer, a Constant or an exporter's Identity alias) and GELU fold into
the GEMM epilogue; a batch of token rows times a shared weight is one GEMM. Checked on the CPU
emulator against onnx.reference, in fp32 and fp16."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cudaemu import EmuLoadedPlan, build_plan, compiler
from nvrtc_helpers import assert_close, rand, reference
from rtxpack.backends.nvrtc.onnx_import import import_onnx

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")


def _mlp(path: Path, form: str, bias: str, half: np.ndarray | float = 0.5, one: np.ndarray | float = 1.0) -> Path:
    """x[B, 5, 16] -> Linear(16, 32) (MatMul + Add) -> GELU written as ``form`` -> Linear(32, 8)."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32) * 0.2, "w2"),
             numpy_helper.from_array(np.float32(2 ** 0.5), "sqrt2"),
             numpy_helper.from_array(np.asarray(one, dtype=np.float32), "one"),
             numpy_helper.from_array(np.asarray(half, dtype=np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["mm"])]
    b = rng.standard_normal(32).astype(np.float32)
    if bias == "constant":
        nodes.append(helper.make_node("Constant", [], ["b1"], value=numpy_helper.from_array(b)))
    elif bias == "identity":       # an exporter's alias of a deduplicated initializer
        inits.append(numpy_helper.from_array(b, "b0"))
        nodes.append(helper.make_node("Identity", ["b0"], ["b1"]))
    else:
        inits.append(numpy_helper.from_array(b, "b1"))
    nodes.append(helper.make_node("Add", ["b1", "mm"] if bias != "init-last" else ["mm", "b1"], ["h"]))
    nodes += [helper.make_node("Div", ["h", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
              helper.make_node("Add", ["e", "one"], ["a"])]
    if form == "x*(1+erf)*0.5":        # TorchScript exporter
        nodes += [helper.make_node("Mul", ["h", "a"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"])]
    elif form == "(x*0.5)*(1+erf)":
        nodes += [helper.make_node("Mul", ["h", "half"], ["m"]), helper.make_node("Mul", ["m", "a"], ["g"])]
    else:                              # dynamo exporter: x * ((1 + erf) * 0.5)
        nodes += [helper.make_node("Mul", ["half", "a"], ["m"]), helper.make_node("Mul", ["h", "m"], ["g"])]
    nodes.append(helper.make_node("MatMul", ["g", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("form", ["x*(1+erf)*0.5", "(x*0.5)*(1+erf)", "x*((1+erf)*0.5)"])
@pytest.mark.parametrize("bias", ["init-first", "init-last", "constant", "identity"])
def test_gelu_and_bias_fold_into_the_gemm(tmp_path: Path, form: str, bias: str) -> None:
    path = _mlp(tmp_path / "mlp.onnx", form, bias)
    graph, _ = import_onnx(path)
    device = [nd for nd in graph["nodes"] if nd["where"] == "device"]
    assert [nd["op"] for nd in device] == ["MatMul", "MatMul"], [nd["op"] for nd in device]
    assert device[0]["attrs"]["relu"] == 2 and device[0]["inputs"][2] == "b1"
    x = rand(3, 5, 16)
    ref = reference(path, {"x": x})["y"]
    for precision, tol in (("fp32", 1e-4), ("fp16", 1e-2)):
        with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
            got = p.run({"x": x})["y"]
            # three rows of tokens times one weight: a single GEMM launch each, no per-token GEMV
            assert sum(n for k, n in p.launch_counts.items() if k.startswith("gemm")) == 2, p.launch_counts
        assert_close(got, ref, rel=tol)


def test_a_gelu_whose_input_is_used_elsewhere_is_left_alone(tmp_path: Path) -> None:
    """x feeds the GELU and something else: fusing would drop that use, so nothing is fused."""
    path = _mlp(tmp_path / "mlp.onnx", "x*(1+erf)*0.5", "init-first")
    m = onnx.load(path)
    m.graph.node.append(helper.make_node("Identity", ["h"], ["h_out"]))
    m.graph.output.append(helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", 5, 32]))
    onnx.save(m, path)
    graph, _ = import_onnx(path)
    assert "Erf" in [nd["op"] for nd in graph["nodes"]]
    x = rand(2, 5, 16)
    with EmuLoadedPlan(build_plan(path)) as p:
        got = p.run({"x": x})
    for k, r in reference(path, {"x": x}).items():
        assert_close(got[k], r)


@pytest.mark.parametrize("what,half,one", [("0.5004 for 0.5", 0.5004, 1.0), ("1.0009 for 1", 0.5, 1.0009),
                                           ("0.5 of rank 4", np.full((1, 1, 1, 1), 0.5), 1.0)])
def test_almost_gelu_is_left_alone(tmp_path: Path, what: str, half, one) -> None:
    """Constants a little off, or of a rank that broadcasts x to a bigger shape, are not GELU: the nodes
    run as written and the output (values and shape) is the reference's, within fp32's 1e-4."""
    path = _mlp(tmp_path / "mlp.onnx", "x*(1+erf)*0.5", "init-first", half=half, one=one)
    graph, _ = import_onnx(path)
    assert "Erf" in [nd["op"] for nd in graph["nodes"]], what
    x = rand(2, 5, 16)
    ref = reference(path, {"x": x})["y"]
    with EmuLoadedPlan(build_plan(path)) as p:
        got = p.run({"x": x})["y"]
    assert got.shape == ref.shape
    assert_close(got, ref)


# ---------------------------------------------------------------- fused attention
ATTN_CASES = {
    # BERT / GPT-2 style: scalar Muls on Q and Kt, a [B, 1, 1, S] mask, the IsNaN -> Where guard
    "masked_guarded": dict(),
    "plain": dict(mask=False, guard=False, qscale=False),
    "div_scale_d64": dict(div=True, Sq=64, Skv=64, D=64, DV=64),
    "batched_full_mask": dict(B=2, H=3, Sq=70, Skv=130, D=32, DV=32, mask_shape=[2, 1, 70, 130]),
    # a head over 128 runs unfused even in fp16 plans
    "big_head": dict(D=136, DV=16, Sq=5, Skv=9),
    # a mask that widens the scores: one query row repeated 5 times; batches added by the mask
    "mask_widens_rows": dict(Sq=1, mask_shape=[1, 1, 5, 45]),
    "mask_widens_batch": dict(B=1, H=1, mask_shape=[2, 3, 37, 45]),
    # scales the host computes from shapes (TorchScript's scaled_dot_product_attention; a Div by sqrt(D))
    "host_scales": dict(qscale="host", div="host", mask=False),
    # many keys, few queries: fp16 plans split the keys over blocks (attn_tc_part + attn_combine)
    "long_keys": dict(B=2, Sq=20, Skv=300, D=64, DV=48, mask_shape=[2, 1, 20, 300]),
    # heads not a multiple of 8 (element-wise loads, not 16-byte ones) over three key blocks and a tail:
    # the next block's prefetch, its zero fill past the keys and past the head
    "odd_heads_key_blocks": dict(Sq=19, Skv=150, D=20, DV=12, mask=False),
}


def _attn_feeds(c: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    B, H, Sq, Skv, D, DV = (c.get(k, d) for k, d in (("B", 1), ("H", 2), ("Sq", 37), ("Skv", 45), ("D", 24), ("DV", 40)))
    feeds = {"q": rng.standard_normal((B, H, Sq, D)).astype(np.float32),
             "k": rng.standard_normal((B, H, Skv, D)).astype(np.float32),
             "v": rng.standard_normal((B, Skv, H, DV) if c.get("v_seq_major") else (B, H, Skv, DV)).astype(np.float32)}
    if c.get("mask", True):
        shape = c.get("mask_shape") or [B, 1, 1, Skv]
        feeds["m"] = np.where(rng.random(shape) < 0.2, -1e9, rng.standard_normal(shape)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_attention_fuses_into_one_node_and_matches_onnxruntime(tmp_path: Path, case: str) -> None:
    """The whole subgraph, its head transposes and constant scales included, becomes one Attention
    node; fp32 plans (GEMM, masked softmax, GEMM) match onnxruntime to 1e-5, fp16 plans (one
    flash-attention kernel on tensor cores, unfused past head size 128) to fp16 tolerance."""
    from attention_models import attn_model
    from rtxpack.backends.nvrtc.plan import read_plan

    if compiler() is None:
        pytest.skip("needs g++ to compile the kernels for the CPU")
    c = ATTN_CASES[case]
    path = attn_model(str(tmp_path / f"{case}.onnx"), **c)
    feeds = _attn_feeds(c)
    ref = reference(path, feeds)["y"]
    for precision, tol in (("fp32", 1e-5), ("fp16", 2e-3)):
        plan = build_plan(path, precision=precision)
        _, graph, _, _, _ = read_plan(plan)
        device = [nd for nd in graph["nodes"] if nd["where"] == "device"]
        assert [nd["op"] for nd in device] == ["Attention"], graph["nodes"]
        assert bool(device[0]["attrs"].get("scale_by")) == (case == "host_scales")
        with EmuLoadedPlan(plan) as p:
            out = p.run(feeds)["y"]
            kernels = {k.split("<")[0] for k in p.launch_counts}
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max(), (case, precision)
        fused = precision == "fp16" and case != "big_head"
        split = {"attn_tc_part", "attn_combine"}    # (when the query tiles alone leave SMs idle)
        assert kernels in ([split] if case == "long_keys" else [{"attn_tc"}, split]) if fused else \
            kernels == {"gemm", "attn_softmax", "strided_copy"}, kernels


def test_fp32_attention_copies_v_when_a_batch_stride_would_pass_32_bits(tmp_path: Path, monkeypatch) -> None:
    """SD-UNet at its largest profile: V strided over two batch levels (its head transpose read in place)
    and 16k x 16k scores would need a probability batch stride past 32 bits; the fp32 path then copies
    V contiguous first (one batch level). The limit is lowered here so small shapes take that route."""
    from attention_models import attn_model
    from rtxpack.backends.nvrtc import lowering

    if compiler() is None:
        pytest.skip("needs g++ to compile the kernels for the CPU")
    c = dict(B=2, H=3, v_seq_major=True)
    path = attn_model(str(tmp_path / "a.onnx"), **c)
    feeds = _attn_feeds(c)
    ref = reference(path, feeds)["y"]
    monkeypatch.setattr(lowering, "INT32_LIMIT", 37 * 45 * 3)     # nb1 * Sq * Skv: the b0 stride of P
    with EmuLoadedPlan(build_plan(path)) as p:
        out = p.run(feeds)["y"]
        copies = p.launch_counts.get("strided_copy<>", 0)
    assert copies == 2, p.launch_counts            # V in, the transposed output out
    assert_close(out, ref, rel=1e-5)


def test_attention_with_a_second_reader_is_left_alone(tmp_path: Path) -> None:
    """Probabilities read elsewhere (here: the softmax is also a graph output) keep the unfused nodes."""
    from attention_models import attn_model

    path = attn_model(str(tmp_path / "a.onnx"), guard=False)
    m = onnx.load(path)
    m.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    onnx.save(m, path)
    graph, _ = import_onnx(path)
    ops = [nd["op"] for nd in graph["nodes"]]
    assert "Attention" not in ops and "Softmax" in ops, ops


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("skv", [45, 300])
def test_a_fully_masked_row_gives_what_the_model_says(tmp_path: Path, guard: bool, skv: int) -> None:
    """A query row whose every key is masked with -inf: zeros behind the exporters' IsNaN -> Where
    guard, NaN without it (softmax of nothing), exactly as onnxruntime answers, in both precisions.
    With 300 keys fp16 plans split them over blocks: one row is masked only in the first split's keys."""
    from attention_models import attn_model

    if compiler() is None:
        pytest.skip("needs g++ to compile the kernels for the CPU")
    path = attn_model(str(tmp_path / "a.onnx"), guard=guard, mask_shape=[1, 1, 37, skv], Skv=skv)
    feeds = _attn_feeds({"mask_shape": [1, 1, 37, skv], "Skv": skv})
    feeds["m"][0, 0, 3, :] = -np.inf
    feeds["m"][0, 0, 5, :128] = -np.inf
    ref = reference(path, feeds)["y"]
    assert np.isnan(ref[0, 3]).all() != guard and (ref[0, 3] == 0).all() == guard
    for precision in ("fp32", "fp16"):
        with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
            out = p.run(feeds)["y"]
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        ok = ~np.isnan(ref)
        assert np.abs(out[ok] - ref[ok]).max() <= 2e-3 * np.abs(ref[ok]).max(), precision


def test_every_key_split_the_tuner_may_pick_gives_the_same_answer(tmp_path: Path) -> None:
    """fp16 attention over 300 keys: one block per query tile or the keys split in 3 (at most one split
    per 128 keys) are the tuning candidates; forcing each in turn runs the plain and the split kernels,
    both matching onnxruntime."""
    from attention_models import attn_model

    if compiler() is None:
        pytest.skip("needs g++ to compile the kernels for the CPU")
    c = ATTN_CASES["long_keys"]
    path = attn_model(str(tmp_path / "a.onnx"), **c)
    feeds = _attn_feeds(c)
    ref = reference(path, feeds)["y"]
    plan = build_plan(path, precision="fp16")
    kernels: list[set[str]] = []
    for k in range(2):
        pick = (lambda k: lambda layer, label: 0.0 if label == layer.labels[k] else 1.0)(k)
        with EmuLoadedPlan(plan, options={"tune_timer": pick}) as p:
            out = p.run(feeds)["y"]
            assert [t.labels for t in p._state({n: v.shape for n, v in feeds.items()}).plan.tunable] == \
                [["kv/s1", "kv/s3"]]
            kernels.append({n.split("<")[0] for n in p.launch_counts})
        assert np.abs(out - ref).max() <= 2e-3 * np.abs(ref).max(), k
    assert kernels == [{"attn_tc"}, {"attn_tc_part", "attn_combine"}]
