"""numpy evaluation of host-placed nodes (shape arithmetic and constants), once per input shape."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel
from .arrays import decode_array

_ONNX_NP = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 11: np.float64, 10: np.float16}


def attr_or_input(node: Mapping[str, Any], vals: Sequence[Any], attr: str, idx: int) -> Any:
    """An operand given as an attribute (old opsets) or as a host-known input (new opsets)."""
    if attr in node["attrs"]:
        return node["attrs"][attr]
    if idx < len(vals) and vals[idx] is not None:
        return [int(v) for v in np.asarray(vals[idx]).reshape(-1)]
    return None


def reshape_target(in_shape: Sequence[int], shape: Sequence[int], allowzero: int = 0) -> list[int]:
    out = list(int(s) for s in shape)
    for i, s in enumerate(out):
        if s == 0 and not allowzero:
            out[i] = in_shape[i]
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1])) if len(out) > 1 else 1
        out[out.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    return out


def squeeze_shape(shape: Sequence[int], axes: Sequence[int] | None) -> list[int]:
    if axes is None:
        return [s for s in shape if s != 1]
    ax = {a % len(shape) for a in axes}
    return [s for i, s in enumerate(shape) if i not in ax]


def unsqueeze_shape(shape: Sequence[int], axes: Sequence[int]) -> list[int]:
    rank = len(shape) + len(axes)
    ax = sorted(a % rank for a in axes)
    out, it = [], iter(shape)
    for i in range(rank):
        out.append(1 if i in ax else next(it))
    return out


def flatten_shape(shape: Sequence[int], axis: int) -> list[int]:
    axis = axis % len(shape) if axis < 0 else axis
    return [int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))]


def slice_params(shape: Sequence[int], starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None,
                 steps: Sequence[int] | None) -> tuple[list[int], list[int], list[int]]:
    """Per-dimension (start, out_len, step) after ONNX clamping rules."""
    rank = len(shape)
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else list(steps)
    st, ln, sp = [0] * rank, list(shape), [1] * rank
    for a, s, e, p in zip(axes, starts, ends, steps):
        dim = shape[a]
        sl = slice(int(s), int(e), int(p))
        rs = range(*sl.indices(dim))
        st[a], ln[a], sp[a] = (rs.start if len(rs) else 0), len(rs), int(p)
    return st, ln, sp


def _slice(node, v):
    x = v[0]
    starts, ends = attr_or_input(node, v, "starts", 1), attr_or_input(node, v, "ends", 2)
    axes, steps = attr_or_input(node, v, "axes", 3), attr_or_input(node, v, "steps", 4)
    axes = list(range(len(starts))) if axes is None else [a % x.ndim for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    sl = [slice(None)] * x.ndim
    for a, s, e, p in zip(axes, starts, ends, steps):
        sl[a] = slice(int(s), int(e), int(p))
    return [x[tuple(sl)]]


def _gather(node, v):
    return [np.take(v[0], v[1].astype(np.int64), axis=node["attrs"].get("axis", 0))]


def _cast(node, v):
    return [v[0].astype(_ONNX_NP[node["attrs"]["to"]])]


def _constant_of_shape(node, v):
    val = node["attrs"].get("value")
    arr = decode_array(val["__tensor__"]) if val else np.zeros(1, np.float32)
    return [np.full([int(s) for s in v[0]], arr.reshape(-1)[0], dtype=arr.dtype)]


def _shape(node, v, shapes=None):
    raise AssertionError("Shape is evaluated from the input's shape, not its value")


HOST_EVAL: dict[str, Callable[[Mapping[str, Any], list], list]] = {
    "Gather": _gather,
    "Unsqueeze": lambda n, v: [v[0].reshape(unsqueeze_shape(v[0].shape, attr_or_input(n, v, "axes", 1)))],
    "Squeeze": lambda n, v: [v[0].reshape(squeeze_shape(v[0].shape, attr_or_input(n, v, "axes", 1)))],
    "Concat": lambda n, v: [np.concatenate([np.asarray(x) for x in v], axis=n["attrs"]["axis"])],
    "Slice": _slice,
    "Reshape": lambda n, v: [v[0].reshape(reshape_target(v[0].shape, v[1], n["attrs"].get("allowzero", 0)))],
    "Cast": _cast,
    "Add": lambda n, v: [np.asarray(v[0] + v[1])],
    "Sub": lambda n, v: [np.asarray(v[0] - v[1])],
    "Mul": lambda n, v: [np.asarray(v[0] * v[1])],
    "Div": lambda n, v: [np.asarray(v[0] // v[1] if np.issubdtype(v[0].dtype, np.integer) else v[0] / v[1])],
    "Pow": lambda n, v: [np.power(v[0], v[1]).astype(v[0].dtype)],
    "Sqrt": lambda n, v: [np.sqrt(v[0])],
    "Neg": lambda n, v: [-v[0]],
    "Relu": lambda n, v: [np.maximum(v[0], 0).astype(v[0].dtype)],
    "Identity": lambda n, v: [v[0]],
    "Dropout": lambda n, v: [v[0]],
    "Flatten": lambda n, v: [v[0].reshape(flatten_shape(v[0].shape, n["attrs"].get("axis", 1)))],
    "Transpose": lambda n, v: [np.transpose(v[0], n["attrs"].get("perm"))],
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda n, v: [np.arange(v[0], v[1], v[2]).astype(np.asarray(v[0]).dtype)],
    "Equal": lambda n, v: [np.equal(v[0], v[1])],
    "Where": lambda n, v: [np.where(v[0], v[1], v[2])],
    "Expand": lambda n, v: [v[0] * np.ones([int(s) for s in v[1]], dtype=v[0].dtype)],
    "Sum": lambda n, v: [np.asarray(sum(v[1:], v[0]))],
}


def eval_host(node: Mapping[str, Any], values: list[Any], in_shapes: list[tuple[int, ...] | None],
              opset: int = 17) -> list[np.ndarray]:
    """Outputs of a host node; ``Shape`` and ``Size`` read only their input's shape. Operators
    without a numpy rule here run through onnx.reference's implementation."""
    op = node["op"]
    if op == "Shape":
        shp = np.array(in_shapes[0], dtype=np.int64)
        start, end = node["attrs"].get("start", 0), node["attrs"].get("end", None)
        return [shp[start:end]]
    if op == "Size":
        return [np.array(int(np.prod(in_shapes[0])), dtype=np.int64)]
    if op == "RtxAttentionMask":
        return [attention_mask(node, values, in_shapes)]
    fn = HOST_EVAL.get(op)
    args = [None if x is None else np.asarray(x) for x in values]
    if fn is None:
        return _reference(node, args, opset)
    return [np.asarray(r) for r in fn(node, args)]


def _reference(node: Mapping[str, Any], args: list[Any], opset: int) -> list[np.ndarray]:
    """One node through onnx.reference (numpy), for operators without a rule in HOST_EVAL."""
    from onnx import helper, numpy_helper
    from onnx.reference.ops import load_op

    attrs = {k: (numpy_helper.from_array(decode_array(v["__tensor__"])) if isinstance(v, dict) and "__tensor__" in v
                 else v) for k, v in node["attrs"].items()}
    proto = helper.make_node(node["op"], list(node["inputs"]), list(node["outputs"]), name=node["name"], **attrs)
    try:
        impl = load_op("", node["op"], opset)(proto, {"opsets": {"": opset}, "verbose": 0, "log": lambda *a: None,
                                                       "new_ops": None})
        outs = impl.run(*args)
    except Exception as e:  # noqa: BLE001 - onnx.reference raises many types
        raise UnsupportedModel(f"{node['op']} (node {node['name']!r}) cannot be evaluated on the host: "
                               f"{type(e).__name__}: {e}", fix="report this model to rtxpack") from e
    return [np.asarray(o) for o in (outs if isinstance(outs, (tuple, list)) else (outs,))]


def attention_mask(node: Mapping[str, Any], values: list[Any], in_shapes: list[tuple[int, ...] | None]) -> np.ndarray:
    """The one mask a fused Attention adds to its scores where the model wrote ``Reshape(scores [+ m1], s1)
    + m2`` reshaped back by ``s2`` (onnx_import.fuse_attention): inputs Q, Kt (as the Attention reads them:
    ``perm_q`` / ``perm_kt`` give their logical order), m1 (or ""), s1, m2, s2."""
    a = node["attrs"]
    q, kt = (list(in_shapes[i]) for i in (0, 1))
    q = [q[p] for p in a.get("perm_q", range(len(q)))]
    kt = [kt[p] for p in a.get("perm_kt", range(len(kt)))]
    scores = [int(d) for d in np.broadcast_shapes(tuple(q[:-2]), tuple(kt[:-2]))] + [q[-2], kt[-1]]
    m = np.zeros(scores, np.float32)
    if values[2] is not None:
        m = m + np.asarray(values[2], np.float32)
    mid = reshape_target(scores, [int(v) for v in np.asarray(values[3]).reshape(-1)])
    m = m.reshape(mid) + np.asarray(values[4], np.float32)
    if list(m.shape) != mid:
        raise UnsupportedModel(f"attention mask {node['name']!r}: a mask of shape {list(np.shape(values[4]))} "
                               f"broadcasts the scores' {mid} up", fix="report this model to rtxpack")
    m = m.reshape(reshape_target(mid, [int(v) for v in np.asarray(values[5]).reshape(-1)]))
    if list(m.shape) != scores:
        raise UnsupportedModel(f"attention mask {node['name']!r}: the scores come back as {list(m.shape)}, not "
                               f"{scores}", fix="report this model to rtxpack")
    return m
