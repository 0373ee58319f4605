"""The real-model corpus: structure-only ONNX copies of exported models, re-materialized at test time.

``tests/models/<name>.onnx`` is a model exactly as an exporter wrote it (``torch.onnx.export`` with
the TorchScript or the dynamo exporter, or a reconstruction of an ONNX-model-zoo classic), except:

* every floating-point initializer with more than ``STRIP_THRESHOLD`` elements is removed from
  ``graph.initializer`` and recorded (name, ONNX dtype, shape, a distribution hint and the original
  tensor's statistics) in the model's ``metadata_props`` under the key ``rtxpack.corpus``;
* node-level ``metadata_props`` and ``doc_string`` (the dynamo exporter's stack traces and module
  paths) are dropped: they are not structure and would dominate the file size.

Small and integer initializers are kept verbatim. The same ``rtxpack.corpus`` JSON carries the
model's family, exporter, opset, inputs (dtype, shape with dynamic dims named, a suggested
min/opt/max profile and what a typical input looks like) and outputs.

    from model_corpus import list_models, materialize, info, typical_inputs
    path = materialize("resnet50-ts", tmp_path)          # full ONNX, weights from a fixed seed
    feeds = typical_inputs("resnet50-ts", batch=2)        # {"input": float32[2,3,224,224]}

Needs only numpy and onnx (no torch): CI re-creates the weights deterministically.
"""
from __future__ import annotations

import json
import math
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

MODELS_DIR = Path(__file__).resolve().parent / "models"
META_KEY = "rtxpack.corpus"
STRIP_THRESHOLD = 256           # float initializers with more elements than this are stripped
FORMAT = 1

_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}


# ---------------------------------------------------------------------------------------- strip
def _stats(arr: np.ndarray) -> dict[str, float]:
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    r = lambda v: float(f"{float(v):.6g}")  # noqa: E731
    return {"mean": r(a.mean()), "std": r(a.std()), "min": r(a.min()), "max": r(a.max())}


def _consumers(graph: Any) -> dict[str, list[tuple[Any, int]]]:
    out: dict[str, list[tuple[Any, int]]] = {}
    for n in graph.node:
        for i, t in enumerate(n.input):
            if t:
                out.setdefault(t, []).append((n, i))
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weight_hint(name: str, shape: list[int], consumers: Mapping[str, list[tuple[Any, int]]]) -> dict[str, Any]:
    """How a stripped tensor is used, hence how to re-create it: ``kind`` (+ ``fan_in`` for weights).

    Follows Transpose / Identity / Cast between the initializer and its real consumer (the dynamo
    exporter sometimes transposes a Linear weight in the graph). Embedding use (Gather) wins over
    matrix use so tied GPT-2 style embeddings keep their embedding scale.
    """
    kinds: list[dict[str, Any]] = []
    todo = [(name, list(shape))]
    seen = set()
    while todo:
        t, shp = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for node, idx in consumers.get(t, []):
            op = node.op_type
            if op in ("Identity", "Cast"):
                todo.append((node.output[0], shp))
            elif op == "Transpose":
                perm = _attr(node, "perm", list(range(len(shp)))[::-1])
                todo.append((node.output[0], [shp[p] for p in perm]))
            elif op == "Conv" and idx == 1 and len(shp) >= 3:
                kinds.append({"kind": "weight", "fan_in": int(np.prod(shp[1:]))})
            elif op == "ConvTranspose" and idx == 1 and len(shp) >= 3:
                strides = _attr(node, "strides", [1] * (len(shp) - 2))
                fan = shp[0] * int(np.prod(shp[2:])) / max(1, int(np.prod(strides)))
                kinds.append({"kind": "weight", "fan_in": max(1, int(round(fan)))})
            elif op == "Gemm" and idx in (0, 1) and len(shp) == 2:
                trans = _attr(node, "transB" if idx == 1 else "transA", 0)
                k = (shp[1] if trans else shp[0]) if idx == 1 else (shp[0] if trans else shp[1])
                kinds.append({"kind": "weight", "fan_in": int(k)})
            elif op == "MatMul" and len(shp) >= 2:
                kinds.append({"kind": "weight", "fan_in": int(shp[-2] if idx == 1 else shp[-1])})
            elif op in ("Conv", "ConvTranspose", "Gemm") and idx == 2:
                kinds.append({"kind": "bias"})
            elif op == "Gather" and idx == 0:
                kinds.append({"kind": "embedding"})
            elif op == "BatchNormalization" and idx in (1, 2, 3, 4):
                kinds.append({"kind": {1: "norm_scale", 2: "norm_shift", 3: "bn_mean", 4: "bn_var"}[idx]})
            elif op in ("LayerNormalization", "GroupNormalization", "InstanceNormalization") and idx in (1, 2):
                kinds.append({"kind": "norm_scale" if idx == 1 else "norm_shift"})
    for pref in ("embedding", "weight", "bn_var", "norm_scale", "norm_shift", "bn_mean", "bias"):
        for k in kinds:
            if k["kind"] == pref:
                return k
    return {"kind": "other"}


def strip_model(model: Any, meta: Mapping[str, Any], threshold: int = STRIP_THRESHOLD) -> Any:
    """A structure-only copy of ``model`` (modified in place and returned); see the module doc."""
    from onnx import numpy_helper

    g = model.graph
    # big float Constant nodes would defeat stripping: none of the corpus exports has one, check it
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type in _FLOAT_TYPES and int(np.prod(a.t.dims)) > threshold:
                    raise ValueError(f"Constant {n.name!r} holds a {list(a.t.dims)} float tensor: not strippable")
    cons = _consumers(g)
    kept, stripped = [], []
    for init in g.initializer:
        numel = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type in _FLOAT_TYPES and numel > threshold:
            arr = numpy_helper.to_array(init)
            rec = {"name": init.name, "dtype": _FLOAT_TYPES[init.data_type], "shape": [int(d) for d in init.dims]}
            rec.update(weight_hint(init.name, rec["shape"], cons))
            rec["stats"] = _stats(arr)
            stripped.append(rec)
        else:
            kept.append(init)
    del g.initializer[:]
    g.initializer.extend(kept)
    for n in g.node:
        del n.metadata_props[:]
        n.doc_string = ""
    for f in model.functions:
        for n in f.node:
            del n.metadata_props[:]
            n.doc_string = ""
    g.doc_string = ""
    full = dict(meta)
    full["format"] = FORMAT
    full["strip_threshold"] = threshold
    full["stripped"] = stripped
    props = [p for p in model.metadata_props if p.key != META_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    p = model.metadata_props.add()
    p.key, p.value = META_KEY, json.dumps(full, separators=(",", ":"))
    return model


# ---------------------------------------------------------------------------------------- read
def list_models(models_dir: Path | str = MODELS_DIR) -> list[str]:
    """Names of the corpus models (``tests/models/<name>.onnx``), sorted."""
    return sorted(p.stem for p in Path(models_dir).glob("*.onnx"))


def model_path(name: str, models_dir: Path | str = MODELS_DIR) -> Path:
    p = Path(models_dir) / f"{name}.onnx"
    if not p.exists():
        raise KeyError(f"no corpus model {name!r} in {models_dir} (have: {', '.join(list_models(models_dir))})")
    return p


@lru_cache(maxsize=None)
def _load_meta(path: str) -> dict[str, Any]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    for p in m.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise ValueError(f"{path} has no {META_KEY!r} metadata: not a corpus model")


def info(name: str, models_dir: Path | str = MODELS_DIR) -> dict[str, Any]:
    """The model's metadata: family, exporter, opset, source, inputs (name, dtype, shape with dynamic dims
    as names, ``profile`` {min, opt, max}, ``typical`` generator spec), outputs, stripped records, notes."""
    return json.loads(json.dumps(_load_meta(str(model_path(name, models_dir)))))


def profiles(name: str, models_dir: Path | str = MODELS_DIR) -> dict[str, dict[str, list[int]]]:
    """Suggested {input: {min, opt, max}} for every input with a dynamic dimension."""
    return {i["name"]: i["profile"] for i in info(name, models_dir)["inputs"] if i.get("profile")}


# ---------------------------------------------------------------------------------------- materialize
def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def make_tensor(rec: Mapping[str, Any], seed: int = 0) -> np.ndarray:
    """One stripped tensor, re-created deterministically from its record (per-tensor RNG stream)."""
    rng = _rng(seed, rec["name"])
    shape = tuple(rec["shape"])
    kind = rec.get("kind", "other")
    st = rec.get("stats", {"mean": 0.0, "std": 0.02, "min": -1.0, "max": 1.0})
    if kind == "weight":
        a = rng.standard_normal(shape) / math.sqrt(max(1, int(rec.get("fan_in", 1))))
    elif kind == "bias":
        a = rng.normal(0.0, 0.02, shape)
    elif kind == "norm_scale":
        a = rng.uniform(0.8, 1.2, shape)
    elif kind in ("norm_shift", "bn_mean"):
        a = rng.normal(0.0, 0.1, shape)
    elif kind == "bn_var":
        a = rng.uniform(0.5, 1.5, shape)
    else:   # embedding / other: the original tensor's distribution, within its range
        lo, hi = float(st["min"]), float(st["max"])
        if float(st["std"]) == 0.0:
            a = np.full(shape, float(st["mean"]))
        else:
            a = np.clip(rng.normal(float(st["mean"]), float(st["std"]), shape), lo, hi)
    return a.astype(np.dtype(rec["dtype"]) if rec["dtype"] != "bfloat16" else np.float32)


def materialize_model(name: str, seed: int = 0, zeros: bool = False, models_dir: Path | str = MODELS_DIR) -> Any:
    """The ModelProto with every stripped initializer re-created (same seed -> same bytes); ``zeros``:
    zero-filled instead (structure checks that never look at the values: no RNG cost)."""
    import onnx
    from onnx import numpy_helper

    src = model_path(name, models_dir)
    model = onnx.load(str(src))
    meta = _load_meta(str(src))
    for rec in meta["stripped"]:
        dt = np.dtype(rec["dtype"]) if rec["dtype"] != "bfloat16" else np.float32
        arr = np.zeros(tuple(rec["shape"]), dt) if zeros else make_tensor(rec, seed)
        t = numpy_helper.from_array(arr, rec["name"])
        if rec["dtype"] == "bfloat16":
            t = onnx.helper.make_tensor(rec["name"], onnx.TensorProto.BFLOAT16, arr.shape, arr.reshape(-1).tolist())
        model.graph.initializer.append(t)
    return model


def materialize(name: str, out_dir: Path | str, seed: int = 0, models_dir: Path | str = MODELS_DIR) -> Path:
    """Write ``out_dir/<name>.onnx``: the structure copy with every stripped initializer re-created
    (same seed -> same bytes). Models over 1.5 GiB get their weights in external data beside it."""
    import onnx

    model = materialize_model(name, seed, models_dir=models_dir)
    total = sum(np.prod(t.dims) * 4 for t in model.graph.initializer)
    out = Path(out_dir) / f"{name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    if total > 1.5 * 2**30:
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{name}.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, str(out))
    return out


# ---------------------------------------------------------------------------------------- inputs
_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


def input_shapes(name: str, batch: int = 1, dims: Mapping[str, int] | None = None,
                 models_dir: Path | str = MODELS_DIR) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: named dynamic dims from ``dims`` (e.g. {"seq": 64}), ``batch`` for the
    batch dim, else the profile's opt value."""
    dims = dict(dims or {})
    dims.setdefault("batch", batch)
    out = {}
    for inp in info(name, models_dir)["inputs"]:
        opt = (inp.get("profile") or {}).get("opt")
        shp = []
        for k, d in enumerate(inp["shape"]):
            if isinstance(d, int):
                shp.append(d)
            elif d in dims:
                shp.append(int(dims[d]))
            elif k == 0 and d is not None and "batch" in str(d).lower():
                shp.append(int(batch))
            elif opt:
                shp.append(int(opt[k]))
            else:
                shp.append(1)
        out[inp["name"]] = tuple(shp)
    return out


def typical_inputs(name: str, batch: int = 1, dims: Mapping[str, int] | None = None, seed: int = 0,
                   models_dir: Path | str = MODELS_DIR) -> dict[str, np.ndarray]:
    """Feeds that look like real data for this model (see ``info(name)["inputs"][i]["typical"]``):
    ``image`` N(0,1) floats, ``input_ids`` int in [0, vocab), ``attention_mask`` 1s with a padded
    tail on every other row, ``token_type_ids`` 0s then 1s, ``audio`` N(0, 0.5), ``timestep`` in
    [0, 1000), ``float`` N(0, 1)."""
    shapes = input_shapes(name, batch, dims, models_dir)
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in info(name, models_dir)["inputs"]:
        shp, dt = shapes[inp["name"]], _NP[inp["dtype"]]
        t = inp.get("typical", {"kind": "float"})
        kind = t["kind"]
        if kind == "input_ids":
            a = rng.integers(0, int(t["vocab"]), shp)
        elif kind == "attention_mask":
            a = np.ones(shp)
            if len(shp) == 2:
                for r in range(1, shp[0], 2):       # every other row: the last third is padding
                    a[r, shp[1] - shp[1] // 3:] = 0
        elif kind == "token_type_ids":
            a = np.zeros(shp)
            if len(shp) == 2:
                a[:, shp[1] // 2:] = 1
        elif kind == "audio":
            a = rng.normal(0.0, 0.5, shp)
        elif kind == "timestep":
            a = rng.uniform(0, 1000, shp)
            if np.issubdtype(dt, np.integer):
                a = np.floor(a)
        else:
            a = rng.standard_normal(shp)
        feeds[inp["name"]] = np.asarray(a).astype(dt)
    return feeds


__all__ = ["META_KEY", "MODELS_DIR", "STRIP_THRESHOLD", "info", "input_shapes", "list_models", "make_tensor",
           "materialize", "materialize_model", "model_path", "profiles", "strip_model", "typical_inputs", "weight_hint"]
