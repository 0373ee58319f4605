"""Element types on the device: which ONNX types a plan carries, their storage, and each op's output type.

Device tensors are float32, int64, int32 or bool (one byte each, 0/1). Kernels that depend on the
element type take type codes as template arguments (``TYPE_CODES``); kernels that only move
bytes (copies, gathers, selects) take the element size instead.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel

#: numpy dtype names the device holds -> (type code for templates, C type)
DEVICE_TYPES: dict[str, tuple[int, str]] = {
    "float32": (0, "float"), "int64": (1, "long long"), "int32": (2, "int"), "bool": (3, "unsigned char"),
}
TYPE_CODES = {name: code for name, (code, _) in DEVICE_TYPES.items()}
C_TYPES = {code: ctype for _, (code, ctype) in DEVICE_TYPES.items()}
ITEMSIZE = {"float32": 4, "int64": 8, "int32": 4, "bool": 1}
#: ONNX TensorProto element type -> numpy dtype name
ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}

COMPARISONS = ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
LOGICAL = ("And", "Or", "Xor")
TO_BOOL_UNARY = ("IsNaN", "IsInf", "Not")


def device_dtype(name: str, what: str) -> str:
    """``name`` as the device stores it; UnsupportedModel naming ``what`` for a type it cannot hold."""
    if name in ITEMSIZE:
        return name
    if name in ("float64", "float16"):
        return "float32"   # host arithmetic in double; the device keeps float32 (fp16 weights: see weights.py)
    raise UnsupportedModel(f"{what} has element type {name}, which the nvrtc backend does not hold on the GPU",
                           fix="use float32, int64, int32 or bool tensors (or the tensorrt-rtx backend)")


def as_device_array(arr: Any) -> np.ndarray:
    """A host value as the device stores it (float64 -> float32, bool -> one byte)."""
    a = np.asarray(arr)
    name = a.dtype.name
    if name == "bool":
        return a.astype(np.uint8)
    if name in ("float64", "float16"):
        return a.astype(np.float32)
    if name in ("int8", "int16", "uint8", "uint16", "uint32"):
        return a.astype(np.int32)
    if name == "uint64":
        return a.astype(np.int64)
    return a


def host_dtype_name(arr: Any) -> str:
    """The device dtype name of a host value ("bool" for booleans, which the device keeps as bytes)."""
    if np.asarray(arr).dtype.name == "bool":
        return "bool"
    return device_dtype(as_device_array(arr).dtype.name, "a value")


def output_dtypes(node: Mapping[str, Any], ins: Sequence[str | None]) -> list[str]:
    """Element types of a device node's outputs from its inputs' (``None`` for absent inputs)."""
    op, a = node["op"], node["attrs"]
    n_out = len(node["outputs"])
    first = next((d for d in ins if d), "float32")
    if op in COMPARISONS or op in LOGICAL or op in TO_BOOL_UNARY:
        return ["bool"] * n_out
    if op == "Cast":
        return [device_dtype(ONNX_TYPES.get(int(a["to"]), "?"), f"Cast (node {node['name']!r})")]
    if op == "CastLike":
        return [ins[1] or "float32"]
    if op == "Where":
        return [ins[1] or ins[2] or "float32"]
    if op in ("ArgMax", "ArgMin", "Shape", "Size", "NonZero"):
        return ["int64"] * n_out
    if op == "Dropout":
        return [first] + ["bool"] * (n_out - 1)
    if op in ("MaxPool",) and n_out > 1:
        return [first, "int64"]
    if op in ("ConstantOfShape",):
        return ["float32"]
    return [first] * n_out
