"""Model variants the farm needs for its examples and tests (no downloads).

``fp16_variant`` turns an fp32 ONNX model into an fp16 one (weights, inputs and outputs): the
TensorRT-RTX builder is strongly typed, so precision comes from the model's own types, and
Turing (7.5) refuses FP32 GEMM in TensorRT-RTX 1.7 -- a Turing engine needs an fp16 model.
"""
from __future__ import annotations

from pathlib import Path


def fp16_variant(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst``: ``src`` with float32 initializers, inputs and outputs turned into float16."""
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(model)
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
