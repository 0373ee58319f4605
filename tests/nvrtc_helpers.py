"""Helpers for the nvrtc backend tests: single-operator ONNX models, the reference oracle, GPU probe."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

RNG = np.random.default_rng(1234)


@lru_cache(maxsize=1)
def local_cc() -> str | None:
    """Compute capability of GPU 0 ("9.0"), or None when there is no usable GPU/driver."""
    try:
        from cuda.bindings import driver as cu

        (err,) = cu.cuInit(0)
        if err != cu.CUresult.CUDA_SUCCESS:
            return None
        err, n = cu.cuDeviceGetCount()
        if err != cu.CUresult.CUDA_SUCCESS or n < 1:
            return None
        err, dev = cu.cuDeviceGet(0)
        A = cu.CUdevice_attribute
        _, major = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        _, minor = cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        return f"{major}.{minor}"
    except Exception:  # noqa: BLE001 - no driver library = no GPU
        return None


def rand(*shape: int, positive: bool = False) -> np.ndarray:
    a = RNG.standard_normal(shape).astype(np.float32)
    return (np.abs(a) + 0.5).astype(np.float32) if positive else a


def op_model(path: Path, op: str, inputs: dict[str, np.ndarray], *, inits: dict[str, np.ndarray] | None = None,
             extra_inputs: list[str] | None = None, n_outputs: int = 1, opset: int = 17, dynamic_batch: bool = False,
             pre: list | None = None, out_dtypes: list | None = None, node_inputs: list | None = None,
             **attrs: Any) -> Path:
    """A one-node model ``op(*inputs, *extra_inputs)``; ``inits`` become initializers (weights)."""
    import onnx
    from onnx import helper, numpy_helper

    inits = inits or {}
    graph_inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype),
                                                  (["N"] + list(v.shape[1:])) if dynamic_batch else list(v.shape))
                    for k, v in inputs.items()]
    names = list(node_inputs) if node_inputs is not None else list(inputs) + list(extra_inputs or [])
    outs = [f"y{i}" for i in range(n_outputs)]
    nodes = list(pre or []) + [helper.make_node(op, names, outs, name=f"the_{op.lower()}", **attrs)]
    graph = helper.make_graph(nodes, f"op_{op}", graph_inputs,
                              [helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(np.dtype(d)), None)
                               for o, d in zip(outs, out_dtypes or ["float32"] * len(outs))],
                              [numpy_helper.from_array(np.array(v), name=k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))  # outputs have no declared shape, which the checker dislikes
    return path


def i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def op_cases() -> list[tuple[str, Callable[[Path], tuple[Path, dict[str, np.ndarray]]]]]:
    """(case id, builder(tmpdir) -> (onnx path, inputs)) for every supported operator."""
    from onnx import helper

    cases: list = []

    def case(cid: str, op: str, inputs: dict, **kw):
        def build(tmp: Path):
            return op_model(tmp / f"{cid}.onnx", op, inputs, **kw), inputs
        cases.append((cid, build))

    x4 = rand(2, 8, 9, 9)
    case("conv3x3", "Conv", {"x": x4}, extra_inputs=["w", "b"], inits={"w": rand(16, 8, 3, 3), "b": rand(16)},
         pads=[1, 1, 1, 1])
    case("conv_groups_stride_dil", "Conv", {"x": x4}, extra_inputs=["w"], inits={"w": rand(16, 4, 3, 3)}, group=2,
         strides=[2, 2], dilations=[2, 2], pads=[2, 1, 2, 1])
    case("conv_depthwise", "Conv", {"x": x4}, extra_inputs=["w", "b"], inits={"w": rand(8, 1, 3, 3), "b": rand(8)},
         group=8, pads=[1, 1, 1, 1])
    # depthwise (conv_dw): 5x5 stride 2 with uneven pads and rows not a multiple of its 4 outputs a thread,
    # ConvNeXt's 7x7, a SAME_UPPER 3x3 stride 2
    case("conv_dw5_s2", "Conv", {"x": rand(2, 6, 11, 13)}, extra_inputs=["w", "b"],
         inits={"w": rand(6, 1, 5, 5), "b": rand(6)}, group=6, strides=[2, 2], pads=[2, 1, 2, 2])
    case("conv_dw7", "Conv", {"x": rand(1, 5, 9, 10)}, extra_inputs=["w", "b"], inits={"w": rand(5, 1, 7, 7), "b": rand(5)},
         group=5, pads=[3, 3, 3, 3])
    case("conv_dw3_s2_same", "Conv", {"x": rand(1, 4, 8, 7)}, extra_inputs=["w"], inits={"w": rand(4, 1, 3, 3)},
         group=4, strides=[2, 2], auto_pad="SAME_UPPER")
    case("conv_dw_dilated", "Conv", {"x": rand(1, 4, 9, 9)}, extra_inputs=["w", "b"],      # conv_direct: dilation
         inits={"w": rand(4, 1, 3, 3), "b": rand(4)}, group=4, dilations=[2, 2], pads=[2, 2, 2, 2])
    case("conv1x1", "Conv", {"x": x4}, extra_inputs=["w", "b"], inits={"w": rand(72, 8, 1, 1), "b": rand(72)})
    case("conv_same_upper", "Conv", {"x": x4}, extra_inputs=["w"], inits={"w": rand(12, 8, 4, 4)}, auto_pad="SAME_UPPER",
         strides=[2, 2])
    case("conv_asym_pads_5x3", "Conv", {"x": rand(1, 3, 20, 17)}, extra_inputs=["w", "b"],
         inits={"w": rand(70, 3, 5, 3), "b": rand(70)}, pads=[2, 0, 1, 1], strides=[1, 2])
    case("gemm", "Gemm", {"a": rand(5, 33)}, extra_inputs=["b", "c"], inits={"b": rand(33, 70), "c": rand(70)})
    case("gemm_trans_alpha_beta", "Gemm", {"a": rand(33, 5)}, extra_inputs=["b", "c"],
         inits={"b": rand(70, 33), "c": rand(5, 70)}, transA=1, transB=1, alpha=0.5, beta=2.0)
    case("gemm_activations", "Gemm", {"a": rand(130, 40), "b": rand(40, 90)}, transA=0)
    case("matmul_2d", "MatMul", {"a": rand(7, 65), "b": rand(65, 130)})
    case("matmul_batched", "MatMul", {"a": rand(3, 4, 17, 32), "b": rand(3, 4, 32, 9)})
    case("matmul_broadcast", "MatMul", {"a": rand(2, 1, 5, 8), "b": rand(3, 8, 6)})
    case("matmul_weight", "MatMul", {"a": rand(2, 10, 24)}, extra_inputs=["w"], inits={"w": rand(24, 40)})
    case("matmul_1d", "MatMul", {"a": rand(24), "b": rand(3, 24, 5)})
    for op in ("Add", "Sub", "Mul", "Div"):
        case(f"{op.lower()}_broadcast", op, {"a": rand(2, 3, 4, 5), "b": rand(3, 1, 5, positive=op == "Div")})
    case("add_scalar_const", "Add", {"a": rand(4, 6)}, extra_inputs=["c"], inits={"c": np.array(1.5, np.float32)})
    case("pow", "Pow", {"a": rand(3, 7, positive=True), "b": rand(7)})
    case("pow_square", "Pow", {"a": rand(3, 7)}, extra_inputs=["e"], inits={"e": np.array(2.0, np.float32)})
    case("sqrt", "Sqrt", {"a": rand(5, 9, positive=True)})
    for op in ("Relu", "Sigmoid", "Tanh", "Erf", "Identity"):
        case(op.lower(), op, {"a": rand(4, 33)})
    case("leakyrelu", "LeakyRelu", {"a": rand(4, 33)}, alpha=0.2)
    case("gelu", "Gelu", {"a": rand(4, 33)}, opset=20)
    case("gelu_tanh", "Gelu", {"a": rand(4, 33)}, opset=20, approximate="tanh")
    case("clip", "Clip", {"a": rand(4, 33)}, extra_inputs=["lo", "hi"],
         inits={"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)})
    case("clip_max_only", "Clip", {"a": rand(4, 33)}, extra_inputs=["", "hi"], inits={"hi": np.array(0.3, np.float32)})
    case("dropout", "Dropout", {"a": rand(4, 33)})
    case("softmax_last", "Softmax", {"a": rand(3, 5, 300)})
    case("softmax_axis1", "Softmax", {"a": rand(3, 5, 7)}, axis=1)
    case("softmax_opset11", "Softmax", {"a": rand(3, 5, 7)}, axis=1, opset=11)
    case("batchnorm", "BatchNormalization", {"x": x4}, extra_inputs=["s", "b", "m", "v"],
         inits={"s": rand(8), "b": rand(8), "m": rand(8), "v": rand(8, positive=True)}, epsilon=1e-3)
    case("layernorm", "LayerNormalization", {"x": rand(2, 6, 48)}, extra_inputs=["s", "b"],
         inits={"s": rand(48), "b": rand(48)})
    case("layernorm_axis_m2", "LayerNormalization", {"x": rand(2, 6, 20)}, extra_inputs=["s"],
         inits={"s": rand(6, 20)}, axis=-2)
    # a transformer's width, rows shorter than a warp, rows longer than the block (several per thread)
    case("layernorm_768", "LayerNormalization", {"x": rand(9, 768)}, extra_inputs=["s", "b"],
         inits={"s": rand(768), "b": rand(768)})
    case("layernorm_short_rows", "LayerNormalization", {"x": rand(5, 7, 13)}, extra_inputs=["s", "b"],
         inits={"s": rand(13), "b": rand(13)}, epsilon=1e-6)
    case("layernorm_long_rows", "LayerNormalization", {"x": rand(3, 2100)}, extra_inputs=["s"],
         inits={"s": rand(2100)})
    case("maxpool", "MaxPool", {"x": x4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    case("maxpool_ceil_dil", "MaxPool", {"x": x4}, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[2, 1])
    case("avgpool", "AveragePool", {"x": x4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    case("avgpool_incl_pad", "AveragePool", {"x": x4}, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
         count_include_pad=1)
    case("globalavgpool", "GlobalAveragePool", {"x": x4})
    case("flatten", "Flatten", {"x": x4}, axis=2)
    case("reshape", "Reshape", {"x": x4}, extra_inputs=["s"], inits={"s": i64(0, -1, 9)})
    case("transpose", "Transpose", {"x": x4}, perm=[0, 2, 3, 1])
    case("concat", "Concat", {"a": rand(2, 3, 5), "b": rand(2, 4, 5), "c": rand(2, 1, 5)}, axis=1)
    case("concat_last", "Concat", {"a": rand(2, 3, 5), "b": rand(2, 3, 2)}, axis=-1)
    case("split", "Split", {"x": rand(4, 10, 3)}, extra_inputs=["s"], inits={"s": i64(3, 7)}, axis=1, n_outputs=2)
    case("split_equal", "Split", {"x": rand(4, 9)}, axis=1, n_outputs=3, opset=18, num_outputs=3)
    case("slice", "Slice", {"x": rand(6, 10, 8)}, extra_inputs=["st", "en", "ax", "sp"],
         inits={"st": i64(1, -1), "en": i64(9, 0), "ax": i64(1, 2), "sp": i64(2, -2)})
    case("squeeze", "Squeeze", {"x": rand(3, 1, 5, 1)}, extra_inputs=["ax"], inits={"ax": i64(1)})
    case("unsqueeze", "Unsqueeze", {"x": rand(3, 5)}, extra_inputs=["ax"], inits={"ax": i64(0, 3)})
    case("sum", "Sum", {"a": rand(2, 3, 4), "b": rand(3, 4), "c": rand(2, 1, 4)})
    case("gather_axis0", "Gather", {"x": rand(10, 6)}, extra_inputs=["i"], inits={"i": i64(3, 0, -1, 3)})
    case("gather_axis1", "Gather", {"x": rand(2, 10, 6)}, extra_inputs=["i"], inits={"i": np.array([[1, 2], [9, 0]])},
         axis=1)
    case("reducemean_last", "ReduceMean", {"x": rand(3, 4, 50)}, axes=[-1])
    case("reducemean_hw_nokeep", "ReduceMean", {"x": x4}, axes=[2, 3], keepdims=0)
    case("reducemean_opset18", "ReduceMean", {"x": rand(3, 4, 5)}, extra_inputs=["ax"], inits={"ax": i64(1)},
         opset=18)
    case("lrn", "LRN", {"x": x4}, size=3, alpha=1e-3, beta=0.75, bias=2.0)
    case("expand", "Expand", {"x": rand(3, 1)}, extra_inputs=["s"], inits={"s": i64(2, 3, 4)})
    # host-side ops feeding the GPU: Constant, Shape, ConstantOfShape
    case("constant_add", "Add", {"a": rand(3, 4)}, extra_inputs=["k"],
         pre=[helper.make_node("Constant", [], ["k"], value_floats=[1.0, 2.0, 3.0, 4.0])])
    case("shape_constantofshape", "Add", {"a": rand(3, 4)}, extra_inputs=["z"],
         pre=[helper.make_node("Shape", ["a"], ["sh"]),
              helper.make_node("ConstantOfShape", ["sh"], ["z"],
                               value=helper.make_tensor("v", 1, [1], [0.25]))])

    # ---- operators of exported models (issue 12): typed elementwise, selection, indexing, resize, norms
    for op in ("HardSwish", "Sin", "Cos", "Exp", "Neg", "Abs", "Floor", "Ceil", "Softplus", "Sign", "Reciprocal"):
        case(op.lower(), op, {"a": rand(4, 33)})
    case("log", "Log", {"a": rand(4, 33, positive=True)})
    case("hardsigmoid", "HardSigmoid", {"a": rand(4, 33)}, alpha=0.3, beta=0.4)
    case("elu", "Elu", {"a": rand(4, 33)}, alpha=0.7)
    nan = rand(5, 7)
    nan[1, 2] = np.nan
    nan[3, 4] = np.inf
    case("isnan", "IsNaN", {"a": nan}, out_dtypes=["bool"])
    case("isinf", "IsInf", {"a": nan}, out_dtypes=["bool"])
    b1 = RNG.random((4, 6)) > 0.5
    b2 = RNG.random((1, 6)) > 0.5
    case("not", "Not", {"a": b1}, out_dtypes=["bool"])
    for op in ("And", "Or", "Xor"):
        case(op.lower(), op, {"a": b1, "b": b2}, out_dtypes=["bool"])
    ints = RNG.integers(-9, 9, (3, 5)).astype(np.int64)
    ints2 = RNG.integers(-9, 9, (1, 5)).astype(np.int64)
    for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"):
        case(f"{op.lower()}_int64", op, {"a": ints, "b": ints2}, out_dtypes=["bool"])
    case("less_float", "Less", {"a": rand(3, 5), "b": rand(5)}, out_dtypes=["bool"])
    case("cast_f2i", "Cast", {"a": rand(3, 5) * 4}, to=7, out_dtypes=["int64"])
    case("cast_i2f", "Cast", {"a": ints}, to=1)
    case("cast_i2b", "Cast", {"a": ints}, to=9, out_dtypes=["bool"])
    case("cast_b2f", "Cast", {"a": b1}, to=1)
    case("add_int64", "Add", {"a": ints, "b": ints2}, out_dtypes=["int64"])
    case("mul_int64_const", "Mul", {"a": ints}, extra_inputs=["k"], inits={"k": np.array(3, np.int64)},
         out_dtypes=["int64"])
    case("mod_int64", "Mod", {"a": ints, "b": np.array([[3, -4, 5, -2, 7]], np.int64)}, out_dtypes=["int64"])
    case("fmod_float", "Mod", {"a": rand(3, 5) * 5, "b": rand(5, positive=True)}, fmod=1)
    case("max3", "Max", {"a": rand(3, 5), "b": rand(5), "c": rand(3, 1)})
    case("min2", "Min", {"a": rand(3, 5), "b": rand(3, 5)})
    case("mean2", "Mean", {"a": rand(3, 5), "b": rand(5)})
    case("prelu", "PRelu", {"a": rand(2, 4, 3, 3)}, extra_inputs=["s"], inits={"s": rand(4, 1, 1)})
    case("pow_int_exponent", "Pow", {"a": rand(3, 7)}, extra_inputs=["e"], inits={"e": np.array(3, np.int64)})
    case("where", "Where", {"c": b1, "x": rand(4, 6), "y": rand(1, 6)})
    case("where_int64", "Where", {"c": b2, "x": RNG.integers(0, 9, (4, 6)).astype(np.int64)}, extra_inputs=["y"],
         inits={"y": np.array(-1, np.int64)}, out_dtypes=["int64"])
    case("gather_int64_data", "Gather", {"x": ints}, extra_inputs=["i"], inits={"i": i64(2, 0)},
         out_dtypes=["int64"])
    case("gather_int32_idx", "Gather", {"x": rand(10, 6)}, extra_inputs=["i"],
         inits={"i": np.array([3, 9, 0], np.int32)})
    case("gather_device_idx", "Gather", {"x": rand(10, 6), "i": RNG.integers(0, 10, (2, 3)).astype(np.int64)})
    case("gather_elements", "GatherElements", {"x": rand(4, 5), "i": RNG.integers(-5, 5, (4, 3)).astype(np.int64)},
         axis=1)
    case("gather_nd", "GatherND", {"x": rand(4, 5, 6), "i": RNG.integers(0, 4, (3, 2)).astype(np.int64)})
    case("gather_nd_batch", "GatherND", {"x": rand(2, 5, 6), "i": RNG.integers(0, 5, (2, 3, 1)).astype(np.int64)},
         batch_dims=1)
    case("scatter_nd", "ScatterND", {"x": rand(6, 4), "u": rand(2, 4)}, inits={"i": np.array([[4], [1]], np.int64)},
         node_inputs=["x", "i", "u"])
    case("tile", "Tile", {"x": rand(2, 3)}, extra_inputs=["r"], inits={"r": i64(2, 3)})
    case("pad_constant", "Pad", {"x": rand(2, 3, 4)}, extra_inputs=["p", "v"],
         inits={"p": i64(0, 1, 2, 0, 2, 1), "v": np.array(1.5, np.float32)})
    case("pad_reflect", "Pad", {"x": rand(1, 2, 5, 6)}, extra_inputs=["p"], inits={"p": i64(0, 0, 2, 3, 0, 0, 1, 2)},
         mode="reflect")
    case("pad_edge", "Pad", {"x": rand(1, 2, 5, 6)}, extra_inputs=["p"], inits={"p": i64(0, 0, 2, 3, 0, 0, 1, 2)},
         mode="edge")
    x_img = rand(1, 3, 5, 7)
    case("resize_nearest_asym", "Resize", {"x": x_img}, extra_inputs=["", "s"],
         inits={"s": np.array([1, 1, 2, 2], np.float32)}, mode="nearest",
         coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    case("resize_nearest_half", "Resize", {"x": x_img}, extra_inputs=["", "", "z"],
         inits={"z": i64(1, 3, 9, 11)}, mode="nearest")
    case("resize_linear_half", "Resize", {"x": x_img}, extra_inputs=["", "s"],
         inits={"s": np.array([1, 1, 2, 2], np.float32)}, mode="linear")
    case("resize_linear_align", "Resize", {"x": x_img}, extra_inputs=["", "", "z"],
         inits={"z": i64(1, 3, 8, 12)}, mode="linear", coordinate_transformation_mode="align_corners")
    case("resize_linear_pytorch", "Resize", {"x": x_img}, extra_inputs=["", "", "z"],
         inits={"z": i64(1, 3, 3, 4)}, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    case("instance_norm", "InstanceNormalization", {"x": rand(2, 4, 5, 6)}, extra_inputs=["s", "b"],
         inits={"s": rand(4), "b": rand(4)}, epsilon=1e-5)
    case("group_norm", "GroupNormalization", {"x": rand(2, 6, 5, 4)}, extra_inputs=["s", "b"],
         inits={"s": rand(6), "b": rand(6)}, num_groups=3, epsilon=1e-5, opset=21)
    case("reduce_sum", "ReduceSum", {"x": rand(3, 4, 5)}, extra_inputs=["ax"], inits={"ax": i64(1)})
    case("reduce_max_nonadjacent", "ReduceMax", {"x": rand(3, 4, 5)}, axes=[0, 2], keepdims=0, opset=17)
    case("reduce_min_all", "ReduceMin", {"x": rand(3, 4, 5)}, keepdims=1)
    case("reduce_prod", "ReduceProd", {"x": rand(3, 4, 5, positive=True)}, axes=[2])
    case("reduce_l2", "ReduceL2", {"x": rand(3, 4, 5)}, axes=[1, 2])
    case("reduce_logsumexp", "ReduceLogSumExp", {"x": rand(3, 40)}, axes=[1])
    case("reduce_sum_int64", "ReduceSum", {"x": ints}, extra_inputs=["ax"], inits={"ax": i64(1)},
         out_dtypes=["int64"])
    case("reducemean_nonadjacent", "ReduceMean", {"x": rand(3, 4, 5)}, axes=[0, 2])
    case("global_maxpool", "GlobalMaxPool", {"x": x4})
    case("argmax", "ArgMax", {"x": rand(3, 7)}, axis=1, out_dtypes=["int64"])
    case("argmin_keep", "ArgMin", {"x": rand(3, 7, 2)}, axis=1, keepdims=1, out_dtypes=["int64"])
    case("cumsum", "CumSum", {"x": rand(3, 6)}, extra_inputs=["ax"], inits={"ax": np.array(1, np.int64)})
    case("cumsum_int64_exclusive_reverse", "CumSum", {"x": ints}, extra_inputs=["ax"],
         inits={"ax": np.array(1, np.int64)},
         exclusive=1, reverse=1, out_dtypes=["int64"])
    case("conv_transpose", "ConvTranspose", {"x": rand(1, 4, 5, 6)}, extra_inputs=["w", "b"],
         inits={"w": rand(4, 3, 3, 3), "b": rand(3)}, strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 0])
    case("conv_transpose_groups", "ConvTranspose", {"x": rand(2, 4, 4, 4)}, extra_inputs=["w"],
         inits={"w": rand(4, 1, 2, 2)}, strides=[2, 2], group=4)
    case("conv_transpose_1d", "ConvTranspose", {"x": rand(2, 3, 9)}, extra_inputs=["w"], inits={"w": rand(3, 5, 4)},
         strides=[2], pads=[1, 1])
    case("conv1d", "Conv", {"x": rand(2, 6, 30)}, extra_inputs=["w", "b"], inits={"w": rand(16, 6, 3), "b": rand(16)},
         pads=[1, 1], strides=[2])
    case("conv1d_igemm", "Conv", {"x": rand(2, 16, 40)}, extra_inputs=["w"], inits={"w": rand(32, 16, 5)},
         pads=[2, 2])
    case("einsum_bmm", "Einsum", {"a": rand(2, 3, 4), "b": rand(2, 4, 5)}, equation="bij,bjk->bik")
    case("einsum_attention", "Einsum", {"a": rand(2, 3, 5, 8), "b": rand(2, 3, 6, 8)}, equation="bhqd,bhkd->bhqk")
    case("einsum_permute", "Einsum", {"a": rand(2, 3, 4)}, equation="ijk->kij")
    case("transpose_int64", "Transpose", {"x": ints}, perm=[1, 0], out_dtypes=["int64"])
    case("concat_bool", "Concat", {"a": b1, "b": b1}, axis=0, out_dtypes=["bool"])
    case("dropout_mask", "Dropout", {"a": rand(4, 33)}, n_outputs=2, out_dtypes=["float32", "bool"])
    case("embedding_int64_input", "Gather", {"i": RNG.integers(0, 10, (2, 3)).astype(np.int64)},
         inits={"w": rand(10, 6)}, node_inputs=["w", "i"])
    return cases


def reference(onnx_path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``onnx.reference.ReferenceEvaluator`` outputs, with its LRN replaced by a spec-conforming one.

    onnx 1.23's reference LRN loops ``for c in range(x.shape[0])`` (the batch size) instead of the
    channel count, so it is wrong (or raises) whenever N != C; everything else is the stock oracle.
    """
    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class LRN(OpRun):
        def _run(self, x, alpha=None, beta=None, bias=None, size=None):
            c1, c2 = (size - 1) // 2, -(-(size - 1) // 2) + 1
            sq = np.zeros_like(x)
            for c in range(x.shape[1]):
                sq[:, c] = np.sum(x[:, max(0, c - c1):min(x.shape[1], c + c2)] ** 2, axis=1)
            return ((x / ((bias + (alpha / size) * sq) ** beta)).astype(x.dtype),)

    model = onnx.load(str(onnx_path))
    names = [o.name for o in model.graph.output]
    return dict(zip(names, ReferenceEvaluator(model, new_ops=[LRN]).run(None, inputs)))


def softmax_coerced_2d(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax-1/11 semantics (input coerced to 2-D at ``axis``); onnx.reference applies the
    opset-13 per-axis rule to every opset, so opset-11 models are checked against this instead."""
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1).astype(np.float64)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape).astype(np.float32)


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> float:
    """max |got - ref| <= rel * max(|ref|) (the output's scale); returns the error ratio."""
    got, ref = np.asarray(got), np.asarray(ref)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    assert err <= rel * max(scale, 1e-6), f"max abs error {err:.3g} > {rel} x scale {scale:.3g}"
    return err / max(scale, 1e-30)
