"""Launch-count work of the planner past the graph's own fusions, on the CPU emulator against onnxruntime:

* fused attention reads Q, K and V straight from a packed QKV projection (the copy that split the heads
  goes; the key and value thirds are read from an element offset, ``launch.At``) and writes its output
  straight into the head-merging copy's destination (that copy goes too);
* a residual Add that a Reshape hid from the graph's fusion runs in the epilogue of the GEMM (or
  convolution) before it (or of its split-K reducer);
* an element-wise Add reads an operand through the Transpose that wrote it;
* SiLU / Sigmoid / HardSwish in the epilogue; repeated mask arithmetic computed once.

Each is checked with the tuner forced through every candidate (the tuner re-plans a layer from the graph's
names, so its candidates must be rewritten as the plan was), and against the cases it must leave alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cudaemu import EmuLoadedPlan, build_plan, compiler
from nvrtc_helpers import assert_close, rand, reference
from rtxpack.backends.nvrtc.launch import At
from test_nvrtc_fp16 import _prefer

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")
TOL = {"fp32": 1e-4, "fp16": 1e-2}


def _block(path: Path, S: int = 40, E: int = 64, H: int = 2, act: str = "", late_residual: bool = False) -> Path:
    """A transformer attention block as TorchScript writes ViT's: one packed QKV projection, heads split by
    Reshape + Transpose + Gather, attention, heads merged by Reshape + Transpose + Reshape, the output
    projection, a Reshape, then the residual Add (``act``: an activation between projection and Add;
    ``late_residual``: the residual is computed after the projection, in the graph's order)."""
    d = E // H
    rng = np.random.default_rng(3)
    init = lambda name, a: numpy_helper.from_array(np.asarray(a), name)   # noqa: E731
    inits = [init("w_in", (rng.standard_normal((E, 3 * E)) / 8).astype(np.float32)),
             init("b_in", (rng.standard_normal(3 * E) / 8).astype(np.float32)),
             init("w_out", (rng.standard_normal((E, E)) / 8).astype(np.float32)),
             init("b_out", (rng.standard_normal(E) / 8).astype(np.float32)),
             init("s_qkv", np.array([1, S, 3, H, d], np.int64)), init("s_hsd", np.array([H, S, d], np.int64)),
             init("s_se", np.array([S, E], np.int64)), init("s_1se", np.array([1, S, E], np.int64)),
             init("i0", np.array(0, np.int64)), init("i1", np.array(1, np.int64)), init("i2", np.array(2, np.int64)),
             init("scale", np.array(d ** -0.5, np.float32))]
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w_in"], ["p0"]), n("Add", ["p0", "b_in"], ["proj"]),
             n("Reshape", ["proj", "s_qkv"], ["p5"]),                              # [1, S, 3, H, d]
             n("Transpose", ["p5"], ["packed"], perm=[2, 0, 3, 1, 4])]             # [3, 1, H, S, d]
    for t, i in (("q", "i0"), ("k", "i1"), ("v", "i2")):
        nodes.append(n("Gather", ["packed", i], [t], axis=0))                      # [1, H, S, d]
    nodes += [n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q", "kt"], ["s0"]),
              n("Mul", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["pr"], axis=-1),
              n("MatMul", ["pr", "v"], ["o"]),                                     # [1, H, S, d]
              n("Reshape", ["o", "s_hsd"], ["o3"]), n("Transpose", ["o3"], ["ot"], perm=[1, 0, 2]),
              n("Reshape", ["ot", "s_1se"], ["merged"]),                           # [1, S, E]
              n("MatMul", ["merged", "w_out"], ["y0"]), n("Add", ["y0", "b_out"], ["y1"]),
              n("Reshape", ["y1", "s_se"], ["y2"])]
    y = "y2"
    if act:
        nodes.append(n(act, [y], ["y3"]))
        y = "y3"
    res = "xr"
    nodes.append(n("Reshape", ["x", "s_se"], ["xr"]))
    if late_residual:        # computed after the projection ran: it cannot be the projection's epilogue
        nodes.append(n("Neg", ["xr"], ["xm"]))
        res = "xm"
    nodes.append(n("Add", [y, res], ["out"]))
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, S, E])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _runs(path: Path, precision: str, num_sms: int = 132):
    """(outputs, launch counts, shape plan) for every tuning candidate forced in turn, then the default."""
    x = rand(*[d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim])
    ref = reference(path, {"x": x})
    plan = build_plan(path, precision=precision)
    with EmuLoadedPlan(plan, num_sms=num_sms, options={"tune_timer": _prefer(0)}) as p0:
        p0.run({"x": x})
        most = max([len(t.labels) for t in p0._state({"x": x.shape}).plan.tunable] or [1])
    out = []
    for k in range(most):
        with EmuLoadedPlan(plan, num_sms=num_sms, options={"tune_timer": _prefer(k)}) as p:
            got = p.run({"x": x})
            assert_close(got["out"], ref["out"], rel=TOL[precision])
            assert np.array_equal(p.run({"x": x})["out"], got["out"])      # replays alike
            out.append((dict(p.launch_counts), p._state({"x": x.shape}).plan))
    return out


def _count(counts: dict, prefix: str) -> int:
    return sum(v for k, v in counts.items() if k.startswith(prefix))


def test_attention_reads_the_packed_projection_and_writes_the_merged_heads_in_place(tmp_path: Path) -> None:
    for counts, sp in _runs(_block(tmp_path / "b.onnx"), "fp16", num_sms=8):
        assert _count(counts, "strided_copy") == 0 and _count(counts, "gather") == 0, counts
        assert _count(counts, "binary") == 0, counts          # the residual is in the output projection
        attn = [ln for ln in sp.launches if ln.spec.family.startswith("attn_tc")]
        offsets = sorted(getattr(a, "offset", 0) for ln in attn for a in ln.args[:3] if isinstance(a, At))
        assert offsets == [0, 64, 128], [ln.args[:5] for ln in attn]    # q, k, v: thirds of one projection row
        assert sp.views, "the tuner needs the elided copies' views"


def test_fp32_folds_the_residual_and_keeps_its_head_copies(tmp_path: Path) -> None:
    """fp32 attention runs as GEMMs: its head copies stay (reading through them is fp16's), the residual
    Add still goes into the output projection's epilogue."""
    for counts, _ in _runs(_block(tmp_path / "b.onnx"), "fp32", num_sms=8):
        assert _count(counts, "binary") == 0, counts
        assert _count(counts, "gemm") >= 3, counts


@pytest.mark.parametrize("case", ["act", "late_residual"])
def test_a_residual_add_that_cannot_be_an_epilogue_stays(tmp_path: Path, case: str) -> None:
    """An activation between projection and Add (the epilogue adds the residual before activating), or a
    residual the graph computes after the projection: the Add stays a launch, the answer is right."""
    path = _block(tmp_path / "b.onnx", act="Relu" if case == "act" else "", late_residual=case == "late_residual")
    for counts, _ in _runs(path, "fp16", num_sms=8):
        assert _count(counts, "binary") >= 1, counts


def _conv_residual(path: Path) -> Path:
    """Conv, then a Reshape to the same shape (hides the Add from the graph's conv + add fusion), + x."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32), "w")
    s = numpy_helper.from_array(np.array([1, 16, 12, 12], np.int64), "s")
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), n("Reshape", ["c", "s"], ["cr"]),
             n("Add", ["cr", "x"], ["out"])]
    graph = helper.make_graph(nodes, "cr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w, s])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_convolution_takes_a_hidden_residual_add_in_its_epilogue(tmp_path: Path, precision: str) -> None:
    path = _conv_residual(tmp_path / "c.onnx")
    x = rand(1, 16, 12, 12)
    ref = reference(path, {"x": x})["out"]
    plan = build_plan(path, precision=precision)
    for k in range(4):       # with and without split-K (4 SMs: 144 pixels x 16 channels leave SMs idle)
        with EmuLoadedPlan(plan, num_sms=4, options={"tune_timer": _prefer(k)}) as p:
            assert_close(p.run({"x": x})["out"], ref, rel=TOL[precision])
            assert _count(p.launch_counts, "binary") == 0, p.launch_counts


def test_repeated_mask_arithmetic_runs_once(tmp_path: Path) -> None:
    """BERT's exporters compute the extended attention mask again in every layer, from Constant nodes of
    equal values: one launch does. Nodes on unequal constants stay apart."""
    n = helper.make_node
    consts = []
    for name, v in (("c0a", 0.0), ("c0b", 0.0), ("cma", -1e4), ("cmb", -1e4), ("cmc", -2e4)):
        consts.append(n("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.float32))))
    nodes = consts + [n("Relu", ["m"], ["mr"]), n("Cast", ["mr"], ["mb"], to=TensorProto.BOOL)]
    outs = []
    for k, (zero, big) in enumerate((("c0a", "cma"), ("c0b", "cmb"), ("c0a", "cmc"))):
        nodes += [n("Where", ["mb", zero, big], [f"w{k}"]), n("Add", ["x", f"w{k}"], [f"y{k}"])]
        outs.append(f"y{k}")
    graph = helper.make_graph(nodes, "masks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
                                               helper.make_tensor_value_info("m", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    feeds = {"x": rand(4, 16), "m": rand(4, 16)}
    ref = reference(path, feeds)
    with EmuLoadedPlan(build_plan(path)) as p:
        got = p.run(feeds)
        wheres = _count(p.launch_counts, "where")
    for k in outs:
        assert_close(got[k], ref[k], rel=1e-6)
    assert wheres == 2, p.launch_counts       # y0 and y1 share one, y2's mask value differs


def _activations(path: Path, sigmoid_out: bool = False) -> Path:
    """Conv -> SiLU (Sigmoid + Mul, as exporters write it) -> depthwise Conv -> HardSwish -> Conv -> Sigmoid
    -> MatMul over the channels-last view -> Sigmoid; ``sigmoid_out``: the SiLU's Sigmoid is also an output."""
    rng = np.random.default_rng(5)
    w = lambda name, *s: numpy_helper.from_array((rng.standard_normal(s) / 6).astype(np.float32), name)  # noqa: E731
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), n("Sigmoid", ["c1"], ["s1"]), n("Mul", ["c1", "s1"], ["a1"]),
             n("Conv", ["a1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=16), n("HardSwish", ["c2"], ["a2"]),
             n("Conv", ["a2", "w3"], ["c3"]), n("Sigmoid", ["c3"], ["a3"]),
             n("Transpose", ["a3"], ["t"], perm=[0, 2, 3, 1]), n("MatMul", ["t", "w4"], ["m"]),
             n("Sigmoid", ["m"], ["out"])]
    outs = ["out"] + (["s1"] if sigmoid_out else [])
    graph = helper.make_graph(nodes, "acts", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10, 10])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
                              [w("w1", 16, 16, 3, 3), w("w2", 16, 1, 3, 3), w("w3", 16, 16, 1, 1), w("w4", 16, 24)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("sigmoid_out", [False, True])
def test_silu_sigmoid_and_hardswish_run_in_the_epilogue(tmp_path: Path, precision: str, sigmoid_out: bool) -> None:
    """EfficientNet's SiLU and MobileNetV3's HardSwish / Sigmoid after a convolution or GEMM cost no launch of
    their own; a SiLU whose Sigmoid is also a model output keeps its launches."""
    path = _activations(tmp_path / "a.onnx", sigmoid_out)
    x = rand(1, 16, 10, 10)
    ref = reference(path, {"x": x})
    with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
        got = p.run({"x": x})
        counts = dict(p.launch_counts)
    for k, r in ref.items():
        assert_close(got[k], r, rel=TOL[precision])
    elementwise = sum(v for k, v in counts.items() if k.startswith(("unary", "binary", "ew1", "ew2")))
    assert elementwise == (2 if sigmoid_out else 0), counts


def _convnext_block(path: Path, C: int = 32, Hs: int = 6) -> Path:
    """ConvNeXt's block as exported: NCHW -> NHWC Transpose, LayerNorm, Linear, GELU, Linear, layer scale,
    NHWC -> NCHW Transpose, residual Add; then a window merge (Reshape, Transpose, Reshape) + Add."""
    rng = np.random.default_rng(6)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    inits = [f("g", 1 + rng.standard_normal(C) / 10), f("b", rng.standard_normal(C) / 10),
             f("w1", rng.standard_normal((C, 4 * C)) / 6), f("w2", rng.standard_normal((4 * C, C)) / 12),
             f("gamma", rng.standard_normal(C)), numpy_helper.from_array(np.array([1, C, 2, 3, 2, 3], np.int64), "s6"),
             numpy_helper.from_array(np.array([1, C, Hs, Hs], np.int64), "s4")]
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), n("LayerNormalization", ["t", "g", "b"], ["ln"], axis=-1),
             n("MatMul", ["ln", "w1"], ["h"]), n("Relu", ["h"], ["ha"]),
             n("MatMul", ["ha", "w2"], ["h2"]), n("Mul", ["h2", "gamma"], ["h3"]),
             n("Transpose", ["h3"], ["back"], perm=[0, 3, 1, 2]), n("Add", ["x", "back"], ["y"]),
             n("Reshape", ["y", "s6"], ["w6"]), n("Transpose", ["w6"], ["w6t"], perm=[0, 1, 4, 5, 2, 3]),
             n("Reshape", ["w6t", "s4"], ["merged"]), n("Add", ["merged", "y"], ["out"])]
    graph = helper.make_graph(nodes, "cnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, Hs, Hs])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_add_reads_a_transposed_operand_in_place(tmp_path: Path, precision: str) -> None:
    """The Transpose back to NCHW before ConvNeXt's residual Add, and a window merge before an Add, are
    read by the Add through their strides, and the one into NHWC by the LayerNorm after it
    (``layernorm_cs``): no copy is left."""
    path = _convnext_block(tmp_path / "c.onnx")
    x = rand(1, 32, 6, 6)
    ref = reference(path, {"x": x})["out"]
    with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
        assert_close(p.run({"x": x})["out"], ref, rel=TOL[precision])
        assert _count(p.launch_counts, "strided_copy") == 0, p.launch_counts
        assert _count(p.launch_counts, "layernorm_cs") == 1, p.launch_counts


def _concat_after(path: Path, attention: bool) -> Path:
    """A residual that is a Concat whose first part is written early (by a copy elision moves ahead, or by a
    fused attention writing straight into it) and whose last part after the GEMM the Add follows: the Add
    must not become that GEMM's epilogue (found by an outside review: the GEMM read the unfilled part)."""
    rng = np.random.default_rng(1)
    n = helper.make_node
    vi = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)   # noqa: E731
    init = lambda name, a: numpy_helper.from_array(np.asarray(a), name)                      # noqa: E731
    if attention:
        S, H, d = 40, 2, 32
        nodes = [n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q", "kt"], ["s0"]),
                 n("Mul", ["s0", "scale"], ["s1"]), n("Softmax", ["s1"], ["pr"], axis=-1),
                 n("MatMul", ["pr", "v"], ["o"]), n("MatMul", ["xg", "Wg"], ["g"]),
                 n("Concat", ["o", "z"], ["y"], axis=1), n("Reshape", ["g", "s"], ["gr"]), n("Add", ["gr", "y"], ["out"])]
        inits = [init("scale", np.array(d ** -0.5, np.float32)), init("s", np.array([1, 2 * H, S, d], np.int64)),
                 init("Wg", (rng.standard_normal((16, d)) / 4).astype(np.float32))]
        ins = [vi("q", [1, H, S, d]), vi("k", [1, H, S, d]), vi("v", [1, H, S, d]), vi("xg", [2 * H * S, 16]),
               vi("z", [1, H, S, d])]
    else:
        nodes = [n("Concat", ["a", "a"], ["r"], axis=1), n("MatMul", ["z", "W"], ["g"]),
                 n("Concat", ["r", "b"], ["y"], axis=1), n("Reshape", ["g", "s"], ["gr"]), n("Add", ["gr", "y"], ["out"])]
        inits = [init("W", (rng.standard_normal((6, 16)) / 3).astype(np.float32)), init("s", np.array([4, 16], np.int64))]
        ins = [vi("a", [4, 4]), vi("b", [4, 8]), vi("z", [4, 6])]
    graph = helper.make_graph(nodes, "late", ins, [vi("out", None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("precision, attention", [("fp32", False), ("fp16", True)])
def test_a_residual_still_being_filled_is_no_epilogue(tmp_path: Path, precision: str, attention: bool) -> None:
    path = _concat_after(tmp_path / "c.onnx", attention)
    rng = np.random.default_rng(2)
    feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for i in onnx.load(path).graph.input}
    with EmuLoadedPlan(build_plan(path, precision=precision), num_sms=8) as p:
        assert_close(p.run(feeds)["out"], reference(path, feeds)["out"], rel=TOL[precision])


def _layer_scaled(path: Path, form: str, C: int = 16, Hs: int = 5) -> Path:
    """A ConvNeXt-style block whose second Linear's output is multiplied by a per-channel layer scale:
    ``nchw`` as torchvision exports it (Transpose back to NCHW, then ``Mul(gamma[C, 1, 1])``), ``nhwc`` as
    CaiT / DINOv2 write it (``Mul(gamma[C])`` before the Transpose), ``rows`` a factor varying along H
    (no layer scale: the Mul must stay). The bias reaches the MatMul through a host Identity (the
    TorchScript exporter's alias for equal initializers), and the scaled weight is also read unscaled by
    a second output (a shared weight keeps its values)."""
    rng = np.random.default_rng(11)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    gamma = {"nchw": rng.uniform(0.2, 2, (C, 1, 1)), "nhwc": rng.uniform(0.2, 2, C),
             "rows": rng.uniform(0.2, 2, (1, Hs, 1))}[form]
    inits = [f("w1", rng.standard_normal((C, 2 * C)) / 4), f("b1", rng.standard_normal(2 * C) / 4),
             f("w2", rng.standard_normal((2 * C, C)) / 6), f("b2", rng.standard_normal(C) / 4), f("gamma", gamma)]
    n = helper.make_node
    nodes = [n("Identity", ["b2"], ["b2_alias"]), n("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             n("MatMul", ["t", "w1"], ["h0"]), n("Add", ["h0", "b1"], ["h"]), n("Relu", ["h"], ["ha"]),
             n("MatMul", ["ha", "w2"], ["y0"]), n("Add", ["b2_alias", "y0"], ["y1"]), n("MatMul", ["ha", "w2"], ["plain"])]
    if form == "nhwc":
        nodes += [n("Mul", ["y1", "gamma"], ["y2"]), n("Transpose", ["y2"], ["back"], perm=[0, 3, 1, 2])]
    else:
        nodes += [n("Transpose", ["y1"], ["y2"], perm=[0, 3, 1, 2]), n("Mul", ["gamma", "y2"], ["back"])]
    nodes.append(n("Add", ["x", "back"], ["out"]))
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)   # noqa: E731
    graph = helper.make_graph(nodes, "ls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, Hs, Hs])],
                              [vi("out"), vi("plain")], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("form", ["nchw", "nhwc", "rows"])
def test_a_layer_scale_is_folded_into_the_weights_before_it(tmp_path: Path, precision: str, form: str) -> None:
    """A per-channel layer scale after a Linear costs no launch: gamma multiplies the columns of a copy of
    the weight and the bias (the weight itself, read unscaled elsewhere, keeps its values); the Add
    after it reads the Transpose in place. A factor varying along another axis stays a Mul."""
    path = _layer_scaled(tmp_path / "ls.onnx", form)
    x = rand(1, 16, 5, 5)
    ref = reference(path, {"x": x})
    plan = build_plan(path, precision=precision)
    with EmuLoadedPlan(plan) as p:
        got = p.run({"x": x})
        for k in ("out", "plain"):
            assert_close(got[k], ref[k], rel=TOL[precision])
        assert _count(p.launch_counts, "binary") == (2 if form == "rows" else 1), p.launch_counts
    if precision == "fp16" and form == "nchw":    # a stripped plan refits the scaled copies from the ONNX
        with EmuLoadedPlan(build_plan(path, precision=precision, strip_weights=True)) as s:
            s.refit(path)
            again = s.run({"x": x})
        for k in ("out", "plain"):
            np.testing.assert_array_equal(again[k], got[k])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_layer_scale_after_a_gemm_with_transposed_weight(tmp_path: Path, precision: str) -> None:
    """Gemm(transB=1) (a Linear on 2-D rows, as TorchScript exports it): B is stored [N, K], so gamma scales
    its rows; the residual Add then runs in the epilogue too (one launch in all at fp32)."""
    rng = np.random.default_rng(12)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    n = helper.make_node
    nodes = [n("Gemm", ["x", "w", "b"], ["y"], transB=1), n("Mul", ["y", "gamma"], ["ys"]), n("Add", ["ys", "x"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 24])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [f("w", rng.standard_normal((24, 24)) / 5), f("b", rng.standard_normal(24) / 4),
                               f("gamma", rng.uniform(0.2, 2, 24))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "g.onnx")
    x = rand(8, 24)
    with EmuLoadedPlan(build_plan(tmp_path / "g.onnx", precision=precision)) as p:
        assert_close(p.run({"x": x})["out"], reference(tmp_path / "g.onnx", {"x": x})["out"], rel=TOL[precision])
        assert _count(p.launch_counts, "binary") == 0, p.launch_counts


def _channels_layernorm(path: Path, shape: tuple, perm: tuple = (0, 2, 3, 1)) -> Path:
    """Transpose(perm) then a LayerNorm over the last axis (ConvNeXt's channels-last LayerNorm on NCHW)."""
    rng = np.random.default_rng(13)
    L = shape[perm[-1]]
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t"], perm=list(perm)),
             n("LayerNormalization", ["t", "g", "b"], ["out"], axis=-1, epsilon=1e-6)]
    graph = helper.make_graph(nodes, "cln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [f("g", 1 + rng.standard_normal(L) / 5), f("b", rng.standard_normal(L) / 5)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("shape, perm, in_place", [
    ((2, 300, 3, 5), (0, 2, 3, 1), True),      # two images, 15 pixels (a partial block of 8), 300 channels
    ((1, 24, 8, 8), (0, 2, 3, 1), True),
    ((1, 1025, 2, 2), (0, 2, 3, 1), False),    # more channels than layernorm_cs holds: copy + LayerNorm
    ((1, 6, 8, 5), (0, 1, 3, 2), True),        # H moved last: [6, H, W] is an [outer, C, P] source too
    ((1, 6, 8, 8), (0, 3, 1, 2), False),       # rows that are no [outer, P] run of the source
])
def test_a_layernorm_over_channels_reads_nchw_in_place(tmp_path: Path, shape: tuple, perm: tuple,
                                                       in_place: bool) -> None:
    path = _channels_layernorm(tmp_path / "cln.onnx", shape, perm)
    x = (rand(*shape) * 3 + 1).astype(np.float32)      # a mean far from 0: the statistics are two-pass
    with EmuLoadedPlan(build_plan(path)) as p:
        assert_close(p.run({"x": x})["out"], reference(path, {"x": x})["out"], rel=1e-5)
        assert _count(p.launch_counts, "layernorm_cs") == int(in_place), p.launch_counts
        assert _count(p.launch_counts, "strided_copy") == int(not in_place), p.launch_counts


def test_a_plan_without_layernorm_cs_keeps_its_copy(tmp_path: Path) -> None:
    """A plan built before ``layernorm_cs`` existed does not carry it: today's planner, given that plan's
    kernels, keeps the Transpose copy and the plain LayerNorm."""
    from rtxpack.backends.nvrtc.kernels import KernelSpec
    from rtxpack.backends.nvrtc.onnx_import import import_onnx
    from rtxpack.backends.nvrtc.schedule import concrete_input_shapes, plan_shapes

    graph, weights = import_onnx(_channels_layernorm(tmp_path / "cln.onnx", (1, 24, 8, 8)))
    shapes = concrete_input_shapes(graph, {})
    today = {ln.spec.family for ln in plan_shapes(graph, shapes, weights, set()).launches}
    assert today == {"layernorm_cs"}
    old = {KernelSpec("layernorm"), KernelSpec("strided_copy")}
    assert {ln.spec.family for ln in plan_shapes(graph, shapes, weights, set(), kernels=old).launches} == \
        {"layernorm", "strided_copy"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_depthwise_convolution_takes_batchnorm_residual_and_activation(tmp_path: Path, precision: str) -> None:
    """Depthwise Conv -> BatchNormalization -> Add(input) -> HardSwish, as MobileNet-style blocks write it:
    one conv_dw launch (BatchNorm folded into its weights, the residual and activation in its epilogue),
    rows of 10 outputs (not a multiple of the 4 a thread computes)."""
    rng = np.random.default_rng(14)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    C = 8
    n = helper.make_node
    nodes = [n("Conv", ["x", "w", "b"], ["c"], group=C, pads=[2, 2, 2, 2]),
             n("BatchNormalization", ["c", "s", "t", "m", "v"], ["bn"]), n("Add", ["bn", "x"], ["r"]),
             n("HardSwish", ["r"], ["out"])]
    inits = [f("w", rng.standard_normal((C, 1, 5, 5)) / 4), f("b", rng.standard_normal(C)), f("s", rng.uniform(0.5, 2, C)),
             f("t", rng.standard_normal(C)), f("m", rng.standard_normal(C)), f("v", rng.uniform(0.5, 2, C))]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 6, 10])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "dw.onnx")
    x = rand(2, C, 6, 10)
    with EmuLoadedPlan(build_plan(tmp_path / "dw.onnx", precision=precision)) as p:
        assert_close(p.run({"x": x})["out"], reference(tmp_path / "dw.onnx", {"x": x})["out"], rel=TOL[precision])
        assert dict(p.launch_counts) == {"conv_dw<5,1>": 1}, p.launch_counts


def test_a_plan_without_conv_dw_runs_depthwise_convolutions_direct(tmp_path: Path) -> None:
    """A plan built before ``conv_dw`` carries conv_direct for its depthwise layers: today's planner, given
    that plan's kernels, launches conv_direct."""
    from rtxpack.backends.nvrtc.kernels import KernelSpec
    from rtxpack.backends.nvrtc.onnx_import import import_onnx
    from rtxpack.backends.nvrtc.schedule import concrete_input_shapes, plan_shapes

    path = op_model_dw(tmp_path / "dw.onnx")
    graph, weights = import_onnx(path)
    shapes = concrete_input_shapes(graph, {})
    assert [ln.spec for ln in plan_shapes(graph, shapes, weights, set()).launches] == [KernelSpec("conv_dw", (3, 2))]
    old = plan_shapes(graph, shapes, weights, set(), kernels={KernelSpec("conv_direct")})
    assert [ln.spec for ln in old.launches] == [KernelSpec("conv_direct")]


def op_model_dw(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["out"], group=4, strides=[2, 2])], "dw",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _shifted_windows(path: Path, B: int = 4, nW: int = 2, H: int = 2, N: int = 8, d: int = 16) -> Path:
    """Swin's shifted-window attention as torchvision exports it: q scaled, scores + relative position bias
    [H, N, N], reshaped to [B / nW, nW, H, N, N], + the shift mask (an Unsqueeze the host evaluates:
    [1, nW, 1, N, N], -100 between windows' parts), reshaped back, Softmax, times V."""
    rng = np.random.default_rng(15)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a), name)   # noqa: E731
    shift = np.where(rng.random((nW, N, N)) < 0.3, -100.0, 0.0).astype(np.float32)
    inits = [f("scale", np.array(d ** -0.5, np.float32)), f("relbias", rng.standard_normal((H, N, N)).astype(np.float32)),
             f("shift", shift), f("ax", np.array([0, 2], np.int64)), f("s1", np.array([B // nW, nW, H, N, N], np.int64)),
             f("s2", np.array([-1, H, N, N], np.int64))]
    n = helper.make_node
    nodes = [n("Mul", ["q", "scale"], ["qs"]), n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             n("MatMul", ["qs", "kt"], ["s"]), n("Add", ["s", "relbias"], ["sb"]), n("Reshape", ["sb", "s1"], ["s5"]),
             n("Unsqueeze", ["shift", "ax"], ["m5"]), n("Add", ["s5", "m5"], ["sm"]), n("Reshape", ["sm", "s2"], ["s4"]),
             n("Softmax", ["s4"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["out"])]
    vi = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [B, H, N, d])   # noqa: E731
    graph = helper.make_graph(nodes, "swa", [vi("q"), vi("k"), vi("v")],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_shifted_window_attention_fuses_with_both_masks_summed_on_the_host(tmp_path: Path, precision: str) -> None:
    """The relative position bias and the shift mask, added on either side of a Reshape, become one mask the
    host composes per shape: one fused attention (fp16: one flash-attention launch; fp32: GEMM, masked
    softmax, GEMM), no element-wise launch."""
    path = _shifted_windows(tmp_path / "swa.onnx")
    feeds = {k: rand(4, 2, 8, 16) for k in ("q", "k", "v")}
    ref = reference(path, feeds)["out"]
    with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
        assert_close(p.run(feeds)["out"], ref, rel=TOL[precision])
        counts = p.launch_counts
    assert _count(counts, "binary") == 0 and _count(counts, "softmax") == 0, counts
    assert _count(counts, "attn_tc" if precision == "fp16" else "attn_softmax") == 1, counts


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_constant_node_scale_after_a_projection_is_folded(tmp_path: Path, precision: str) -> None:
    """Whisper's query projection as TorchScript exports it: MatMul + bias, then Mul by a Constant node's
    scalar. The scalar folds into the projection (its value kept in the node, so a stripped plan refits)."""
    rng = np.random.default_rng(16)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    n = helper.make_node
    nodes = [n("Constant", [], ["c"], value=numpy_helper.from_array(np.array(0.125, np.float32))),
             n("MatMul", ["x", "w"], ["y0"]), n("Add", ["y0", "b"], ["y1"]), n("Mul", ["y1", "c"], ["out"])]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [f("w", rng.standard_normal((32, 32)) / 4), f("b", rng.standard_normal(32))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "q.onnx")
    x = rand(1, 12, 32)
    ref = reference(tmp_path / "q.onnx", {"x": x})["out"]
    with EmuLoadedPlan(build_plan(tmp_path / "q.onnx", precision=precision)) as p:
        got = p.run({"x": x})["out"]
        assert_close(got, ref, rel=TOL[precision])
        assert _count(p.launch_counts, "binary") == 0, p.launch_counts
    with EmuLoadedPlan(build_plan(tmp_path / "q.onnx", precision=precision, strip_weights=True)) as s:
        s.refit(tmp_path / "q.onnx")
        np.testing.assert_array_equal(s.run({"x": x})["out"], got)


@pytest.mark.parametrize("top", [1e-5, 3.0])
def test_a_small_or_large_layer_scale_keeps_fp16_weights_in_range(tmp_path: Path, top: float) -> None:
    """A layer scale near its 1e-6 .. 1e-5 initial value, or above 1, times weights of ~0.03 would leave
    fp16's normal range if it were folded into the weights whole (found by an outside review: 2.8e-2 of
    the output's scale at 1e-5): its power-of-two magnitude goes to the fp32 epilogue instead. Also a
    Gemm whose bias reaches it through a host Identity (the review's build crash)."""
    rng = np.random.default_rng(17)
    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    n = helper.make_node
    nodes = [n("Identity", ["b"], ["ba"]), n("Gemm", ["x", "w", "ba"], ["y"], transB=1),
             n("Transpose", ["y"], ["yt"], perm=[1, 0]), n("Mul", ["yt", "gamma"], ["out"])]
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [f("w", rng.standard_normal((48, 64)) * 0.03), f("b", rng.standard_normal(48) * 0.03),
                               f("gamma", top * rng.uniform(0.5, 1.0, (48, 1)))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "s.onnx")
    x = rand(16, 64)
    with EmuLoadedPlan(build_plan(tmp_path / "s.onnx", precision="fp16")) as p:
        assert_close(p.run({"x": x})["out"], reference(tmp_path / "s.onnx", {"x": x})["out"], rel=TOL["fp16"])
        assert _count(p.launch_counts, "binary") == 0, p.launch_counts


@pytest.mark.parametrize("keys", [40, 160])
def test_fp16_attention_with_a_row_masked_by_the_float32_minimum(tmp_path: Path, keys: int) -> None:
    """HF builds masks from finfo(float32).min: a row masked everywhere is a uniform softmax (onnxruntime),
    not NaN. Scores in log2 units must not overflow that mask to -inf (found by an outside review)."""
    mask = np.zeros((1, 1, 8, keys), np.float32)
    mask[..., 0, :] = np.finfo(np.float32).min
    mask[..., 3, : keys // 2] = np.finfo(np.float32).min
    n = helper.make_node
    nodes = [n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q", "kt"], ["s"]),
             n("Add", ["s", "mask"], ["sm"]), n("Softmax", ["sm"], ["p"], axis=-1), n("MatMul", ["p", "v"], ["out"])]
    vi = lambda name, L: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, L, 16])   # noqa: E731
    graph = helper.make_graph(nodes, "am", [vi("q", 8), vi("k", keys), vi("v", keys)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(mask, "mask")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "am.onnx")
    feeds = {"q": rand(1, 2, 8, 16), "k": rand(1, 2, keys, 16), "v": rand(1, 2, keys, 16)}
    ref = reference(tmp_path / "am.onnx", feeds)["out"]
    with EmuLoadedPlan(build_plan(tmp_path / "am.onnx", precision="fp16"), num_sms=132) as p:
        got = p.run(feeds)["out"]
        assert _count(p.launch_counts, "attn_tc") == 1, p.launch_counts
    assert not np.isnan(got).any()
    assert_close(got, ref, rel=TOL["fp16"])


def test_node_names_are_unique_and_free_of_the_derived_weight_separator(tmp_path: Path) -> None:
    """Derived weights are named after their node ("name#cw", "name#w"): an explicit name equal to the name
    an unnamed node gets (``MatMul_2``), or one with a "#", must not make two layers share a weight or
    break the build (found by an outside review)."""
    from rtxpack.backends.nvrtc.onnx_import import import_onnx

    f = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)   # noqa: E731
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["a"], name="MatMul_2"), n("Relu", ["a"], ["b"], name="r#1"),
             n("MatMul", ["b", "w2"], ["out"])]
    graph = helper.make_graph(nodes, "names", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [f("w1", np.ones((4, 4))), f("w2", np.ones((4, 4)))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "n.onnx")
    graph_, _ = import_onnx(tmp_path / "n.onnx")
    names = [nd["name"] for nd in graph_["nodes"]]
    assert len(set(names)) == len(names) and not any("#" in k for k in names), names
