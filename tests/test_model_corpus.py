"""The real-model corpus itself (tests/models + tests/model_corpus.py): metadata, determinism, inputs.

Cheap checks only (no GPU, no NVRTC): every structure copy carries its metadata and names every
stripped tensor, and a small model materializes into a valid ONNX, identically for the same seed.
The nvrtc gap report over the whole corpus is scripts/corpus_report.py (tests/models/CORPUS.md).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import model_corpus as mc

MODELS = mc.list_models()


def test_corpus_is_present_and_small():
    assert len(MODELS) >= 40
    total = sum(p.stat().st_size for p in mc.MODELS_DIR.glob("*.onnx"))
    assert total < 8 * 2**20, f"tests/models grew to {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", MODELS)
def test_metadata_complete(name):
    meta = mc.info(name)
    for key in ("family", "exporter", "opset", "inputs", "outputs", "stripped", "op_types", "nodes"):
        assert key in meta, key
    m = onnx.load(str(mc.model_path(name)))
    kept = {i.name for i in m.graph.initializer}
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input} | kept
    stripped = {r["name"] for r in meta["stripped"]}
    assert not stripped & kept
    # every tensor a node reads is produced, kept, an input, or re-created by materialize()
    missing = {t for n in m.graph.node for t in n.input if t and t not in produced and t not in stripped}
    assert not missing, sorted(missing)[:5]
    for inp in meta["inputs"]:
        assert inp["dtype"] in ("float32", "int64")
        if any(not isinstance(d, int) for d in inp["shape"]):
            assert inp["profile"] and len(inp["profile"]["opt"]) == len(inp["shape"])
    feeds = mc.typical_inputs(name, batch=1)
    assert set(feeds) == {i["name"] for i in meta["inputs"]}
    for inp in meta["inputs"]:
        t = inp["typical"]
        if t["kind"] == "input_ids":
            assert feeds[inp["name"]].max() < t["vocab"]


def _smallest(k: int = 2) -> list[str]:
    return sorted(MODELS, key=lambda n: sum(int(np.prod(r["shape"])) for r in mc.info(n)["stripped"]))[:k]


@pytest.mark.parametrize("name", _smallest())
def test_materialize_is_deterministic_and_valid(name, tmp_path: Path):
    a = mc.materialize(name, tmp_path / "a", seed=0)
    b = mc.materialize(name, tmp_path / "b", seed=0)
    c = mc.materialize(name, tmp_path / "c", seed=1)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    m = onnx.load(str(a))
    onnx.checker.check_model(m)
    for init in m.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if np.issubdtype(arr.dtype, np.floating):
            assert np.isfinite(arr).all(), init.name


def test_bn_variance_is_positive():
    rec = {"name": "x", "dtype": "float32", "shape": [4096], "kind": "bn_var"}
    assert mc.make_tensor(rec).min() > 0
