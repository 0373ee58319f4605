"""Small ONNX models generated in code (no downloads): the demo's example, test and bench models.

Not part of the library: nothing under ``rtxpack/core``, ``backends``, ``installer`` or ``farm``
imports this; the demo, the tests and the benchmarks do.

Every generator is deterministic for a given ``seed`` so digests are stable across runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _save(model, path: str | Path) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr), name=name)


def mlp(path: str | Path, *, in_features: int = 64, hidden: Sequence[int] = (128, 64), out_features: int = 10,
        dynamic_batch: bool = True, seed: int = 0, opset: int = 17) -> Path:
    """Gemm/Relu MLP with input ``x`` of shape ``[N, in_features]`` (``N`` dynamic) and output ``y``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    batch = "N" if dynamic_batch else 1
    nodes, inits = [], []
    prev, width = "x", in_features
    for i, h in enumerate(list(hidden) + [out_features]):
        w = (rng.standard_normal((width, h)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(h) * 0.1).astype(np.float32)
        inits += [_init(f"fc{i}.weight", w), _init(f"fc{i}.bias", b)]
        out = "y" if i == len(hidden) else f"fc{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [out if i == len(hidden) else f"{out}.pre"], name=f"fc{i}"))
        if i < len(hidden):
            nodes.append(helper.make_node("Relu", [f"{out}.pre"], [out], name=f"relu{i}"))
        prev, width = out, h
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_features])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rtxpack.examples")
    model.ir_version = 8
    return _save(model, path)


def small_cnn(path: str | Path, *, channels: int = 8, size: int = 32, classes: int = 10,
              dynamic_batch: bool = False, seed: int = 1, opset: int = 17) -> Path:
    """Conv-BN-Relu x2, a residual Add, MaxPool, GlobalAveragePool, Flatten, Gemm.

    Input ``x``: ``[N, 3, size, size]``; output ``y``: ``[N, classes]``.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    batch = "N" if dynamic_batch else 1
    c = channels
    inits = [
        _init("conv0.weight", (rng.standard_normal((c, 3, 3, 3)) * 0.2).astype(np.float32)),
        _init("conv0.bias", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("conv1.weight", (rng.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32)),
        _init("conv1.bias", (rng.standard_normal(c) * 0.1).astype(np.float32)),
        _init("bn1.scale", (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("bn1.bias", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("bn1.mean", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("bn1.var", (1 + 0.1 * rng.random(c)).astype(np.float32)),
        _init("fc.weight", (rng.standard_normal((classes, c)) * 0.3).astype(np.float32)),
        _init("fc.bias", (rng.standard_normal(classes) * 0.1).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv0.weight", "conv0.bias"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["b1"], name="bn1"),
        helper.make_node("Add", ["b1", "r0"], ["a1"], name="residual"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rtxpack.examples")
    model.ir_version = 8
    return _save(model, path)


def reference_run(onnx_path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ``onnx.reference.ReferenceEvaluator`` (the correctness oracle)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(onnx_path))
    sess = ReferenceEvaluator(model)
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(None, inputs)))


# ---------------------------------------------------------------------------------------------
# Larger generators (nvrtc backend tests and benchmark). Weight names follow torchvision's
# state_dict keys so a PyTorch peer can load the very same weights.


def _model(nodes, inits, inputs, outputs, name: str, opset: int):
    from onnx import helper

    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rtxpack.examples")
    model.ir_version = 8
    return model


def _conv_bn(rng, nodes, inits, x: str, prefix: str, conv: str, bn: str, cin: int, cout: int, k: int,
             stride: int = 1, relu: bool = True) -> str:
    """Conv (no bias) -> BatchNormalization [-> Relu], torchvision naming; returns the output name."""
    from onnx import helper

    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    inits.append(_init(f"{prefix}{conv}.weight", w))
    for suffix, arr in (("weight", 0.5 + 0.5 * rng.random(cout)), ("bias", 0.1 * rng.standard_normal(cout)),
                        ("running_mean", 0.1 * rng.standard_normal(cout)), ("running_var", 0.5 + rng.random(cout))):
        inits.append(_init(f"{prefix}{bn}.{suffix}", arr.astype(np.float32)))
    c, b = f"{prefix}{conv}", f"{prefix}{bn}"
    nodes.append(helper.make_node("Conv", [x, f"{c}.weight"], [f"{c}.out"], name=c, kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
    nodes.append(helper.make_node("BatchNormalization", [f"{c}.out", f"{b}.weight", f"{b}.bias", f"{b}.running_mean",
                                                         f"{b}.running_var"], [f"{b}.out"], name=b, epsilon=1e-5))
    if not relu:
        return f"{b}.out"
    nodes.append(helper.make_node("Relu", [f"{b}.out"], [f"{b}.relu"], name=f"{b}.relu"))
    return f"{b}.relu"


def resnet(path: str | Path, *, layers: Sequence[int] = (3, 4, 6, 3), width: int = 64, size: int = 224,
           classes: int = 1000, dynamic_batch: bool = True, seed: int = 2, opset: int = 17) -> Path:
    """Bottleneck ResNet (torchvision v1.5 layout and names). Defaults = ResNet-50 (25.6 M parameters).

    ``resnet(p, layers=(1, 1, 1, 1), width=8, size=32, classes=10)`` is a small ResNet-style CNN with
    BatchNorm, downsample branches and residual adds. Input ``x`` ``[N, 3, size, size]``, output ``y``.
    """
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = _conv_bn(rng, nodes, inits, "x", "", "conv1", "bn1", 3, width, 7, stride=2)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, cin = "pool", width
    for li, blocks in enumerate(layers):
        w = width * 2 ** li
        for bi in range(blocks):
            stride = 2 if (bi == 0 and li > 0) else 1
            p = f"layer{li + 1}.{bi}."
            h = _conv_bn(rng, nodes, inits, x, p, "conv1", "bn1", cin, w, 1)
            h = _conv_bn(rng, nodes, inits, h, p, "conv2", "bn2", w, w, 3, stride=stride)
            h = _conv_bn(rng, nodes, inits, h, p, "conv3", "bn3", w, 4 * w, 1, relu=False)
            short = x
            if bi == 0:
                short = _conv_bn(rng, nodes, inits, x, p, "downsample.0", "downsample.1", cin, 4 * w, 1, stride=stride,
                                 relu=False)
            nodes.append(helper.make_node("Add", [h, short], [p + "add"], name=p + "add"))
            nodes.append(helper.make_node("Relu", [p + "add"], [p + "out"], name=p + "relu"))
            x, cin = p + "out", 4 * w
    inits += [_init("fc.weight", (rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32)),
              _init("fc.bias", (0.01 * rng.standard_normal(classes)).astype(np.float32))]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="avgpool"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1)]
    batch = "N" if dynamic_batch else 1
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], "resnet", opset)
    return _save(model, path)


def inception_block(path: str | Path, *, channels: int = 32, size: int = 16, dynamic_batch: bool = True,
                    seed: int = 3, opset: int = 17) -> Path:
    """GoogLeNet-style block: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1 branches, Concat, LRN, AveragePool."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, name: str, cin: int, cout: int, k: int) -> str:
        inits.append(_init(f"{name}.weight", (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)))
        inits.append(_init(f"{name}.bias", (0.1 * rng.standard_normal(cout)).astype(np.float32)))
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [f"{name}.out"], name=name,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    c = channels
    b1 = conv("x", "b1", c, 16, 1)
    b2 = conv(conv("x", "b2a", c, 16, 1), "b2b", 16, 24, 3)
    b3 = conv(conv("x", "b3a", c, 8, 1), "b3b", 8, 12, 5)
    nodes.append(helper.make_node("MaxPool", ["x"], ["b4p"], name="b4pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    b4 = conv("b4p", "b4", c, 12, 1)
    nodes += [helper.make_node("Concat", [b1, b2, b3, b4], ["cat"], name="concat", axis=1),
              helper.make_node("LRN", ["cat"], ["lrn"], name="lrn", size=5, alpha=1e-4, beta=0.75, bias=1.0),
              helper.make_node("AveragePool", ["lrn"], ["y"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2])]
    batch = "N" if dynamic_batch else 1
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, size, size])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 64, size // 2, size // 2])],
                   "inception_block", opset)
    return _save(model, path)


def transformer_block(path: str | Path, *, seq: int = 16, dim: int = 64, heads: int = 4, ff: int = 128,
                      dynamic_batch: bool = True, seed: int = 4, opset: int = 17) -> Path:
    """Post-LN transformer encoder block as PyTorch exports it: MatMul+Add projections, Shape/Gather/Concat
    driven Reshapes, Transpose, scaled Softmax attention, Erf GELU, residual Adds, LayerNormalization."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    dh = dim // heads

    def lin(x: str, name: str, cin: int, cout: int) -> str:
        inits.append(_init(f"{name}.weight", (rng.standard_normal((cin, cout)) / np.sqrt(cin)).astype(np.float32)))
        inits.append(_init(f"{name}.bias", (0.02 * rng.standard_normal(cout)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}.mm"], name=f"{name}.matmul"))
        nodes.append(helper.make_node("Add", [f"{name}.mm", f"{name}.bias"], [f"{name}.out"], name=f"{name}.add"))
        return f"{name}.out"

    def const(name: str, arr) -> str:
        from onnx import numpy_helper

        value = numpy_helper.from_array(np.array(arr), name=name)  # keeps 0-d scalars 0-d
        nodes.append(helper.make_node("Constant", [], [name], name=name, value=value))
        return name

    # PyTorch-style dynamic head split: shape = [N, S, heads, dh] built from Shape(x)
    nodes += [helper.make_node("Shape", ["x"], ["x.shape"], name="shape"),
              helper.make_node("Gather", ["x.shape", const("c0", np.array(0, np.int64))], ["n"], name="gather_n", axis=0),
              helper.make_node("Gather", ["x.shape", const("c1", np.array(1, np.int64))], ["s"], name="gather_s", axis=0),
              helper.make_node("Unsqueeze", ["n", const("ax0", np.array([0], np.int64))], ["n1"], name="unsq_n"),
              helper.make_node("Unsqueeze", ["s", "ax0"], ["s1"], name="unsq_s"),
              helper.make_node("Concat", ["n1", "s1", const("hd", np.array([heads, dh], np.int64))], ["split_shape"],
                               name="concat_shape", axis=0),
              helper.make_node("Concat", ["n1", "s1", const("dd", np.array([dim], np.int64))], ["merge_shape"],
                               name="concat_merge", axis=0)]
    heads_t = {}
    for t in ("q", "k", "v"):
        p = lin("x", f"attn.{t}", dim, dim)
        nodes.append(helper.make_node("Reshape", [p, "split_shape"], [f"{t}.r"], name=f"{t}.reshape"))
        perm = [0, 2, 3, 1] if t == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"{t}.r"], [f"{t}.t"], name=f"{t}.transpose", perm=perm))
        heads_t[t] = f"{t}.t"
    nodes += [helper.make_node("MatMul", [heads_t["q"], heads_t["k"]], ["scores"], name="qk"),
              helper.make_node("Div", ["scores", const("scale", np.array(np.sqrt(dh), np.float32))], ["scaled"], name="scale"),
              helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
              helper.make_node("MatMul", ["probs", heads_t["v"]], ["ctx"], name="pv"),
              helper.make_node("Transpose", ["ctx"], ["ctx.t"], name="ctx.transpose", perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx.t", "merge_shape"], ["ctx.m"], name="ctx.reshape")]
    o = lin("ctx.m", "attn.out", dim, dim)
    inits += [_init("ln1.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)),
              _init("ln1.bias", (0.1 * rng.standard_normal(dim)).astype(np.float32)),
              _init("ln2.weight", (1 + 0.1 * rng.standard_normal(dim)).astype(np.float32)),
              _init("ln2.bias", (0.1 * rng.standard_normal(dim)).astype(np.float32))]
    nodes += [helper.make_node("Add", ["x", o], ["res1"], name="res1"),
              helper.make_node("LayerNormalization", ["res1", "ln1.weight", "ln1.bias"], ["h1"], name="ln1", axis=-1,
                               epsilon=1e-5)]
    f1 = lin("h1", "ff.fc1", dim, ff)
    nodes += [helper.make_node("Div", [f1, const("sqrt2", np.array(np.sqrt(2.0), np.float32))], ["g.div"], name="gelu.div"),
              helper.make_node("Erf", ["g.div"], ["g.erf"], name="gelu.erf"),
              helper.make_node("Add", ["g.erf", const("one", np.array(1.0, np.float32))], ["g.add"], name="gelu.add"),
              helper.make_node("Mul", [f1, "g.add"], ["g.mul"], name="gelu.mul"),
              helper.make_node("Mul", ["g.mul", const("half", np.array(0.5, np.float32))], ["gelu"], name="gelu.half")]
    f2 = lin("gelu", "ff.fc2", ff, dim)
    nodes += [helper.make_node("Add", ["h1", f2], ["res2"], name="res2"),
              helper.make_node("LayerNormalization", ["res2", "ln2.weight", "ln2.bias"], ["y"], name="ln2", axis=-1,
                               epsilon=1e-5)]
    batch = "N" if dynamic_batch else 1
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, dim])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, dim])], "transformer_block", opset)
    return _save(model, path)


# ---- fp16 variant: TensorRT-RTX is strongly typed, so precision comes from the model's own types, and
# Turing (7.5) refuses FP32 GEMM in TensorRT-RTX 1.7 -- a Turing engine needs an fp16 model.
def fp16_variant(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst``: ``src`` with float32 initializers, inputs and outputs turned into float16."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
