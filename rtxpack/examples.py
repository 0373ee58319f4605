"""Small ONNX models generated in code (no downloads): the embedded example, test and bench models.

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
