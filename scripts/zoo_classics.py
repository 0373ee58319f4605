"""Reconstructions of four ONNX-model-zoo classics, built with onnx.helper (no torch needed).

The real zoo files (onnx/models: bvlcalexnet-9, vgg19-caffe2-9, squeezenet1.0-8, inception-v1-7)
are Git LFS objects that cannot be fetched here, so these are RECONSTRUCTIONS of their structure as
the Caffe2 -> ONNX converter wrote them: old opsets (7-9), every initializer also listed as a graph
input, 'data_0' input and '<layer>_1' / '<layer>_2' tensor names, Caffe ceil-mode pooling expressed
as explicit asymmetric pads, LRN, grouped convolutions (AlexNet), Dropout with its optional mask
output ('_fc6_mask_1'), a Reshape to [1, N] through an 'OC2_DUMMY_1' int64 initializer before the
classifier, and Softmax at the end. Static batch 1, as the zoo ships them. Weights are random.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

ZOO = {  # corpus name -> (builder, opset, zoo file it reconstructs)
    "zoo_bvlcalexnet-9": ("alexnet", 9, "validated/vision/classification/alexnet/model/bvlcalexnet-9.onnx"),
    "zoo_vgg19-caffe2-9": ("vgg19", 9, "validated/vision/classification/vgg/model/vgg19-caffe2-9.onnx"),
    "zoo_squeezenet1.0-8": ("squeezenet", 8, "validated/vision/classification/squeezenet/model/squeezenet1.0-8.onnx"),
    "zoo_inception-v1-7": ("inception_v1", 7,
                           "validated/vision/classification/inception_and_googlenet/inception_v1/model/inception-v1-7.onnx"),
}


class _G:
    """A tiny Caffe2-style graph builder that tracks spatial sizes for Caffe ceil-mode pooling."""

    def __init__(self, seed: int = 0):
        from onnx import helper

        self.h = helper
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.shape = (1, 3, 224, 224)

    def _w(self, name: str, arr: np.ndarray) -> str:
        self.inits[name] = arr.astype(np.float32)
        return name

    def conv(self, layer: str, x: str, oc: int, k: int, s: int = 1, p: int = 0, group: int = 1, relu: bool = True) -> str:
        n, c, hh, ww = self.shape
        w = self._w(f"{layer}_w_0", self.rng.standard_normal((oc, c // group, k, k)) / math.sqrt(c // group * k * k))
        b = self._w(f"{layer}_b_0", self.rng.normal(0, 0.02, oc))
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
        if group != 1:
            attrs["group"] = group
        if k == 1:   # the converter wrote no pads / strides for 1x1 convolutions
            attrs = {"kernel_shape": [1, 1]}
        self.nodes.append(self.h.make_node("Conv", [x, w, b], [f"{layer}_1"], **attrs))
        self.shape = (n, oc, (hh + 2 * p - k) // s + 1, (ww + 2 * p - k) // s + 1)
        out = f"{layer}_1"
        if relu:
            self.nodes.append(self.h.make_node("Relu", [out], [f"{layer}_2"]))
            out = f"{layer}_2"
        return out

    def pool(self, layer: str, x: str, k: int, s: int, p: int = 0, op: str = "MaxPool") -> str:
        n, c, hh, ww = self.shape
        oh = int(math.ceil((hh + 2 * p - k) / s)) + 1          # Caffe rounds pooled sizes up
        if (oh - 1) * s >= hh + p:
            oh -= 1
        extra = max(0, (oh - 1) * s + k - (hh + 2 * p))
        self.nodes.append(self.h.make_node(op, [x], [f"{layer}_1"], kernel_shape=[k, k], strides=[s, s],
                                           pads=[p, p, p + extra, p + extra]))
        self.shape = (n, c, oh, oh)
        return f"{layer}_1"

    def lrn(self, layer: str, x: str) -> str:
        self.nodes.append(self.h.make_node("LRN", [x], [f"{layer}_1"], size=5, alpha=1e-4, beta=0.75, bias=1.0))
        return f"{layer}_1"

    def concat(self, layer: str, xs: list[str], channels: int) -> str:
        self.nodes.append(self.h.make_node("Concat", xs, [f"{layer}_1"], axis=1))
        self.shape = (self.shape[0], channels, self.shape[2], self.shape[3])
        return f"{layer}_1"

    def dropout(self, layer: str, x: str, ratio: float, mask: str) -> str:
        self.nodes.append(self.h.make_node("Dropout", [x], [f"{layer}_3" if layer.startswith("fc") else f"{layer}_1",
                                                            mask], ratio=ratio))
        return self.nodes[-1].output[0]

    def flatten_fc(self, x: str) -> str:
        n = int(np.prod(self.shape[1:]))
        self.inits["OC2_DUMMY_1"] = np.array([1, n], dtype=np.int64)
        self.nodes.append(self.h.make_node("Reshape", [x, "OC2_DUMMY_1"], ["OC2_DUMMY_0"]))
        self.shape = (1, n)
        return "OC2_DUMMY_0"

    def fc(self, layer: str, x: str, out: int, relu: bool = True) -> str:
        k = self.shape[1]
        w = self._w(f"{layer}_w_0", self.rng.standard_normal((out, k)) / math.sqrt(k))
        b = self._w(f"{layer}_b_0", self.rng.normal(0, 0.02, out))
        self.nodes.append(self.h.make_node("Gemm", [x, w, b], [f"{layer}_1"], transB=1))
        self.shape = (1, out)
        if relu:
            self.nodes.append(self.h.make_node("Relu", [f"{layer}_1"], [f"{layer}_2"]))
            return f"{layer}_2"
        return f"{layer}_1"

    def model(self, name: str, opset: int, out: str, out_shape: list[int]) -> Any:
        from onnx import TensorProto, numpy_helper

        h = self.h
        inits = [numpy_helper.from_array(v, k) for k, v in self.inits.items()]
        inputs = [h.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])]
        inputs += [h.make_tensor_value_info(k, TensorProto.FLOAT if v.dtype == np.float32 else TensorProto.INT64,
                                            list(v.shape)) for k, v in self.inits.items()]
        graph = h.make_graph(self.nodes, name, inputs, [h.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
                             initializer=inits)
        m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="onnx-caffe2",
                         ir_version=3 if opset < 9 else 4)
        return m


def _classifier(g: _G, x: str) -> str:
    """AlexNet's and VGG's head: fc6 and fc7 with Dropout (and its mask output), fc8, Softmax."""
    x = g.dropout("fc6", g.fc("fc6", x, 4096), 0.5, "_fc6_mask_1")
    x = g.dropout("fc7", g.fc("fc7", x, 4096), 0.5, "_fc7_mask_1")
    x = g.fc("fc8", x, 1000, relu=False)
    g.nodes.append(g.h.make_node("Softmax", [x], ["prob_1"]))
    return "prob_1"


def alexnet(g: _G) -> str:
    x = g.conv("conv1", "data_0", 96, 11, s=4)
    x = g.pool("pool1", g.lrn("norm1", x), 3, 2)
    x = g.conv("conv2", x, 256, 5, p=2, group=2)
    x = g.pool("pool2", g.lrn("norm2", x), 3, 2)
    x = g.conv("conv3", x, 384, 3, p=1)
    x = g.conv("conv4", x, 384, 3, p=1, group=2)
    x = g.conv("conv5", x, 256, 3, p=1, group=2)
    x = g.flatten_fc(g.pool("pool5", x, 3, 2))
    return _classifier(g, x)


def vgg19(g: _G) -> str:
    x = "data_0"
    for stage, (n, ch) in enumerate(((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)), 1):
        for i in range(1, n + 1):
            x = g.conv(f"conv{stage}_{i}", x, ch, 3, p=1)
        x = g.pool(f"pool{stage}", x, 2, 2)
    x = g.flatten_fc(x)
    return _classifier(g, x)


def squeezenet(g: _G) -> str:
    x = g.pool("pool1", g.conv("conv1", "data_0", 96, 7, s=2), 3, 2)

    def fire(i: int, x: str, sq: int, ex: int) -> str:
        s = g.conv(f"fire{i}/squeeze1x1", x, sq, 1)
        shape = g.shape
        a = g.conv(f"fire{i}/expand1x1", s, ex, 1)
        g.shape = shape
        b = g.conv(f"fire{i}/expand3x3", s, ex, 3, p=1)
        return g.concat(f"fire{i}/concat", [a, b], 2 * ex)

    x = fire(3, fire(2, x, 16, 64), 16, 64)
    x = g.pool("pool4", fire(4, x, 32, 128), 3, 2)
    x = fire(7, fire(6, fire(5, x, 32, 128), 48, 192), 48, 192)
    x = g.pool("pool8", fire(8, x, 64, 256), 3, 2)
    x = g.dropout("fire9/concat_drop", fire(9, x, 64, 256), 0.5, "_fire9/concat_mask_1")
    x = g.conv("conv10", x, 1000, 1)
    g.nodes.append(g.h.make_node("GlobalAveragePool", [x], ["pool10_1"]))
    g.nodes.append(g.h.make_node("Softmax", ["pool10_1"], ["softmaxout_1"]))
    g.shape = (1, 1000, 1, 1)
    return "softmaxout_1"


def inception_v1(g: _G) -> str:
    x = g.conv("conv1/7x7_s2", "data_0", 64, 7, s=2, p=3)
    x = g.lrn("pool1/norm1", g.pool("pool1/3x3_s2", x, 3, 2))
    x = g.conv("conv2/3x3_reduce", x, 64, 1)
    x = g.lrn("conv2/norm2", g.conv("conv2/3x3", x, 192, 3, p=1))
    x = g.pool("pool2/3x3_s2", x, 3, 2)

    def block(name: str, x: str, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int) -> str:
        shape = g.shape
        a = g.conv(f"{name}/1x1", x, c1, 1)
        g.shape = shape
        b = g.conv(f"{name}/3x3", g.conv(f"{name}/3x3_reduce", x, c3r, 1), c3, 3, p=1)
        g.shape = shape
        c = g.conv(f"{name}/5x5", g.conv(f"{name}/5x5_reduce", x, c5r, 1), c5, 5, p=2)
        g.shape = shape
        d = g.conv(f"{name}/pool_proj", g.pool(f"{name}/pool", x, 3, 1, p=1), pp, 1)
        return g.concat(f"{name}/output", [a, b, c, d], c1 + c3 + c5 + pp)

    x = block("inception_3a", x, 64, 96, 128, 16, 32, 32)
    x = block("inception_3b", x, 128, 128, 192, 32, 96, 64)
    x = g.pool("pool3/3x3_s2", x, 3, 2)
    for name, cfg in (("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
                      ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
                      ("4e", (256, 160, 320, 32, 128, 128))):
        x = block(f"inception_{name}", x, *cfg)
    x = g.pool("pool4/3x3_s2", x, 3, 2)
    x = block("inception_5a", x, 256, 160, 320, 32, 128, 128)
    x = block("inception_5b", x, 384, 192, 384, 48, 128, 128)
    x = g.pool("pool5/7x7_s1", x, 7, 1, op="AveragePool")
    x = g.dropout("pool5/drop_7x7_s1", x, 0.4, "_pool5/drop_7x7_s1_mask_1")
    x = g.fc("loss3/classifier", g.flatten_fc(x), 1000, relu=False)
    g.nodes.append(g.h.make_node("Softmax", [x], ["prob_1"]))
    return "prob_1"


BUILDERS: dict[str, Callable[[_G], str]] = {"alexnet": alexnet, "vgg19": vgg19, "squeezenet": squeezenet,
                                            "inception_v1": inception_v1}


def build(name: str, seed: int = 0) -> Any:
    """The full (random-weight) reconstruction of corpus model ``name`` (a key of ZOO)."""
    import onnx

    kind, opset, _ = ZOO[name]
    g = _G(seed)
    out = BUILDERS[kind](g)
    m = g.model(name.replace("zoo_", ""), opset, out, list(g.shape))
    onnx.checker.check_model(m)
    return m
