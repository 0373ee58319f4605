"""Identities: model digest, weights digest and generic content digests.

* model digest   -- sha256 over the ONNX bytes followed by every external-data file it names
                    (sorted by location), so moving weights out of the .onnx changes nothing
                    the user did not change.
* weights digest -- sha256 over each initializer's name, dtype, shape and raw little-endian
                    bytes, in name order. Independent of graph structure and of where the
                    bytes are stored; a stripped plan records it and refit checks it first.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hasher(path: str | os.PathLike[str]) -> "hashlib._Hash":
    """A sha256 object fed with the file's bytes (one reused buffer, no per-chunk allocation)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_hasher(path).hexdigest()


def json_digest(obj: Any) -> str:
    """sha256 of a canonical JSON encoding (sorted keys, no whitespace)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _external_locations(model: Any) -> list[str]:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def model_files(onnx_path: str | os.PathLike[str]) -> list[str]:
    """The external-data files an ONNX file names, relative to its folder, sorted (what a copy of the
    model must carry besides the .onnx itself)."""
    import onnx

    return _external_locations(onnx.load(str(onnx_path), load_external_data=False))


def external_files(onnx_path: str | os.PathLike[str]) -> list[str]:
    """The external-data files an ONNX file names (locations relative to its folder), sorted."""
    return load_structure(onnx_path)[1]


def load_structure(onnx_path: str | os.PathLike[str]) -> tuple[Any, list[str]]:
    """(the ModelProto without its external data, the external-data files it names): one parse that
    :func:`weights_digest_of_structure` can finish without reading the .onnx again."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return model, _external_locations(model)


def weights_digest_of_structure(model: Any, onnx_path: str | os.PathLike[str]) -> str:
    """:func:`weights_digest` of a model from :func:`load_structure` (its external data loaded now)."""
    from onnx.external_data_helper import load_external_data_for_model

    load_external_data_for_model(model, str(Path(onnx_path).parent))
    return weights_digest_from_arrays(initializers(model))


def model_digest_of(onnx_path: str | os.PathLike[str], externals: Iterable[str]) -> str:
    """:func:`model_digest` when the external-data files are already known: bytes only, no parsing."""
    path = Path(onnx_path)
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)

    def feed(p: Path) -> None:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(view[:n])

    feed(path)
    for location in externals:
        h.update(b"\0external:" + location.encode() + b"\0")
        feed(path.parent / location)
    return h.hexdigest()


def model_digest(onnx_path: str | os.PathLike[str]) -> str:
    """sha256 of the ONNX file's bytes plus the bytes of its external-data files."""
    return model_digest_of(onnx_path, external_files(onnx_path))


def weights_digest_from_arrays(weights: Mapping[str, Any]) -> str:
    """Weights digest of ``{name: numpy array}`` (the definition; ONNX models go through here)."""
    import numpy as np

    h = hashlib.sha256()
    for name in sorted(weights):
        arr = np.ascontiguousarray(weights[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        h.update(name.encode() + b"\0")
        h.update(arr.dtype.str.lstrip("<>|=").encode() + b"\0")
        h.update(json.dumps(list(arr.shape)).encode() + b"\0")
        h.update(arr.tobytes())
    return h.hexdigest()


def initializers(model: Any) -> dict[str, Any]:
    """``{name: numpy array}`` of an ONNX ModelProto's initializers (external data loaded)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def weights_digest(onnx_path_or_model: Any) -> str:
    """Weights digest of an ONNX file (path) or a loaded ModelProto."""
    import onnx

    model = onnx_path_or_model
    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(str(model))
    return weights_digest_from_arrays(initializers(model))


def combined(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() + b"\0")
    return h.hexdigest()
