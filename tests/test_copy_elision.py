"""Copy elision in the planner (schedule.elide_copies): chains of strided copies the exporters write
(torch.roll as Slice + Concat, q / k / v selected from a packed projection by Transpose + Gather, a
Transpose that only moves axes of size 1) become one copy or an alias.

``read_through`` is checked against numpy on random views; whole models against onnxruntime on the
CPU emulator, with the launches counted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cudaemu import EmuLoadedPlan, build_plan, compiler
from nvrtc_helpers import assert_close, rand, reference
from rtxpack.backends.nvrtc.launch import collapse, strides_of
from rtxpack.backends.nvrtc.schedule import _whole, read_through


def _gather(buf: np.ndarray, dims, st, off) -> np.ndarray:
    """The elements a view (dims, strides, offset) reads from a flat buffer, in the view's order."""
    idx = np.full(tuple(dims), off, dtype=np.int64)
    for d, (n, s) in enumerate(zip(dims, st)):
        shape = [1] * len(dims)
        shape[d] = n
        idx = idx + (np.arange(n) * s).reshape(shape)
    return buf[idx.reshape(-1)]


def _random_view(rng: np.random.Generator, numel: int, shape: tuple[int, ...]) -> tuple[list, list, int]:
    """A view of a contiguous buffer of logical ``shape``: axes permuted, each sliced with a step (or
    one index repeated = a broadcast), as Transpose / Slice / Gather / Expand read."""
    base = strides_of(shape)
    dims, st, off = [], [], 0
    for ax in rng.permutation(len(shape)):
        n = shape[ax]
        kind = rng.integers(4)
        if kind == 0 or n == 1:                     # the whole axis
            dims.append(n), st.append(base[ax])
        elif kind == 1:                             # a slice with a step
            step = int(rng.integers(1, 3))
            a = int(rng.integers(0, n))
            ln = len(range(a, n, step))
            off += a * base[ax]
            dims.append(ln), st.append(base[ax] * step)
        elif kind == 2:                             # one index
            off += int(rng.integers(0, n)) * base[ax]
        else:                                       # broadcast
            dims.append(int(rng.integers(1, 4))), st.append(0)
    return dims or [1], st or [0], off


def _shape(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 5))))


def test_read_through_reads_what_the_two_copies_read() -> None:
    """Random pairs of copies: the first writes R whole from a view of X, the second reads a view of R
    (through any reshape of R); where read_through composes them, it reads exactly those elements of X."""
    rng = np.random.default_rng(0)
    composed = 0
    for _ in range(4000):
        xshape = _shape(rng)
        X = np.arange(int(np.prod(xshape)), dtype=np.int64) * 7 + 3
        dims1, sx1, ox1 = _random_view(rng, X.size, xshape)
        R = _gather(X, dims1, sx1, ox1)
        dj, (sxj, syj) = collapse(dims1, sx1, strides_of(dims1))
        assert _whole(dj, syj, 0, R.size)
        # a reshape of R (any factorisation of its size), then a view of that
        n = R.size
        facs, rest = [], n
        for p in (2, 3, 5, 4):
            while rest % p == 0 and rng.random() < 0.6:
                facs.append(p)
                rest //= p
        rshape = tuple(facs + [rest]) if rest > 1 or not facs else tuple(facs)
        dims2, sx2, ox2 = _random_view(rng, n, rshape)
        want = _gather(R, dims2, sx2, ox2)
        sy2 = strides_of(dims2)
        got = read_through(dims2, sx2, sy2, ox2, dj, sxj, ox1)
        if got is None:
            continue
        composed += 1
        nd, nx, ny, nox = got
        out = np.zeros(int(np.prod(dims2)), dtype=np.int64)
        out[_gather(np.arange(out.size), nd, ny, 0)] = _gather(X, nd, nx, nox)
        np.testing.assert_array_equal(out, want)
    assert composed > 2000, composed     # most pairs compose (those that do not are kept as two copies)


def test_read_through_composes_the_exporters_chains() -> None:
    # q = select 0 of Transpose(packed QKV [197, 3*768] -> [3, 197, 768]); then its head transpose
    sel = read_through([197 * 768], [1], [1], 768 * 197, [3, 197, 768], [768, 2304, 1], 0)
    assert sel is not None and sel[0] == [197, 768] and sel[1] == [2304, 1] and sel[3] == 768
    heads = read_through([12, 197, 64], [64, 768, 1], strides_of([12, 197, 64]), 0, sel[0], sel[1], sel[3])
    assert heads is not None and heads[0] == [12, 197, 64] and heads[1] == [64, 2304, 1] and heads[3] == 768
    # the wrapped-around half of a roll along H (rows 11..13 of a [14, 14*96] image) into a Concat
    part = read_through([3 * 1344], [1], [1], 0, [3 * 1344], [1], 11 * 1344)
    assert part is not None and part[3] == 11 * 1344
    # a view that walks across a row boundary of R with a carry is not a strided view of X
    assert read_through([3], [5], [1], 0, [2, 7], [100, 1], 0) is None


pytestmark_emu = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile the kernels for the CPU")


def _mha_like(path: Path, S: int = 6, E: int = 8, H: int = 2) -> Path:
    """torchvision's MultiheadAttention input side and Swin's roll, as the TorchScript exporter writes
    them: x[S, 1, E] -> Transpose (a size-1 axis only) -> packed in-projection -> unflatten to
    [S, 1, 3, E] -> Unsqueeze -> Transpose(0, -2) -> Squeeze -> Gather 0 / 1 / 2 -> per-head
    Reshape + Transpose; and torch.roll of the packed projection along the sequence (Slice + Concat),
    then permuted (the roll's two halves are written straight into the permuted tensor)."""
    rng = np.random.default_rng(5)
    d = E // H
    i64 = lambda *v: np.asarray(v, dtype=np.int64)   # noqa: E731
    inits = [numpy_helper.from_array(rng.standard_normal((E, 3 * E)).astype(np.float32), "w"),
             numpy_helper.from_array(i64(S, 1, 3, E), "s_unflat"), numpy_helper.from_array(i64(0), "ax0"),
             numpy_helper.from_array(i64(3), "ax3"), numpy_helper.from_array(i64(S, H, d), "s_heads"),
             numpy_helper.from_array(np.asarray(0, np.int64), "i0"), numpy_helper.from_array(np.asarray(1, np.int64), "i1"),
             numpy_helper.from_array(np.asarray(-1, np.int64), "im1"),
             numpy_helper.from_array(i64(S - 2), "r_at"), numpy_helper.from_array(i64(S), "r_end"),
             numpy_helper.from_array(i64(0), "r_0"), numpy_helper.from_array(i64(S, 3, E), "s_rows")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),        # [1, S, E]: no data moves
             helper.make_node("Transpose", ["xt"], ["xs"], perm=[1, 0, 2]),       # back to [S, 1, E]
             helper.make_node("MatMul", ["xs", "w"], ["proj"]),                   # [S, 1, 3E]
             helper.make_node("Reshape", ["proj", "s_unflat"], ["unflat"]),
             helper.make_node("Unsqueeze", ["unflat", "ax0"], ["unsq"]),          # [1, S, 1, 3, E]
             helper.make_node("Transpose", ["unsq"], ["tr"], perm=[3, 1, 2, 0, 4]),  # [3, S, 1, 1, E]
             helper.make_node("Squeeze", ["tr", "ax3"], ["packed"])]              # [3, S, 1, E]
    outs = []
    for name, idx in (("q", "i0"), ("k", "i1"), ("v", "im1")):
        nodes += [helper.make_node("Gather", ["packed", idx], [f"{name}_sel"], axis=0),     # [S, 1, E]
                  helper.make_node("Reshape", [f"{name}_sel", "s_heads"], [f"{name}_r"]),
                  helper.make_node("Transpose", [f"{name}_r"], [name], perm=[1, 0, 2])]     # [H, S, d]
        outs.append(name)
    nodes += [helper.make_node("Slice", ["proj", "r_at", "r_end", "r_0"], ["tail"]),
              helper.make_node("Slice", ["proj", "r_0", "r_at", "r_0"], ["head"]),
              helper.make_node("Concat", ["tail", "head"], ["rolled"], axis=0),
              helper.make_node("Reshape", ["rolled", "s_rows"], ["rolled_r"]),                # [S, 3, E]
              helper.make_node("Transpose", ["rolled_r"], ["rolled_t"], perm=[1, 0, 2]),     # [3, S, E]
              helper.make_node("Relu", ["rolled_t"], ["rolled_relu"])]
    outs.append("rolled_relu")
    graph = helper.make_graph(nodes, "mha_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [S, 1, E])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytestmark_emu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_exporter_copy_chains_run_as_fewer_copies(tmp_path: Path, precision: str) -> None:
    path = _mha_like(tmp_path / "m.onnx")
    x = rand(6, 1, 8)
    ref = reference(path, {"x": x})
    with EmuLoadedPlan(build_plan(path, precision=precision)) as p:
        got = p.run({"x": x})
        copies = sum(n for k, n in p.launch_counts.items() if k.startswith("strided_copy"))
        gathers = sum(n for k, n in p.launch_counts.items() if k.startswith("gather"))
    for name, want in ref.items():
        assert_close(got[name], want, rel=1e-4 if precision == "fp32" else 1e-2)
    # unelided: 2 no-op transposes + packing transpose + 3 gathers + 3 head transposes + 2 slices + 2 concat
    # parts + 1 transpose = 14 copies/gathers; now one copy per head tensor and one per half of the roll
    assert gathers == 0, p.launch_counts
    assert copies == 5, p.launch_counts


def _gather_by_shape(path: Path, data: str) -> Path:
    """Gather(d, [0, 1, 2 + (S-3)(S-5)]) on axis 1 of d [2, S]: evenly spaced indices at S = 3 and 5 (the
    profile's min/opt and max, which the build checks), not at S = 4 (a shape the app may run)."""
    i64 = lambda *v: numpy_helper.from_array(np.asarray(v, dtype=np.int64))   # noqa: E731
    inits = []
    for name, v in (("one", (1,)), ("three", (3,)), ("five", (5,)), ("two", (2,)), ("zero_one", (0, 1))):
        t = i64(*v)
        t.name = name
        inits.append(t)
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "one"], ["S"], axis=0),
             helper.make_node("Sub", ["S", "three"], ["a"]), helper.make_node("Sub", ["S", "five"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Add", ["ab", "two"], ["third"]),
             helper.make_node("Concat", ["zero_one", "third"], ["idx"], axis=0)]
    if data == "bool":
        nodes += [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["d"], to=TensorProto.BOOL),
                  helper.make_node("Gather", ["d", "idx"], ["g"], axis=1),
                  helper.make_node("Cast", ["g"], ["y"], to=TensorProto.FLOAT)]
    else:
        nodes += [helper.make_node("Relu", ["x"], ["d"]), helper.make_node("Gather", ["d", "idx"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, "S"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytestmark_emu
@pytest.mark.parametrize("data", ["float", "bool"])
def test_a_gather_copy_at_the_checked_shapes_still_runs_where_it_is_not_one(tmp_path: Path, data: str) -> None:
    """The build checks min / opt / max; a shape in between may need the gather kernel instead of the
    copy (or the other way round): the plan carries both, for every element type it plans a copy for."""
    path = _gather_by_shape(tmp_path / "g.onnx", data)
    plan = build_plan(path, profiles={"x": {"min": [2, 3], "opt": [2, 3], "max": [2, 5]}})
    with EmuLoadedPlan(plan) as p:
        for S in (3, 4, 5):
            x = rand(2, S)
            assert_close(p.run({"x": x})["y"], reference(path, {"x": x})["y"], rel=1e-6)


@pytestmark_emu
def test_a_copy_writing_its_output_in_another_axis_order_is_no_alias(tmp_path: Path) -> None:
    """fp32 attention writes its transposed output by a copy that reads in order and writes permuted:
    a whole-buffer copy, but not an identity (the planner once aliased it). Read here by another node."""
    from attention_models import attn_model

    path = Path(attn_model(str(tmp_path / "a.onnx"), mask=False, guard=False))
    m = onnx.load(path)
    m.graph.output[0].name = "y_relu"
    m.graph.node.append(helper.make_node("Relu", ["y"], ["y_relu"]))
    onnx.save(m, path)
    rng = np.random.default_rng(2)
    feeds = {"q": rng.standard_normal((1, 2, 37, 24)).astype(np.float32),
             "k": rng.standard_normal((1, 2, 45, 24)).astype(np.float32),
             "v": rng.standard_normal((1, 2, 45, 40)).astype(np.float32)}
    with EmuLoadedPlan(build_plan(path, precision="fp32")) as p:
        got = p.run(feeds)["y_relu"]
    assert_close(got, reference(path, feeds)["y_relu"], rel=1e-4)
