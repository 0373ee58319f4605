"""What an outside attack on the nvrtc build found (2026-11-21: 126 exports nobody here wrote plus
hurried-user inputs), kept as regression tests. Each built a plan that could not run, or failed with
something other than one clear UnsupportedModel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from cudaemu import EmuLoadedPlan, compiler
from nvrtc_helpers import reference
from rtxpack.backends.nvrtc import NvrtcBackend
from rtxpack.backends.nvrtc import compile as nv_compile
from rtxpack.core.errors import UnsupportedModel


def _save(tmp: Path, name: str, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    m = h.make_model(h.make_graph(nodes, name, inputs, outputs, list(inits)), opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(tmp / f"{name}.onnx"))
    return tmp / f"{name}.onnx"


@pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")
def test_an_initializer_returned_as_an_output_runs(tmp_path: Path) -> None:
    """The dynamo exporter writes `return self.fc(x), self.anchors` as a graph output that is an
    initializer; the plan built but its run failed with 'tensor has no device memory'."""
    f = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    w = nh.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    anchors = nh.from_array(np.linspace(0, 1, 6, dtype=np.float32), "anchors")
    path = _save(tmp_path, "buffer_out", [h.make_node("MatMul", ["x", "w"], ["y"])], [f("x", [2, 8])],
                 [f("y", [2, 4]), f("anchors", [6]), f("x", [2, 8])], [w, anchors])
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    ref = reference(path, {"x": x})
    with EmuLoadedPlan(NvrtcBackend().build(path, compute_capabilities=["8.6"], ptx=False)) as p:
        got = p.run({"x": x})
    for k, r in ref.items():
        np.testing.assert_allclose(got[k], r, rtol=1e-5, atol=1e-6)


def test_every_unsupported_node_in_one_error_including_what_only_planning_sees(tmp_path: Path) -> None:
    """Cubic Resize, Clip on int64 and a 3-D Conv are refused by the planner, not the importer: they
    were reported one per build, and not at all beside an unsupported operator."""
    f = lambda n, t, s: h.make_tensor_value_info(n, t, s)  # noqa: E731
    nodes = [h.make_node("Resize", ["img", "", "scales"], ["r1"], mode="cubic", name="up_cubic"),
             h.make_node("Relu", ["r1"], ["r1b"], name="after_cubic"),           # depends on a refused node
             h.make_node("Clip", ["i", "lo"], ["c"], name="clip_int"),
             h.make_node("Conv", ["vol", "w3"], ["v"], name="conv3d"),
             h.make_node("TopK", ["x", "k"], ["tv", "ti"], axis=-1, name="topk"),
             h.make_node("Relu", ["x"], ["ok"], name="fine")]
    inits = [h.make_tensor("scales", T.FLOAT, [4], [1, 1, 2, 2]), h.make_tensor("lo", T.INT64, [], [1]),
             h.make_tensor("k", T.INT64, [1], [2]),
             nh.from_array(np.ones((2, 1, 3, 3, 3), np.float32), "w3")]
    path = _save(tmp_path, "many", nodes,
                 [f("img", T.FLOAT, [1, 2, 4, 4]), f("i", T.INT64, [2, 3]), f("vol", T.FLOAT, [1, 1, 5, 5, 5]),
                  f("x", T.FLOAT, [2, 8])],
                 [f("r1b", T.FLOAT, [1, 2, 8, 8]), f("c", T.INT64, [2, 3]), f("v", T.FLOAT, [1, 2, 3, 3, 3]),
                  f("tv", T.FLOAT, [2, 2]), f("ok", T.FLOAT, [2, 8])], inits)
    before = nv_compile.NVRTC_CALLS
    with pytest.raises(UnsupportedModel) as e:
        NvrtcBackend().build(path, compute_capabilities=["8.6"], ptx=False)
    listed = e.value.unsupported
    assert len(listed) == 4, listed
    for name in ("topk", "up_cubic", "clip_int", "conv3d"):
        assert sum(f"'{name}'" in p for p in listed) == 1, (name, listed)
    assert "4 unsupported node(s)" in str(e.value) and "after_cubic" not in str(e.value)
    assert nv_compile.NVRTC_CALLS == before


def test_an_empty_file_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(UnsupportedModel, match="no graph outputs"):
        NvrtcBackend().build(tmp_path / "empty.onnx", compute_capabilities=["8.6"], ptx=False)


def test_a_model_proto_without_its_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = nh.from_array(np.ones((64, 64), np.float32), "w")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 64])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2, 64])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    (tmp_path / "m").mkdir()
    onnx.save(m, str(tmp_path / "m" / "m.onnx"), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    proto = onnx.load(str(tmp_path / "m" / "m.onnx"), load_external_data=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsupportedModel, match="cannot read the weights") as e:
        NvrtcBackend().build(proto, compute_capabilities=["8.6"], ptx=False)
    assert "external-data" in e.value.fix
    assert NvrtcBackend().build(tmp_path / "m" / "m.onnx", compute_capabilities=["8.6"], ptx=False)  # the path works


@pytest.mark.parametrize("prof,words", [
    ({"min": [4, 3], "opt": [2, 3], "max": [8, 3]}, "min <= opt <= max"),
    ({"min": [0, 3], "opt": [1, 3], "max": [2, 3]}, "min <= opt <= max"),
    ({"min": [1, 2], "opt": [1, 3], "max": [1, 4]}, "fixes it at 3"),
])
def test_profiles_are_checked_against_each_other_and_the_model(tmp_path: Path, prof: dict, words: str) -> None:
    f = lambda n, s: h.make_tensor_value_info(n, T.FLOAT, s)  # noqa: E731
    path = _save(tmp_path, "p", [h.make_node("Relu", ["x"], ["y"])], [f("x", ["batch", 3])], [f("y", ["batch", 3])])
    with pytest.raises(UnsupportedModel) as e:
        NvrtcBackend().build(path, compute_capabilities=["8.6"], ptx=False, profiles={"x": prof})
    assert words in str(e.value), str(e.value)
    assert "index out of range" not in str(e.value)
