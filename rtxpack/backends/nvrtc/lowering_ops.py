"""Planning of the operators beyond GEMM/convolution/pooling: typed elementwise ops, Where, Cast,
indexing (Gather*, ScatterND, Tile, Pad), Resize, Instance/GroupNormalization, reductions, CumSum,
ConvTranspose, Einsum and Dropout's mask.

:func:`plan` returns ``(output shapes, launches, scratch)`` for the nodes it handles and None for the
rest (``lowering`` plans those); element types come from ``node["in_dtypes"]``/``node["out_dtypes"]``
(filled in by ``schedule``). Float32 elementwise ops keep the original ``unary``/``binary``
families, so plans built before these existed still find their kernels.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel
from .dtypes import ITEMSIZE, TYPE_CODES
from .host_ops import attr_or_input
from .kernels import BINARY_OPS, UNARY_OPS, KernelSpec
from .launch import Launch, Shape, blocks, broadcast, bstrides, collapse, i6, rowthreads, strides_of

HV = Callable[[str], "np.ndarray | None"]
Planned = tuple[list[Shape], list[Launch], dict[str, Any]]

#: ew1 op codes (kernels_ops.py) of the unary ops, with (a, b) defaults from attributes
EW1 = {"Cast": 0, "CastLike": 0, "Neg": 1, "Abs": 2, "Not": 3, "IsNaN": 4, "IsInf": 5, "Sin": 6, "Cos": 7, "Exp": 8,
       "Log": 9, "Reciprocal": 10, "Floor": 11, "Ceil": 12, "HardSigmoid": 13, "HardSwish": 14, "Softplus": 15,
       "Elu": 16, "Sign": 17, "Round": 18, "Tan": 19, "Softsign": 20, "Mish": 21, "Selu": 22, "Celu": 23,
       "ThresholdedRelu": 24, "Relu": 25, "Sigmoid": 26, "Tanh": 27, "Sqrt": 28, "Erf": 29, "Identity": 30,
       "Asin": 31, "Acos": 32, "Atan": 33, "Sinh": 34, "Cosh": 35}
EW2 = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Max": 5, "Min": 6, "Mod": 7, "And": 9, "Or": 10,
       "Xor": 11, "Equal": 12, "Less": 13, "Greater": 14, "LessOrEqual": 15, "GreaterOrEqual": 16, "PRelu": 17,
       "BitShift": 18}
REDUCE = {"ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3, "ReduceProd": 4, "ReduceL1": 5,
          "ReduceL2": 6, "ReduceSumSquare": 7, "ReduceLogSumExp": 8, "ReduceLogSum": 9, "GlobalMaxPool": 2}
RESIZE_COORD = {"half_pixel": 0, "asymmetric": 1, "align_corners": 2, "pytorch_half_pixel": 3,
                "tf_half_pixel_for_nn": 4, "half_pixel_symmetric": 0}
RESIZE_NEAREST = {"round_prefer_floor": 0, "round_prefer_ceil": 1, "floor": 2, "ceil": 3}
PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2, "wrap": 3}



def _dt(node: Mapping[str, Any], i: int, out: bool = False) -> str:
    dts = node.get("out_dtypes" if out else "in_dtypes") or ()
    return (dts[i] if i < len(dts) else None) or "float32"


def _tc(name: str) -> int:
    return TYPE_CODES[name]


def _n(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _ew2(node: Mapping[str, Any], code: int, a: str, b: str, y: str, sa: Shape, sb: Shape, ta: str, tb: str,
         ty: str) -> tuple[Shape, Launch]:
    out = broadcast(sa, sb)
    dims, (xa, xb, _) = collapse(out, bstrides(sa, out), bstrides(sb, out), strides_of(out))
    n = _n(out)
    if code in BINARY_OPS.values() and ta == tb == ty == "float32" and code != 5:
        spec = KernelSpec("binary", (code,))   # the original float family
        return out, Launch(spec, blocks(n), 256, [a, b, y, n, len(dims), i6(dims, node), i6(xa, node), i6(xb, node)])
    return out, Launch(KernelSpec("ew2", (code, _tc(ta), _tc(tb), _tc(ty))), blocks(n), 256,
                       [a, b, y, n, len(dims), i6(dims, node), i6(xa, node), i6(xb, node)])


def _copy(node: Mapping[str, Any], src: str, dst: str, shape: Sequence[int], sx: Sequence[int], sy: Sequence[int],
          ox: int = 0, oy: int = 0, size: int | None = None) -> Launch:
    dims, (cx, cy) = collapse(shape, sx, sy)
    n = _n(shape)
    size = size or ITEMSIZE[_dt(node, 0, out=True)]
    spec = KernelSpec("strided_copy") if size == 4 else KernelSpec("strided_copy_b", (size,))
    return Launch(spec, blocks(n), 256, [src, dst, n, len(dims), i6(dims, node), i6(cx, node), i6(cy, node), ox, oy])


GemmPlanner = Callable[[Mapping[str, Any], Sequence[Shape], int], Planned]


def handled_ops() -> frozenset[str]:
    """The operators this module plans whatever their element type."""
    return frozenset(_PLANNERS) | {"Einsum"}


def plan(node: Mapping[str, Any], shapes: Sequence[Shape | None], hv: HV, num_sms: int,
         gemm: GemmPlanner) -> Planned | None:
    """Plan ``node`` if it is one of this module's operators (or a float op on other element types);
    ``gemm`` plans a MatMul (Einsum lowers to one)."""
    op = node["op"]
    if op == "Einsum":
        return _plan_einsum(node, shapes, hv, num_sms, gemm)
    fn = _PLANNERS.get(op)
    if fn is not None:
        return fn(node, shapes, hv, num_sms)
    non_float = any(d not in (None, "float32") for d in list(node.get("in_dtypes") or ()) + list(
        node.get("out_dtypes") or ()))
    if non_float and op in BINARY_OPS:
        return _plan_binary(node, shapes, hv, num_sms)
    if non_float and op in UNARY_OPS:
        if op not in EW1:
            raise UnsupportedModel(f"{op} (node {node['name']!r}) on {_dt(node, 0)} data",
                                   fix="apply it to float32 tensors")
        return _plan_unary(node, shapes, hv, num_sms)
    if op == "Gather" and (_dt(node, 0) != "float32" or _dt(node, 1) != "int64"):
        return _plan_gather(node, shapes, hv, num_sms)
    if op == "Sum" and non_float:
        return _plan_variadic(node, shapes, hv, num_sms)
    if op == "ReduceMean" or op == "GlobalAveragePool":
        return _plan_reduce(node, shapes, hv, num_sms, only_if_needed=True)
    return None


# ---- elementwise -----------------------------------------------------------------------------------
def _plan_unary(node, shapes, hv, num_sms) -> Planned:
    op, a, ins, y = node["op"], node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    ti, to = _dt(node, 0), _dt(node, 0, out=True)
    n = _n(x)
    if op == "CastLike":
        to = _dt(node, 1)
    if op in ("Cast", "CastLike", "Identity") and ti == to:
        return [x], [_copy(node, ins[0], y, x, strides_of(x), strides_of(x))], {}
    code = EW1[op]
    va, vb = 0.0, 0.0
    if op == "HardSigmoid":
        va, vb = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    elif op in ("Elu", "Celu"):
        va = float(a.get("alpha", 1.0))
    elif op == "Selu":
        va, vb = float(a.get("alpha", 1.67326319217681884765625)), float(a.get("gamma", 1.05070102214813232421875))
    elif op == "ThresholdedRelu":
        va = float(a.get("alpha", 1.0))
    elif op == "IsInf":
        va, vb = float(a.get("detect_positive", 1)), float(a.get("detect_negative", 1))
    return [x], [Launch(KernelSpec("ew1", (code, _tc(ti), _tc(to))), blocks(n), 256, [ins[0], y, n, va, vb])], {}


def _plan_binary(node, shapes, hv, num_sms) -> Planned:
    op, a, ins, y = node["op"], node["attrs"], node["inputs"], node["outputs"][0]
    code = EW2[op]
    if op == "Mod" and int(a.get("fmod", 0)):
        code = 8
    if op == "BitShift" and a.get("direction", "LEFT").upper() == "RIGHT":
        code = 19
    out, ln = _ew2(node, code, ins[0], ins[1], y, shapes[0], shapes[1], _dt(node, 0), _dt(node, 1),
                   _dt(node, 0, out=True))
    return [out], [ln], {}


def _plan_variadic(node, shapes, hv, num_sms) -> Planned:
    """Sum / Mean / Max / Min over any number of inputs: a copy of the first, then y = y (op) x."""
    op, ins, y = node["op"], node["inputs"], node["outputs"][0]
    out = broadcast(*shapes)
    t = _dt(node, 0, out=True)
    ls = [_copy(node, ins[0], y, out, bstrides(shapes[0], out), strides_of(out))]
    code = {"Sum": 0, "Mean": 0, "Max": 5, "Min": 6}[op]
    for name, s in zip(ins[1:], shapes[1:]):
        ls.append(_ew2(node, code, y, name, y, out, s, t, t, t)[1])
    if op == "Mean" and len(ins) > 1:
        scale = f"{y}#inv"
        ls.append(_ew2(node, 2, y, scale, y, out, (), t, t, t)[1])
        return [out], ls, {scale: np.array(1.0 / len(ins), np.float32)}
    return [out], ls, {}


def _plan_where(node, shapes, hv, num_sms) -> Planned:
    ins, y = node["inputs"], node["outputs"][0]
    out = broadcast(*shapes[:3])
    dims, (sc, sx, sy, _) = collapse(out, bstrides(shapes[0], out), bstrides(shapes[1], out), bstrides(shapes[2], out),
                                     strides_of(out))
    n = _n(out)
    size = ITEMSIZE[_dt(node, 0, out=True)]
    return [out], [Launch(KernelSpec("where_b", (size,)), blocks(n), 256,
                          [ins[0], ins[1], ins[2], y, n, len(dims), i6(dims, node), i6(sc, node), i6(sx, node),
                           i6(sy, node)])], {}


# ---- indexing --------------------------------------------------------------------------------------
def _plan_gather(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    x, idx = shapes[0], shapes[1]
    axis = a.get("axis", 0) % len(x)
    out = tuple(x[:axis]) + tuple(idx) + tuple(x[axis + 1:])
    n = _n(out)
    size = ITEMSIZE[_dt(node, 0)]
    spec = KernelSpec("gather_b", (size, _tc(_dt(node, 1))))
    return [out], [Launch(spec, blocks(n), 256, [ins[0], ins[1], y, n, x[axis], _n(idx), _n(x[axis + 1:])])], {}


def _plan_gather_elements(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    x, idx = shapes[0], shapes[1]
    axis = a.get("axis", 0) % len(x)
    n = _n(idx)
    size = ITEMSIZE[_dt(node, 0)]
    return [tuple(idx)], [Launch(KernelSpec("gather_elements_b", (size, _tc(_dt(node, 1)))), blocks(n), 256,
                                 [ins[0], ins[1], y, n, len(idx), i6(list(idx), node), i6(strides_of(x), node), axis,
                                  x[axis]])], {}


def _nd_index(node, data: Shape, idx: Shape, b: int) -> tuple[int, int, list[int], list[int]]:
    k = idx[-1]
    if b + k > len(data):
        raise UnsupportedModel(f"{node['op']} (node {node['name']!r}): indices of depth {k} for data {data}",
                               fix="check the model")
    st = strides_of(data)
    return k, _n(data[b + k:]), st[b:b + k], list(data[b:b + k])


def _plan_gather_nd(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    data, idx = shapes[0], shapes[1]
    b = int(a.get("batch_dims", 0))
    k, inner, kst, kdim = _nd_index(node, data, idx, b)
    out = tuple(idx[:-1]) + tuple(data[b + k:])
    n = _n(out)
    per_batch = _n(idx[b:-1])
    size = ITEMSIZE[_dt(node, 0)]
    return [out], [Launch(KernelSpec("gather_nd_b", (size,)), blocks(n), 256,
                          [ins[0], ins[1], y, n, k, inner, max(per_batch, 1), _n(data[b:]), i6(kst, node),
                           i6(kdim, node)])], {}


def _plan_scatter_nd(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    if a.get("reduction", "none") != "none":
        raise UnsupportedModel(f"ScatterND (node {node['name']!r}) with reduction {a['reduction']!r}",
                               fix="use reduction='none'")
    data, idx = shapes[0], shapes[1]
    k, inner, kst, kdim = _nd_index(node, data, idx, 0)
    size = ITEMSIZE[_dt(node, 0)]
    n = _n(idx[:-1]) * inner
    ls = [_copy(node, ins[0], y, data, strides_of(data), strides_of(data))]
    if n:
        ls.append(Launch(KernelSpec("scatter_nd_b", (size,)), blocks(n), 256,
                         [ins[1], ins[2], y, n, k, inner, i6(kst, node), i6(kdim, node)]))
    return [tuple(data)], ls, {}


def _plan_tile(node, shapes, hv, num_sms) -> Planned:
    ins, y = node["inputs"], node["outputs"][0]
    x = shapes[0]
    reps = attr_or_input(node, [None, hv(ins[1])], "repeats", 1)
    if reps is None:
        raise UnsupportedModel(f"Tile (node {node['name']!r}): repeats computed on the GPU", fix="report this model")
    out = tuple(int(d) * int(r) for d, r in zip(x, reps))
    n = _n(out)
    size = ITEMSIZE[_dt(node, 0)]
    return [out], [Launch(KernelSpec("tile_b", (size,)), blocks(n), 256,
                          [ins[0], y, n, len(x), i6(list(out), node), i6(list(x), node), i6(strides_of(x), node)])], {}


def _plan_pad(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    mode = a.get("mode", "constant")
    if mode not in PAD_MODES:
        raise UnsupportedModel(f"Pad (node {node['name']!r}) mode {mode!r}", fix=f"use one of {sorted(PAD_MODES)}")
    vals = [hv(i) if i else None for i in ins]
    pads = attr_or_input(node, vals, "pads", 1)
    if pads is None:
        raise UnsupportedModel(f"Pad (node {node['name']!r}): pads computed on the GPU", fix="report this model")
    axes = attr_or_input(node, vals, "axes", 3)
    rank = len(x)
    axes = list(range(rank)) if axes is None else [ax % rank for ax in axes]
    begin, end = [0] * rank, [0] * rank
    for i, ax in enumerate(axes):
        begin[ax], end[ax] = int(pads[i]), int(pads[i + len(axes)])
    value = a.get("value", 0.0)
    if len(vals) > 2 and vals[2] is not None and np.asarray(vals[2]).size:
        value = np.asarray(vals[2]).reshape(-1)[0]
    out = tuple(d + b + e for d, b, e in zip(x, begin, end))
    if any(o < 0 for o in out):
        raise UnsupportedModel(f"Pad (node {node['name']!r}) gives a negative size {out}", fix="check the pads")
    dt = _dt(node, 0)
    as_uint = {1: np.uint8, 4: np.uint32, 8: np.uint64}[ITEMSIZE[dt]]
    bits = int(np.asarray(value).astype("uint8" if dt == "bool" else dt).reshape(1).view(as_uint)[0])
    n = _n(out)
    return [out], [Launch(KernelSpec("pad_b", (ITEMSIZE[dt], PAD_MODES[mode])), blocks(n), 256,
                          [ins[0], y, n, rank, i6(list(out), node), i6(list(x), node), i6(strides_of(x), node),
                           i6(begin, node), bits])], {}


# ---- Resize ----------------------------------------------------------------------------------------
def _plan_resize(node, shapes, hv, num_sms) -> Planned:
    op, a, ins, y = node["op"], node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    vals = [hv(i) if i else None for i in ins]
    if op == "Upsample":
        scales = vals[1] if len(vals) > 1 and vals[1] is not None else a.get("scales")
        sizes = None
        coord = "asymmetric"
        nearest = "floor"
    else:
        si, zi = (2, 3) if node.get("opset", 13) >= 11 else (1, None)
        scales = vals[si] if len(vals) > si and vals[si] is not None and np.asarray(vals[si]).size else None
        sizes = vals[zi] if zi is not None and len(vals) > zi and vals[zi] is not None and np.asarray(vals[zi]).size \
            else None
        coord = a.get("coordinate_transformation_mode", "half_pixel" if node.get("opset", 13) >= 11 else "asymmetric")
        nearest = a.get("nearest_mode", "round_prefer_floor")
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise UnsupportedModel(f"Resize (node {node['name']!r}) mode {mode!r}",
                               fix="use nearest or linear (cubic is not supported by the nvrtc backend)")
    if coord not in RESIZE_COORD or nearest not in RESIZE_NEAREST or a.get("antialias", 0):
        raise UnsupportedModel(f"Resize (node {node['name']!r}) with coordinate_transformation_mode {coord!r}, "
                               f"nearest_mode {nearest!r}, antialias {a.get('antialias', 0)}",
                               fix="use half_pixel/asymmetric/align_corners/pytorch_half_pixel without antialias")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch" or a.get("axes"):
        raise UnsupportedModel(f"Resize (node {node['name']!r}) with axes or keep_aspect_ratio_policy",
                               fix="resize every dimension with explicit scales or sizes")
    if sizes is not None:
        out = tuple(int(s) for s in np.asarray(sizes).reshape(-1))
        sc = [o / i if i else 1.0 for o, i in zip(out, x)]
    elif scales is not None:
        sc = [float(s) for s in np.asarray(scales).reshape(-1)]
        out = tuple(int(math.floor(d * s)) for d, s in zip(x, sc))
    else:
        raise UnsupportedModel(f"Resize (node {node['name']!r}): scales or sizes computed on the GPU",
                               fix="report this model")
    if len(out) != len(x) or len(x) > 6:
        raise UnsupportedModel(f"Resize (node {node['name']!r}): {len(out)} sizes for a rank-{len(x)} input",
                               fix="check the model")
    linear = mode in ("linear", "bilinear")
    if linear and any(o != i for o, i in zip(out[:-2], x[:-2])):
        raise UnsupportedModel(f"Resize (node {node['name']!r}): linear resize of dimensions other than the last two",
                               fix="resize only height and width")
    n = _n(out)
    spec = KernelSpec("resize", (int(linear), RESIZE_COORD[coord], RESIZE_NEAREST[nearest]))
    f6 = [float(s) for s in sc] + [1.0] * (6 - len(sc))
    return [out], [Launch(spec, blocks(n), 256, [ins[0], y, n, len(x), i6(list(out), node), i6(list(x), node), f6])], {}


# ---- normalizations --------------------------------------------------------------------------------
def _plan_group_norm(node, shapes, hv, num_sms) -> Planned:
    op, a, ins, y = node["op"], node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    if len(x) < 2:
        raise UnsupportedModel(f"{op} (node {node['name']!r}) on a rank-{len(x)} input", fix="check the model")
    C, inner = x[1], _n(x[2:])
    per_group = 0
    if op == "InstanceNormalization":
        G, cpg = C, 1
    else:
        G = int(a["num_groups"])
        if C % G:
            raise UnsupportedModel(f"GroupNormalization (node {node['name']!r}): {C} channels in {G} groups",
                                   fix="use a group count that divides the channels")
        cpg = C // G
        per_group = int(len(shapes) > 1 and shapes[1] is not None and _n(shapes[1]) == G and G != C)
    rows = x[0] * G
    ln = cpg * inner
    return [x], [Launch(KernelSpec("group_norm"), (rows, 1, 1), rowthreads(ln),
                        [ins[0], ins[1] if len(ins) > 1 else "", ins[2] if len(ins) > 2 else "", y, G, cpg, inner,
                         float(a.get("epsilon", 1e-5)), per_group])], {}


# ---- reductions ------------------------------------------------------------------------------------
def _reduce_axes(node, x: Shape, hv: HV) -> tuple[list[int], int]:
    a, ins = node["attrs"], node["inputs"]
    op = node["op"]
    if op in ("GlobalMaxPool", "GlobalAveragePool"):
        return list(range(2, len(x))), 1
    vals = [hv(i) if i else None for i in ins]
    axes = attr_or_input(node, vals, "axes", 1)
    keep = int(a.get("keepdims", 1))
    if axes is None or len(axes) == 0:
        if a.get("noop_with_empty_axes", 0):
            return [], keep
        axes = list(range(len(x)))
    return sorted({ax % len(x) for ax in axes}), keep


def _plan_reduce(node, shapes, hv, num_sms, only_if_needed: bool = False) -> Planned | None:
    op, ins, y = node["op"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    axes, keep = _reduce_axes(node, x, hv)
    adjacent = not axes or axes == list(range(axes[0], axes[-1] + 1))
    t = _dt(node, 0)
    if only_if_needed and adjacent and t == "float32":
        return None      # lowering's reduce_mean handles it (the family older plans have)
    out = tuple(1 if i in axes else s for i, s in enumerate(x)) if keep else tuple(
        s for i, s in enumerate(x) if i not in axes)
    if not axes:
        return [tuple(x)], [_copy(node, ins[0], y, x, strides_of(x), strides_of(x))], {}
    code = REDUCE.get(op, 1)
    if t not in ("float32", "int64"):
        raise UnsupportedModel(f"{op} (node {node['name']!r}) on {t} data", fix="reduce float32 or int64 tensors")
    ls: list[Launch] = []
    temps: dict[str, Any] = {}
    src, shape = ins[0], tuple(x)
    if not adjacent:   # move the reduced axes to the end (a transpose into scratch), then reduce rows
        keep_axes = [i for i in range(len(x)) if i not in axes]
        perm = keep_axes + axes
        shape = tuple(x[p] for p in perm)
        st = strides_of(x)
        src = f"{y}#perm"
        ls.append(_copy(node, ins[0], src, shape, [st[p] for p in perm], strides_of(shape), size=ITEMSIZE[t]))
        temps[src] = _n(shape) * ITEMSIZE[t]
        lo = len(keep_axes)
    else:
        lo = axes[0]
    hi = len(shape) if not adjacent else axes[-1] + 1
    outer, ln, inner = _n(shape[:lo]), _n(shape[lo:hi]), _n(shape[hi:])
    ls.append(Launch(KernelSpec("reduce_t", (code, _tc(t))), (outer * inner, 1, 1), rowthreads(ln),
                     [src, y, ln, inner]))
    return [out], ls, temps


def _plan_arg(node, shapes, hv, num_sms) -> Planned:
    op, a, ins, y = node["op"], node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    axis = int(a.get("axis", 0)) % len(x)
    keep = int(a.get("keepdims", 1))
    out = tuple(1 if i == axis else s for i, s in enumerate(x)) if keep else tuple(
        s for i, s in enumerate(x) if i != axis)
    outer, ln, inner = _n(x[:axis]), x[axis], _n(x[axis + 1:])
    spec = KernelSpec("arg_reduce", (int(op == "ArgMax"), _tc(_dt(node, 0))))
    return [out], [Launch(spec, (outer * inner, 1, 1), 32, [ins[0], y, ln, inner, int(a.get("select_last_index", 0))])], {}


def _plan_cumsum(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    x = shapes[0]
    ax = hv(ins[1])
    if ax is None:
        raise UnsupportedModel(f"CumSum (node {node['name']!r}): axis computed on the GPU", fix="report this model")
    axis = int(np.asarray(ax).reshape(-1)[0]) % len(x)
    outer, ln, inner = _n(x[:axis]), x[axis], _n(x[axis + 1:])
    rows = outer * inner
    t = _dt(node, 0)
    if t not in ("float32", "int64", "int32"):
        raise UnsupportedModel(f"CumSum (node {node['name']!r}) on {t}", fix="use float32 or integer data")
    return [tuple(x)], [Launch(KernelSpec("cumsum_t", (_tc(t),)), blocks(rows), 256,
                               [ins[0], y, rows, ln, inner, int(a.get("exclusive", 0)), int(a.get("reverse", 0))])], {}


# ---- ConvTranspose ---------------------------------------------------------------------------------
def _plan_conv_transpose(node, shapes, hv, num_sms) -> Planned:
    a, ins, y = node["attrs"], node["inputs"], node["outputs"][0]
    x, ws = list(shapes[0]), list(shapes[1])
    one_d = len(x) == 3
    if one_d:
        x, ws = x[:2] + [1] + x[2:], ws[:2] + [1] + ws[2:]
    if len(x) != 4:
        raise UnsupportedModel(f"ConvTranspose (node {node['name']!r}) with a {len(x)}-D input",
                               fix="use 1-D or 2-D transposed convolutions")

    def two(key: str, default: int) -> list[int]:
        v = list(a.get(key, [default] * (1 if one_d else 2)))
        return ([default] + v) if one_d else v

    g = int(a.get("group", 1))
    kh, kw = ws[2], ws[3]
    sh, sw = two("strides", 1)
    dh, dw = two("dilations", 1)
    op_h, op_w = two("output_padding", 0)
    pads = list(a.get("pads", [0] * (2 if one_d else 4)))
    if one_d:
        pads = [0, pads[0], 0, pads[1]]
    C, OC = x[1], ws[1] * g
    auto = a.get("auto_pad", "NOTSET")
    if "output_shape" in a:
        oshape = list(a["output_shape"])
        oshape = ([1] + oshape) if one_d else oshape
        OH, OW = oshape[-2], oshape[-1]
        tot = [sh * (x[2] - 1) + op_h + ((kh - 1) * dh + 1) - OH, sw * (x[3] - 1) + op_w + ((kw - 1) * dw + 1) - OW]
        pads = [tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2] if auto != "SAME_LOWER" else \
            [tot[0] - tot[0] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[1] // 2]
    else:
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            OH, OW = x[2] * sh, x[3] * sw
            tot = [sh * (x[2] - 1) + op_h + ((kh - 1) * dh + 1) - OH, sw * (x[3] - 1) + op_w + ((kw - 1) * dw + 1) - OW]
            lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in tot]
            pads = [lo[0], lo[1], tot[0] - lo[0], tot[1] - lo[1]]
        OH = sh * (x[2] - 1) + op_h + ((kh - 1) * dh + 1) - pads[0] - pads[2]
        OW = sw * (x[3] - 1) + op_w + ((kw - 1) * dw + 1) - pads[1] - pads[3]
    out4 = (x[0], OC, OH, OW)
    n = _n(out4)
    out = (x[0], OC, OW) if one_d else out4
    return [out], [Launch(KernelSpec("conv_transpose2d"), blocks(n), 256,
                          [ins[0], ins[1], ins[2] if len(ins) > 2 else "", y, x[0], C, x[2], x[3], OC, OH, OW, kh, kw,
                           sh, sw, pads[0], pads[1], dh, dw, g])], {}


# ---- Einsum ----------------------------------------------------------------------------------------
def _plan_einsum(node, shapes, hv, num_sms, gemm: GemmPlanner) -> Planned:
    """Two-operand Einsum without repeated or one-sided summed letters, as a permute + batched GEMM;
    a one-operand Einsum that only permutes, as a copy."""
    eq = node["attrs"]["equation"].replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if "." in eq:
        raise UnsupportedModel(f"Einsum (node {node['name']!r}) {eq!r} with an ellipsis", fix="write the letters out")
    if not rhs and "->" not in eq:
        letters = "".join(terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    y = node["outputs"][0]
    dims: dict[str, int] = {}
    for t, s in zip(terms, shapes):
        if len(t) != len(s) or len(set(t)) != len(t):
            raise UnsupportedModel(f"Einsum (node {node['name']!r}) {eq!r} (repeated letters or a rank mismatch)",
                                   fix="rewrite with Transpose/MatMul")
        for c, d in zip(t, s):
            if dims.setdefault(c, d) != d:
                raise UnsupportedModel(f"Einsum (node {node['name']!r}): {c} is {dims[c]} and {d}", fix="check shapes")
    out = tuple(dims[c] for c in rhs)
    if len(terms) == 1:
        if sorted(terms[0]) != sorted(rhs):
            raise UnsupportedModel(f"Einsum (node {node['name']!r}) {eq!r} reduces", fix="use ReduceSum")
        st = strides_of(shapes[0])
        return [out], [_copy(node, node["inputs"][0], y, out, [st[terms[0].index(c)] for c in rhs], strides_of(out))], {}
    if len(terms) != 2:
        raise UnsupportedModel(f"Einsum (node {node['name']!r}) with {len(terms)} operands", fix="split it into pairs")
    ta, tb = terms
    batch = [c for c in rhs if c in ta and c in tb]
    m = [c for c in rhs if c in ta and c not in tb]
    nn = [c for c in rhs if c in tb and c not in ta]
    k = [c for c in ta if c in tb and c not in rhs]
    if set(ta) - set(batch + m + k) or set(tb) - set(batch + nn + k):
        raise UnsupportedModel(f"Einsum (node {node['name']!r}) {eq!r} sums a letter of one operand only",
                               fix="reduce it first with ReduceSum")
    B, M, N, K = (_n([dims[c] for c in g]) for g in (batch, m, nn, k))
    ls: list[Launch] = []
    temps: dict[str, Any] = {}

    def permuted(name: str, term: str, shape: Shape, order: list[str], tag: str) -> str:
        st = strides_of(shape)
        pshape = tuple(dims[c] for c in order)
        if order == list(term):
            return name
        dst = f"{y}#{tag}"
        ls.append(_copy(node, name, dst, pshape, [st[term.index(c)] for c in order], strides_of(pshape)))
        temps[dst] = _n(pshape) * 4
        return dst

    a_name = permuted(node["inputs"][0], ta, shapes[0], batch + m + k, "a")
    b_name = permuted(node["inputs"][1], tb, shapes[1], batch + k + nn, "b")
    gemm_out = y if rhs == "".join(batch + m + nn) else f"{y}#c"
    mm = {"op": "MatMul", "name": node["name"] + "#mm", "inputs": [a_name, b_name], "outputs": [gemm_out], "attrs": {},
          "where": "device", "in_dtypes": ["float32"] * 2, "out_dtypes": ["float32"]}
    _, gl, gt = gemm(mm, [(B, M, K), (B, K, N)], num_sms)
    ls += gl
    temps.update(gt)
    if gemm_out != y:
        temps[gemm_out] = B * M * N * 4
        order = batch + m + nn
        cshape = tuple(dims[c] for c in order)
        st = strides_of(cshape)
        ls.append(_copy(node, gemm_out, y, out, [st[order.index(c)] for c in rhs], strides_of(out)))
    return [out], ls, temps


# ---- Dropout's mask ---------------------------------------------------------------------------------
def _plan_dropout(node, shapes, hv, num_sms) -> Planned | None:
    outs = node["outputs"]
    if len(outs) < 2 or not outs[1]:
        return None
    x = shapes[0]
    n = _n(x)
    # inference: the output is the input (an alias, see schedule) and the mask is all true
    return [x, x], [Launch(KernelSpec("fill_b", (1,)), blocks(n), 256, [outs[1], n, 1])], {}


_PLANNERS: dict[str, Callable[..., Planned | None]] = {
    **{op: _plan_unary for op in EW1 if op not in ("Relu", "Sigmoid", "Tanh", "Sqrt", "Erf", "Identity")},
    **{op: _plan_binary for op in EW2 if op not in BINARY_OPS and op not in ("Max", "Min")},
    "Max": _plan_variadic, "Min": _plan_variadic, "Mean": _plan_variadic,
    "Where": _plan_where, "GatherElements": _plan_gather_elements, "GatherND": _plan_gather_nd,
    "ScatterND": _plan_scatter_nd, "Tile": _plan_tile, "Pad": _plan_pad, "Resize": _plan_resize,
    "Upsample": _plan_resize, "InstanceNormalization": _plan_group_norm, "GroupNormalization": _plan_group_norm,
    **{op: _plan_reduce for op in REDUCE if op != "ReduceMean"},
    "ArgMax": _plan_arg, "ArgMin": _plan_arg, "CumSum": _plan_cumsum, "ConvTranspose": _plan_conv_transpose,
    "Einsum": _plan_einsum, "Dropout": _plan_dropout,
}
