"""What an ONNX model expects, read without loading its weights (used by warm-ups and JIT builds)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError


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


def check_onnx_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as an existing ONNX model file; ConfigError naming what it is instead (missing, a
    directory, not ONNX). Cheap: an ONNX file starts with its ``ir_version`` field (protobuf tag 0x08),
    which every exporter writes first; anything else is parsed to be sure."""
    p = Path(path)
    fix = "pass the .onnx file of the model the app ships"
    if p.is_dir():
        raise ConfigError(f"ONNX file {p} is a directory", fix=fix, path=str(p))
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except FileNotFoundError:
        raise ConfigError(f"ONNX file {p} does not exist", fix=fix, path=str(p)) from None
    except OSError as e:
        raise ConfigError(f"cannot read ONNX file {p}: {e.strerror or e}", fix=fix, path=str(p)) from e
    if head[:1] == b"\x08" and len(head) == 2:
        return p
    try:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        ok = model.ir_version > 0 and len(model.graph.node) > 0
    except Exception:  # noqa: BLE001 - protobuf raises several kinds for garbage
        ok = False
    if not ok:
        raise ConfigError(f"{p} is not an ONNX model", fix=fix, path=str(p))
    return p
