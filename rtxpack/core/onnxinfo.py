"""What an ONNX model expects, read without loading its weights (used by warm-ups and JIT builds)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def model_inputs(onnx_path: str | Path) -> dict[str, tuple[list[int | None], Any]]:
    """``{input name: ([dims, None where dynamic], numpy dtype)}`` of the graph inputs that are not
    initializers."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    out = {}
    for i in model.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out[i.name] = (dims, helper.tensor_dtype_to_np_dtype(t.elem_type))
    return out


def default_profiles(onnx_path: str | Path, max_dim: int = 64) -> dict[str, dict[str, list[int]]] | None:
    """An optimization profile for a build with no declared one: each dynamic dimension from 1 to
    ``max_dim`` (opt 1); None when every input is static."""
    out = {}
    for name, (dims, _) in model_inputs(onnx_path).items():
        if any(d is None for d in dims):
            out[name] = {"min": [d or 1 for d in dims], "opt": [d or 1 for d in dims],
                         "max": [d or max_dim for d in dims]}
    return out or None
