"""ONNX -> the backend's graph (a JSON-able dict) plus the initializers as numpy arrays.

Every node is placed either on the *device* (a generated kernel) or on the *host* (numpy, once
per input shape): ``Shape`` and everything computed only from shapes, constants and small
integer initializers runs on the host, so PyTorch-style ``Shape -> Gather -> Concat -> Reshape``
chains cost no kernels and dynamic dimensions stay runtime values. Unsupported nodes are all
collected and reported in one error before anything is compiled.

Build-time fusions (each only when the intermediate has one consumer and is not an output):
Conv [-> BatchNormalization] [-> Add(residual)] [-> Relu]; Gemm/MatMul [-> Add(bias)] [-> Relu / GELU];
the exporters' erf GELU -> one Gelu node (``fuse_gelu``); attention -> one Attention node (``fuse_attention``).
BatchNormalization is folded into the Conv weights at load time (from the original initializers),
so stripped plans and refit keep working on the ONNX's own weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.digest import initializers, sha256_bytes
from ...core.errors import UnsupportedModel
from .arrays import decode_array, encode_array
from .host_ops import HOST_EVAL
from .lowering_ops import handled_ops

_LEGACY_DEVICE_OPS = frozenset("""Conv Gemm MatMul Add Sub Mul Div Pow Sqrt Relu LeakyRelu Sigmoid Tanh Erf Gelu Clip
Softmax BatchNormalization LayerNormalization MaxPool AveragePool GlobalAveragePool Flatten Reshape Transpose Concat Split
Slice Squeeze Unsqueeze Sum Gather Identity Dropout ReduceMean LRN Expand""".split())
DEVICE_OPS = _LEGACY_DEVICE_OPS | handled_ops()
#: evaluated with numpy on the host when every input is known there (shape arithmetic, constants,
#: mask construction from shapes); anything else that onnx.reference implements is evaluated too
HOST_OPS = frozenset("""Shape Size Constant ConstantOfShape Gather Unsqueeze Squeeze Concat Slice Reshape Cast Add Sub Mul
Div Pow Sqrt Identity Dropout Flatten Transpose Range Equal Where Expand Sum Neg Relu""".split())
#: never evaluated on the host (not deterministic, or needing subgraphs)
NEVER_HOST = frozenset("""RandomNormal RandomNormalLike RandomUniform RandomUniformLike Multinomial Bernoulli If Loop Scan
SequenceConstruct SequenceAt SplitToSequence ConcatFromSequence""".split())
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
#: inputs of device ops that must be known on the host when shapes are planned
HOST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Slice": (1, 2, 3, 4), "Split": (1,), "Clip": (1, 2),
    "Expand": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Pad": (1, 2, 3), "Tile": (1,), "CumSum": (1,),
    "Dropout": (1, 2), **{op: (1,) for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                            "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
                                            "ReduceLogSum")}}
#: element types a model's inputs and outputs may have
IO_DTYPES = ("float32", "int64", "int32", "bool")

_NP_DTYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 11: "float64", 10: "float16"}


def host_evaluable(op: str, opset: int) -> bool:
    """numpy on the host can evaluate ``op``: one of ours, or one onnx.reference implements."""
    if op in HOST_OPS or op in HOST_EVAL:
        return True
    try:
        from onnx.reference.ops import load_op

        load_op("", op, opset)
    except Exception:  # noqa: BLE001 - onnx raises several types for an unknown operator
        return False
    return True


def _attr_value(attr: Any) -> Any:
    from onnx import helper, numpy_helper

    v = helper.get_attribute_value(attr)
    if isinstance(v, bytes):
        return v.decode()
    if hasattr(v, "dims") and hasattr(v, "data_type"):
        return {"__tensor__": encode_array(numpy_helper.to_array(v))}
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def _constant_value(node: Any) -> np.ndarray:
    attrs = {a.name: _attr_value(a) for a in node.attribute}
    if "value" in attrs:
        return decode_array(attrs["value"]["__tensor__"])
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                    ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dt)
    raise UnsupportedModel(f"Constant node {node.name!r} uses an unsupported attribute {sorted(attrs)}",
                           fix="export constants as 'value' tensors")


def _shape_of(vi: Any) -> list[int | str | None]:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def load_model(onnx_path: Any) -> Any:
    """The ModelProto of a path (a ModelProto given is returned as it is)."""
    import onnx

    if isinstance(onnx_path, onnx.ModelProto):
        return onnx_path
    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # noqa: BLE001 - onnx raises many types for a bad file
        raise UnsupportedModel(f"cannot read ONNX model {str(onnx_path)!r}: {e}", fix="check the file is a valid .onnx",
                               path=str(onnx_path)) from e


def import_onnx(onnx_path: Any, *, keep_unsupported: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse, shape-infer, place, check and fuse; returns ``(graph, initializers)``.

    Unsupported nodes raise one UnsupportedModel listing them all; with ``keep_unsupported`` they stay
    in the graph as ``where="unsupported"`` and ``graph["problems"]`` lists them, so that planning
    can add the nodes only it can refuse (a Resize mode, a 3-D Conv) to the same one error."""
    import onnx


    model = load_model(onnx_path)
    label = "the model" if isinstance(onnx_path, onnx.ModelProto) else repr(str(onnx_path))
    if not model.graph.output:   # protobuf parses an empty (or wrong) file as an empty model
        raise UnsupportedModel(f"{label} has no graph outputs: an empty file, or not an ONNX model",
                               fix="pass the .onnx file the exporter wrote")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is advisory (fusion safety), never required
        inferred = model
    g = model.graph
    try:
        weights = initializers(model)
    except Exception as e:  # noqa: BLE001 - onnx raises ValidationError/OSError for missing external data
        raise UnsupportedModel(f"cannot read the weights of {label}: {e}",
                               fix="keep the external-data files beside the .onnx and pass its path "
                                   "(or onnx.load() it with its external data)") from e
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    shapes: dict[str, list] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = _shape_of(vi)

    inputs = [{"name": i.name, "shape": _shape_of(i), "dtype": _NP_DTYPES.get(i.type.tensor_type.elem_type, "?")}
              for i in g.input if i.name not in weights]
    constants: dict[str, np.ndarray] = {}
    host_known: set[str] = set(weights)
    nodes: list[dict[str, Any]] = []
    problems: list[str] = []
    names: set[str] = set()
    for idx, n in enumerate(g.node):
        # node names key derived weights ("name#cw") and tuning choices: unique, and without the "#"
        # that separates a derived weight's suffix
        name = (n.name or f"{n.op_type}_{idx}").replace("#", "_")
        while name in names:
            name += f"_{idx}"
        names.add(name)
        ins = list(n.input)
        unsupported = {"op": n.op_type, "name": name, "inputs": ins, "outputs": list(n.output), "attrs": {},
                       "where": "unsupported"}
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.domain}::{n.op_type} (node {name!r})")
            nodes.append(unsupported)
            continue
        if n.op_type == "Constant":
            constants[n.output[0]] = _constant_value(n)
            host_known.add(n.output[0])
            continue
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        all_host = all(i == "" or i in host_known for i in ins) and any(ins)
        if n.op_type in ("Shape", "Size") or (all_host and n.op_type not in NEVER_HOST and host_evaluable(n.op_type, opset)):
            where = "host"
            host_known.update(o for o in n.output if o)
        elif n.op_type in DEVICE_OPS:
            where = "device"
            bad = [ins[i] for i in HOST_INPUTS.get(n.op_type, ()) if i < len(ins) and ins[i] and ins[i] not in host_known]
            if bad:
                problems.append(f"{n.op_type} (node {name!r}: input {bad[0]!r} is computed on the GPU; "
                                "only shape-derived values are supported there)")
                where = "unsupported"
            extra = [o for o in list(n.output)[1:] if o] if n.op_type == "MaxPool" else []
            if extra:
                problems.append(f"{n.op_type} (node {name!r}: optional output {extra[0]!r} is not supported)")
                where = "unsupported"
        else:
            problems.append(f"{n.op_type} (node {name!r})")
            nodes.append(unsupported)
            continue
        nodes.append({"op": n.op_type, "name": name, "inputs": ins, "outputs": list(n.output), "attrs": attrs,
                      "where": where})
    for inp in inputs:
        if inp["dtype"] == "float16":      # an fp16 model: float32 on the device, converted at the boundary
            inp["dtype"], inp["io_dtype"] = "float32", "float16"
        if inp["dtype"] not in IO_DTYPES:
            problems.append(f"input {inp['name']!r} has dtype {inp['dtype']} (model inputs may be "
                            f"{', '.join(IO_DTYPES)})")
    if problems and not keep_unsupported:
        raise unsupported_model(onnx_path, problems)

    outputs = [o.name for o in g.output]
    nodes = dedupe(nodes, constants, set(outputs))
    nodes = fuse_attention(fuse_gelu(nodes, {**constants, **weights}, set(outputs), shapes),
                           {**constants, **weights}, set(outputs), shapes, opset)
    nodes = fuse(nodes, weights, shapes, set(outputs), constants)
    device_weights = sorted({i for nd in nodes if nd["where"] == "device" for i in nd["inputs"] if i in weights}
                            | {v for nd in nodes for v in nd["attrs"].get("bn", {}).get("params", [])}
                            | {nd["attrs"]["colscale"] for nd in nodes if "colscale" in nd["attrs"]
                               and "colscale_value" not in nd["attrs"]})
    graph = {
        "name": g.name or Path(str(onnx_path)).stem,
        "opset": int(opset),
        "inputs": inputs,
        "outputs": outputs,
        "constants": {k: encode_array(v) for k, v in constants.items()},
        "nodes": nodes,
        "weights": [{"name": k, "dtype": v.dtype.name, "shape": list(v.shape),
                     "sha256": sha256_bytes(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<")).tobytes())}
                    for k, v in sorted(weights.items())],
        "device_weights": device_weights,
        "value_shapes": {k: v for k, v in shapes.items() if k in outputs},
        # outputs an fp16 model declares as float16 (the device computes them in float32)
        "output_io_dtypes": {o.name: "float16" for o in g.output if o.type.tensor_type.elem_type == 10},
    }
    if problems:
        graph["problems"] = problems
    return graph, weights


def unsupported_model(onnx_path: Any, problems: Sequence[str]) -> UnsupportedModel:
    """The one error for a model with unsupported nodes: every one of them, by name."""
    import onnx

    label = "the model" if isinstance(onnx_path, onnx.ModelProto) else Path(str(onnx_path)).name
    return UnsupportedModel(
        f"the nvrtc backend cannot build {label}: {len(problems)} unsupported node(s): " + "; ".join(problems),
        fix="replace or remove these operators (or use the tensorrt-rtx backend)", unsupported=list(problems))


def _value_key(v: Any) -> Any:
    """A hashable stand-in for an attribute or constant value (arrays by dtype, shape and bytes)."""
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        return tuple(_value_key(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _value_key(x)) for k, x in v.items()))
    return v if isinstance(v, (int, float, str, bytes, bool, type(None))) else repr(v)


def dedupe(nodes: list[dict], constants: Mapping[str, np.ndarray], outputs: set[str]) -> list[dict]:
    """Common subexpressions: a node with the op, attributes and inputs of an earlier one (inputs that are
    equal Constant values count as equal) goes, its outputs read as the earlier node's. Exporters repeat
    the attention mask's arithmetic in every layer (BERT's Where of the extended mask, per layer)."""
    canon: dict[Any, str] = {}
    const = {}
    for name, v in constants.items():
        if v.size <= 256:
            const[name] = canon.setdefault(_value_key(np.asarray(v)), name)
    rename: dict[str, str] = {}
    seen: dict[Any, dict] = {}
    kept = []
    for nd in nodes:
        ins = [rename.get(i, i) for i in nd["inputs"]]
        nd = {**nd, "inputs": ins} if ins != nd["inputs"] else nd
        if nd["where"] == "unsupported":
            kept.append(nd)
            continue
        key = (nd["op"], nd["where"], _value_key(nd["attrs"]), tuple(const.get(i, i) for i in ins))
        first = seen.get(key)
        if first is not None and len(first["outputs"]) == len(nd["outputs"]) and \
                not any(o in outputs or (o and not f) for o, f in zip(nd["outputs"], first["outputs"])):
            rename.update({o: f for o, f in zip(nd["outputs"], first["outputs"]) if o})
            continue
        seen.setdefault(key, nd)
        kept.append(nd)
    return kept


def _same_static_shape(a: Sequence | None, b: Sequence | None) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(x is not None and x == y for x, y in zip(a, b))


def _float_scalar(values: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """The value of a one-element floating-point constant or initializer, else None."""
    v = values.get(name)
    if v is None:
        return None
    a = np.asarray(v)
    return a if a.size == 1 and a.dtype.kind == "f" else None


def _graph_index(nodes: list[dict]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """(tensor -> index of the node making it, tensor -> indices of the nodes reading it)."""
    made: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for i, nd in enumerate(nodes):
        for o in nd["outputs"]:
            made[o] = i
        for t in nd["inputs"]:
            consumers.setdefault(t, []).append(i)
    return made, consumers


def fuse_gelu(nodes: list[dict], values: Mapping[str, np.ndarray], outputs: set[str],
              shapes: Mapping[str, list] | None = None) -> list[dict]:
    """x * 0.5 * (1 + erf(x / sqrt(2))) as the exporters write it (Div or Mul, Erf, Add, then
    Mul(x, .) * 0.5 or (x * 0.5) * .) -> one Gelu node: one kernel (or a GEMM epilogue) instead of five.
    Only exact GELU: each constant equal to its value to its own type's precision, and of a rank that
    cannot broadcast x to a bigger shape."""
    shapes = shapes or {}
    made, consumers = _graph_index(nodes)

    def scalar(name: str) -> tuple[float, float, int] | None:
        """(value, tolerance, rank) of a one-element constant."""
        a = _float_scalar(values, name)
        return None if a is None else (float(a.reshape(-1)[0]), 2 * float(np.finfo(a.dtype).eps), a.ndim)

    def only(out: str, op: str) -> int | None:
        c = consumers.get(out, [])
        return c[0] if len(c) == 1 and out not in outputs and nodes[c[0]]["op"] == op \
            and nodes[c[0]]["where"] == "device" else None

    def other(k: int, t: str) -> str | None:
        ins = nodes[k]["inputs"]
        return ins[1] if ins[0] == t else ins[0] if len(ins) == 2 and ins[1] == t else None

    xrank = -1     # rank of the candidate's x (-1: unknown, scalars only), set per Erf below

    def near(c: tuple[float, float, int] | None, want: float) -> bool:
        if c is None:
            return False
        value, tol, rank = c
        return abs(value - want) <= tol * abs(want) and (rank == 0 or rank <= xrank)

    drop: set[int] = set()
    for e, nd in enumerate(nodes):
        if nd["op"] != "Erf" or nd["where"] != "device" or nd["inputs"][0] not in made:
            continue
        d = made[nd["inputs"][0]]
        dn = nodes[d]
        if dn["op"] not in ("Div", "Mul") or dn["where"] != "device" or only(dn["outputs"][0], "Erf") != e:
            continue
        x = dn["inputs"][0]
        xrank = len(shapes[x]) if shapes.get(x) is not None else -1
        if not near(scalar(dn["inputs"][1]), 2 ** 0.5 if dn["op"] == "Div" else 2 ** -0.5):
            continue
        a = only(nd["outputs"][0], "Add")
        if a is None or not near(scalar(other(a, nd["outputs"][0]) or ""), 1.0):
            continue
        m = only(nodes[a]["outputs"][0], "Mul")
        if m is None:
            continue
        partner = other(m, nodes[a]["outputs"][0])
        parts = [d, e, a, m]
        if near(scalar(partner or ""), 0.5):                  # x * ((1 + erf) * 0.5)
            last = only(nodes[m]["outputs"][0], "Mul")
            if last is None or other(last, nodes[m]["outputs"][0]) != x or set(consumers.get(x, [])) != {d, last}:
                continue
            parts.append(last)
        elif partner == x:                                    # (x * (1 + erf)) * 0.5
            last = only(nodes[m]["outputs"][0], "Mul")
            if last is None or not near(scalar(other(last, nodes[m]["outputs"][0]) or ""), 0.5) \
                    or set(consumers.get(x, [])) != {d, m}:
                continue
            parts.append(last)
        else:                                                 # (x * 0.5) * (1 + erf)
            h = made.get(partner or "")
            if h is None or nodes[h]["op"] != "Mul" or other(h, x) is None or not near(scalar(other(h, x)), 0.5) \
                    or set(consumers.get(x, [])) != {d, h} or only(partner, "Mul") != m:
                continue
            parts.append(h)
            last = m
        y = nodes[last]["outputs"][0]
        nodes[last] = {"op": "Gelu", "name": nodes[last]["name"], "inputs": [x], "outputs": [y], "attrs": {},
                       "where": "device"}
        drop.update(p for p in parts if p != last)
    return [nd for k, nd in enumerate(nodes) if k not in drop]


def fuse_attention(nodes: list[dict], values: Mapping[str, np.ndarray], outputs: set[str],
                   shapes: Mapping[str, list], opset: int) -> list[dict]:
    """MatMul(Q, Kt) [-> Mul / Div by a constant] [-> Add(mask)] [-> Reshape -> Add(mask) -> Reshape, both
    masks known on the host: Swin's shifted windows, composed into one mask by a host node] -> Softmax(last
    axis) [-> IsNaN / Where guard] -> MatMul(., V) as the exporters write attention -> one ``Attention``
    node (inputs Q, Kt, V, mask; attrs scale, guard). A constant scalar Mul on Q or Kt (the exporters' split 1/sqrt(sqrt(d)))
    folds into the scale; one the host computes from shapes (TorchScript's scaled_dot_product_attention)
    is multiplied in when the shapes are planned (``scale_by``), and a Transpose feeding Q, Kt or V or reading the output is read / written in
    place (``perm_q`` / ``perm_kt`` / ``perm_v`` / ``perm_o``). Only when every intermediate has one
    reader and is no output, and the ranks are known (2 to 4, equal; the mask's at most that). fp16
    plans run it as one flash-attention kernel, fp32 plans as GEMM, masked softmax, GEMM."""
    made, consumers = _graph_index(nodes)

    def sole(t: str, *ops: str) -> int | None:
        c = consumers.get(t, [])
        return c[0] if len(c) == 1 and t not in outputs and nodes[c[0]]["op"] in ops \
            and nodes[c[0]]["where"] == "device" else None

    def scalar(name: str, rank: int) -> float | None:
        """A one-element constant of rank <= ``rank`` (it cannot broadcast the other operand up)."""
        a = _float_scalar(values, name)
        return None if a is None or a.ndim > rank else float(a.reshape(-1)[0])

    def rank(t: str) -> int:
        s = shapes.get(t)
        return len(s) if s is not None else -1

    def known(name: str) -> bool:
        """A value the host has when shapes are planned (an initializer, a constant, a host node's output)."""
        p = made.get(name)
        return name in values or (p is not None and nodes[p]["where"] == "host")

    def host_scalar(name: str, rank: int) -> bool:
        """A one-element value the host computes per shape (1/sqrt(sqrt(head size)) from Shape ops)."""
        p, s = made.get(name), shapes.get(name)
        return p is not None and nodes[p]["where"] == "host" and s is not None and len(s) <= rank \
            and all(d == 1 for d in s)

    drop: set[int] = set()
    before: dict[int, dict] = {}        # host nodes that go before a fused Attention (its composed mask)
    for i, nd in enumerate(nodes):
        if nd["op"] != "MatMul" or nd["where"] != "device" or i in drop:
            continue
        q, kt = nd["inputs"][:2]
        r = rank(q)
        if not 2 <= r <= 4 or rank(kt) != r:
            continue
        parts, scale, out, mask, guard = [i], 1.0, nd["outputs"][0], "", 0
        scale_by: list[list] = []          # [host value, power]: factors of the scale known when planning
        j = sole(out, "Mul", "Div")
        if j is not None:
            ins = nodes[j]["inputs"]
            div = nodes[j]["op"] == "Div"
            f = ins[1] if ins[0] == out else ins[0] if not div else ""
            c = scalar(f, r) if f else None
            if c is not None and c != 0:
                scale = 1.0 / c if div else c
            elif f and host_scalar(f, r):
                scale_by.append([f, -1 if div else 1])
            if (c is not None and c != 0) or scale_by:
                parts.append(j)
                out = nodes[j]["outputs"][0]
        j = sole(out, "Add")
        if j is not None:
            other = [t for t in nodes[j]["inputs"] if t != out]
            ms = None if len(other) != 1 else shapes.get(other[0]) if other[0] not in values \
                else list(np.shape(values[other[0]]))
            if ms is None or len(ms) > r:     # (a mask that broadcasts the scores is planned as such)
                continue
            mask = other[0]
            parts.append(j)
            out = nodes[j]["outputs"][0]
        composed = None
        j = sole(out, "Reshape")
        if j is not None and (not mask or known(mask)):
            # Swin's shifted windows: the scores (+ relative position bias) reshaped to split the window
            # index, + the shift mask, reshaped back: both masks known on the host, summed there once
            # per shape into one mask of the scores' shape (RtxAttentionMask)
            a2 = sole(nodes[j]["outputs"][0], "Add")
            k2 = sole(nodes[a2]["outputs"][0], "Reshape") if a2 is not None else None
            other = [t for t in nodes[a2]["inputs"] if t != nodes[j]["outputs"][0]] if a2 is not None else []
            if k2 is None or len(other) != 1 or not known(other[0]):
                continue
            composed = [mask, nodes[j]["inputs"][1], other[0], nodes[k2]["inputs"][1]]
            parts += [j, a2, k2]
            out = nodes[k2]["outputs"][0]
        j = sole(out, "Softmax")
        if j is None:
            continue
        axis = nodes[j]["attrs"].get("axis", -1 if opset >= 13 else 1)
        if axis not in (-1, r - 1):
            continue
        parts.append(j)
        out = nodes[j]["outputs"][0]
        readers = consumers.get(out, [])
        if len(readers) == 2 and out not in outputs:          # Where(IsNaN(p), 0, p)
            isnan = next((k for k in readers if nodes[k]["op"] == "IsNaN"), None)
            where = next((k for k in readers if nodes[k]["op"] == "Where"), None)
            if isnan is None or where is None or sole(nodes[isnan]["outputs"][0], "Where") != where:
                continue
            w_ins = nodes[where]["inputs"]
            if w_ins[0] != nodes[isnan]["outputs"][0] or w_ins[2] != out or scalar(w_ins[1], r) != 0.0:
                continue
            parts += [isnan, where]
            out, guard = nodes[where]["outputs"][0], 1
        j = sole(out, "MatMul")
        if j is None or nodes[j]["inputs"][0] != out or rank(nodes[j]["inputs"][1]) != r:
            continue
        v, y = nodes[j]["inputs"][1], nodes[j]["outputs"][0]
        operands, attrs = [], {}
        for t, reader, key in ((q, i, "q"), (kt, i, "kt"), (v, j, "v")):
            p = made.get(t)
            # a constant scalar Mul that only feeds this attention folds into the scale
            if p is not None and nodes[p]["op"] == "Mul" and nodes[p]["where"] == "device" and key != "v" \
                    and consumers.get(t) == [reader] and t not in outputs and p not in drop:
                a, b = nodes[p]["inputs"]
                c, x, by = scalar(b, r), a, None
                if c is None:
                    c, x = scalar(a, r), b
                if c is None:
                    by = b if host_scalar(b, r) else a if host_scalar(a, r) else None
                    if by:
                        c, x = 1.0, (a if by == b else b)
                if c is not None and rank(x) == r:
                    scale *= c
                    if by:
                        scale_by.append([by, 1])
                    drop.add(p)
                    t, reader = x, p
            # a Transpose that only feeds this attention is read in place (strides), not copied
            p = made.get(t)
            if p is not None and nodes[p]["op"] == "Transpose" and nodes[p]["where"] == "device" \
                    and consumers.get(t) == [reader] and t not in outputs and p not in drop \
                    and rank(nodes[p]["inputs"][0]) == r:
                attrs[f"perm_{key}"] = list(nodes[p]["attrs"].get("perm", range(r - 1, -1, -1)))
                drop.add(p)
                t = nodes[p]["inputs"][0]
            operands.append(t)
        readers = consumers.get(y, [])
        if len(readers) == 1 and y not in outputs and nodes[readers[0]]["op"] == "Transpose" \
                and nodes[readers[0]]["where"] == "device":
            k = readers[0]
            attrs["perm_o"] = list(nodes[k]["attrs"].get("perm", range(r - 1, -1, -1)))
            y = nodes[k]["outputs"][0]
            drop.add(k)
        drop.update(parts)
        if composed is not None:
            mask = f"{nodes[j]['name']}#mask"
            before[j] = {"op": "RtxAttentionMask", "name": mask, "inputs": operands[:2] + composed, "outputs": [mask],
                         "attrs": {k: attrs[k] for k in ("perm_q", "perm_kt") if k in attrs}, "where": "host"}
        nodes[j] = {"op": "Attention", "name": nodes[j]["name"], "inputs": operands + [mask], "outputs": [y],
                    "attrs": {"scale": scale, "guard": guard, **attrs, **({"scale_by": scale_by} if scale_by else {})},
                    "where": "device", "fused_from": nd["name"]}
    return [n for k, nd in enumerate(nodes) for n in ([before[k]] if k in before else []) + ([nd] if k not in drop else [])]


#: activations a Conv / Gemm / MatMul epilogue applies, by their code in kernels.epilogue_act; SILU: the
#: Sigmoid + Mul pair exporters write
ACTIVATIONS = {"Relu": 1, "Gelu": 2, "Sigmoid": 4, "HardSwish": 5}
SILU = 3


def layer_scale(nodes: list[dict], j: int, out: str, nd: Mapping[str, Any], ins: Sequence[str],
                weights: Mapping[str, np.ndarray], shapes: Mapping[str, list], sole_next: Any,
                real: Mapping[str, str], constants: Mapping[str, np.ndarray] | None = None
                ) -> tuple[str, np.ndarray, int, int | None] | None:
    """A Gemm / MatMul (with its bias fused, no residual or activation yet) whose output only a
    multiplication by a constant per-column factor reads: ``Mul(out, gamma)`` (CaiT's, DINOv2's layer
    scale) or ``Transpose(out)`` then ``Mul(., gamma)`` (ConvNeXt's: gamma ``[C, 1, 1]`` on the NCHW
    view). Returns (gamma's name, its value, the Mul's index, the Transpose's index or None) when gamma is an
    initializer varying along the output's columns only, so that ``weights.derive_weight`` can fold
    it into the weight's columns and the bias (``colscale``), or a small Constant node's value
    (Whisper's query scale as TorchScript writes it; the caller keeps the value in the node). ``real`` maps
    the host Identity aliases exporters give equal initializers to the initializer (the caller makes the
    bias that one too)."""
    wname = ins[1]
    w = weights.get(wname)
    if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating) or ins[3]:
        return None
    N = w.shape[0] if nd["op"] == "Gemm" and nd["attrs"].get("transB", 0) else w.shape[1]
    bias = real.get(ins[2], ins[2])
    if ins[2] and (bias not in weights or weights[bias].shape != (N,)):
        return None      # a bias that broadcasts over the columns would change shape when scaled
    rank = len(shapes.get(out) or [])
    cols, trans = rank - 1, None          # the output's column axis, and where a Transpose puts it
    if nodes[j]["op"] == "Transpose":
        perm = list(nodes[j]["attrs"].get("perm") or range(rank - 1, -1, -1))
        if rank == 0 or sorted(perm) != list(range(rank)):
            return None
        trans, cols = j, perm.index(rank - 1)
        j = sole_next(j, nodes[j]["outputs"][0])
        if j is None:
            return None
    mul = nodes[j]
    seen = nodes[trans]["outputs"][0] if trans is not None else out
    other = [t for t in mul["inputs"] if t != seen]
    gamma = real.get(other[0], other[0]) if len(other) == 1 else ""
    g = weights.get(gamma, (constants or {}).get(gamma))
    if mul["op"] != "Mul" or rank == 0 or len(mul["inputs"]) != 2 or g is None or (gamma not in weights and g.size > N):
        return None
    if not np.issubdtype(g.dtype, np.floating) or g.ndim > rank:
        return None
    dims = [1] * (rank - g.ndim) + list(g.shape)
    if any(d != 1 for a, d in enumerate(dims) if a != cols) or dims[cols] not in (1, N):
        return None
    return gamma, g, j, trans


def fuse(nodes: list[dict], weights: Mapping[str, np.ndarray], shapes: Mapping[str, list], outputs: set[str],
         constants: Mapping[str, np.ndarray] | None = None) -> list[dict]:
    """Fold BatchNormalization into Conv; fuse bias, residual Add and Relu / GELU epilogues (see module
    doc). A MatMul's bias may be an initializer or a Constant node's value (uploaded once per shape)."""
    vectors = {**(constants or {}), **weights}
    real: dict[str, str] = {}     # Identity alias -> the initializer it names
    for nd in nodes:          # exporters alias equal initializers through Identity (evaluated on the host)
        if nd["op"] == "Identity" and nd["where"] == "host" and nd["inputs"][0] in vectors:
            vectors[nd["outputs"][0]] = vectors[nd["inputs"][0]]
            if nd["inputs"][0] in weights or nd["inputs"][0] in real:
                real[nd["outputs"][0]] = real.get(nd["inputs"][0], nd["inputs"][0])
    _, consumers = _graph_index(nodes)
    removed: set[int] = set()

    def sole_next(i: int, out: str) -> int | None:
        c = consumers.get(out, [])
        if out in outputs or len(c) != 1 or c[0] in removed:
            return None
        j = c[0]
        return j if nodes[j]["where"] == "device" else None

    def silu_after(out: str) -> tuple[int, int] | None:
        """(Sigmoid, Mul) when ``out`` feeds just Sigmoid(out) and Mul(out, that): SiLU as exporters write it."""
        c = consumers.get(out, [])
        if out in outputs or len(c) != 2 or any(k in removed or nodes[k]["where"] != "device" for k in c):
            return None
        sig = next((k for k in c if nodes[k]["op"] == "Sigmoid"), None)
        mul = next((k for k in c if nodes[k]["op"] == "Mul"), None)
        if sig is None or mul is None:
            return None
        s_out = nodes[sig]["outputs"][0]
        if s_out in outputs or consumers.get(s_out) != [mul] or sorted(nodes[mul]["inputs"]) != sorted([out, s_out]):
            return None
        return sig, mul

    for i, nd in enumerate(nodes):
        if i in removed or nd["where"] != "device" or nd["op"] not in ("Conv", "Gemm", "MatMul"):
            continue
        if nd["op"] == "MatMul" and nd["inputs"][1] not in weights:
            pass  # activation x activation MatMul: only relu/bias fusion below would apply; keep simple
        out = nd["outputs"][0]
        pos = i
        ins = list(nd["inputs"]) + [""] * (4 - len(nd["inputs"]))
        attrs = dict(nd["attrs"])
        j = sole_next(i, out)
        if nd["op"] == "Conv" and j is not None and nodes[j]["op"] == "BatchNormalization" \
                and nodes[j]["inputs"][0] == out and all(p in weights for p in nodes[j]["inputs"][1:5]) \
                and len([o for o in nodes[j]["outputs"] if o]) == 1:
            bn = nodes[j]
            attrs["bn"] = {"params": list(bn["inputs"][1:5]), "epsilon": float(bn["attrs"].get("epsilon", 1e-5))}
            out, pos = bn["outputs"][0], j
            removed.add(j)
            j = sole_next(j, out)
        if nd["op"] == "MatMul" and j is not None and nodes[j]["op"] == "Add" and ins[2] == "":
            other = [t for t in nodes[j]["inputs"] if t != out]    # Add(out, bias) or Add(bias, out)
            if len(other) == 1 and other[0] in vectors and np.ndim(vectors[other[0]]) == 1:
                ins[2] = other[0]
                out, pos = nodes[j]["outputs"][0], j
                removed.add(j)
                j = sole_next(j, out)
        changed = False
        if nd["op"] in ("Gemm", "MatMul") and j is not None and "relu" not in attrs:
            scaled = layer_scale(nodes, j, out, nd, ins, weights, shapes, sole_next, real, constants)
            if scaled is not None:       # a per-column constant factor: folded into the weight and bias
                attrs["colscale"], gamma, mul, moved = scaled
                if attrs["colscale"] not in weights:      # a Constant node's value travels in the node
                    attrs["colscale_value"] = [float(v) for v in np.asarray(gamma).reshape(-1)]
                # the power of two at or above gamma's largest magnitude scales the epilogue (alpha, fp32):
                # the weight's columns take gamma / that, so a small layer scale (1e-5 .. 1e-6 at init)
                # leaves fp16 weights in their normal range
                top = float(np.max(np.abs(gamma))) if gamma.size else 0.0
                attrs["colscale_alpha"] = float(2.0 ** np.ceil(np.log2(top))) if 0 < top < np.inf else 1.0
                ins[2] = real.get(ins[2], ins[2])
                removed.add(mul)
                changed = True
                if moved is None:        # Mul(out, gamma): the Mul's output is the layer's
                    out, pos = nodes[mul]["outputs"][0], mul
                    j = sole_next(mul, out)
                else:                    # Transpose(out) then Mul: the Transpose writes the Mul's output
                    nodes[j] = {**nodes[j], "outputs": [nodes[mul]["outputs"][0]]}
                    j = None
        if j is not None and nodes[j]["op"] == "Add" and nd["op"] in ("Conv", "Gemm", "MatMul"):
            other = [t for t in nodes[j]["inputs"] if t != out]
            if len(other) == 1 and other[0] not in weights and _same_static_shape(shapes.get(other[0]), shapes.get(out)) \
                    and _same_static_shape(shapes.get(nodes[j]["outputs"][0]), shapes.get(out)):
                ins[3] = other[0]
                out, pos = nodes[j]["outputs"][0], j
                removed.add(j)
                j = sole_next(j, out)
        if j is not None and (nodes[j]["op"] in ACTIVATIONS and (nodes[j]["op"] != "Gelu" or
                                                                 nodes[j]["attrs"].get("approximate", "none") == "none")):
            attrs["relu"] = ACTIVATIONS[nodes[j]["op"]]     # the epilogue's activation code
            out, pos = nodes[j]["outputs"][0], j
            removed.add(j)
        elif j is None and (silu := silu_after(out)) is not None:
            attrs["relu"] = SILU
            out, pos = nodes[silu[1]]["outputs"][0], silu[1]
            removed.update(silu)
        if pos != i:
            fused = {**nd, "inputs": ins, "outputs": [out], "attrs": attrs, "fused_from": nd["name"]}
            removed.add(i)
            nodes[pos] = fused  # the fused node sits where its last part was: all its inputs exist by then
        elif changed:
            nodes[i] = {**nd, "inputs": ins, "attrs": attrs}
    return [nd for k, nd in enumerate(nodes) if k not in removed or nd.get("fused_from")]
