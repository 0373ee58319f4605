"""Small arrays inside a plan's graph JSON (constants, tensor attributes): base64 little-endian bytes."""
from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np


def encode_array(arr: np.ndarray) -> dict[str, Any]:
    arr = np.array(arr, order="C")  # not ascontiguousarray: that turns 0-d scalars into 1-d
    return {"dtype": arr.dtype.str.lstrip("<>|="), "shape": list(arr.shape),
            "data": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode()}


def decode_array(d: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"]).newbyteorder("<")).reshape(
        d["shape"]).astype(np.dtype(d["dtype"]))
