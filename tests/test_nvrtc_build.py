"""nvrtc backend without a GPU (CI): import, placement, kernel generation, NVRTC for every target,
plan format, stripping, runtime-cache format, memory planning."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from rtxpack.demo import models as examples
from rtxpack.core.registry import create as get_backend
from rtxpack.backends.nvrtc import DEFAULT_CCS, NVRTC_BACKEND_VERSION, NvrtcBackend, is_nvrtc_plan
from rtxpack.backends.nvrtc import compile as nv_compile
from rtxpack.backends.nvrtc.cache import CacheKey, RuntimeCache
from rtxpack.backends.nvrtc.kernels import KernelSpec, program_source
from rtxpack.backends.nvrtc.lowering import kernels_for
from rtxpack.backends.nvrtc.onnx_import import import_onnx
from rtxpack.backends.nvrtc.plan import read_plan
from rtxpack.backends.nvrtc.schedule import plan_shapes
from rtxpack.backends.nvrtc.weights import device_weight_names
from rtxpack.core.digest import weights_digest
from rtxpack.core.errors import BackendError, UnsupportedModel

from nvrtc_helpers import local_cc, op_cases

pytestmark = pytest.mark.skipif(nv_compile.nvrtc_version() is None, reason="needs NVRTC (pip install rtxpack[gpu])")
CASES = op_cases()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "mlp": examples.mlp(d / "mlp.onnx"),
        "resnet_small": examples.resnet(d / "resnet_small.onnx", layers=(1, 1, 1, 1), width=8, size=32, classes=10),
        "inception": examples.inception_block(d / "inception.onnx"),
        "transformer": examples.transformer_block(d / "transformer.onnx"),
    }


def test_get_backend_and_info() -> None:
    b = get_backend("nvrtc")
    assert isinstance(b, NvrtcBackend)
    info = b.info()
    assert info.name == "nvrtc" and info.version == NVRTC_BACKEND_VERSION
    assert info.details["nvrtc"].count(".") == 1


@pytest.mark.parametrize("cid,build", CASES, ids=[c for c, _ in CASES])
def test_every_operator_imports_and_plans_to_reference_shapes(tmp_path: Path, cid, build) -> None:
    """Import + host evaluation + shape inference + launch planning, checked against onnx.reference shapes."""
    path, inputs = build(tmp_path)
    graph, weights = import_onnx(path)
    sp = plan_shapes(graph, {k: v.shape for k, v in inputs.items()}, weights, set(device_weight_names(graph)))
    from nvrtc_helpers import reference

    for name, ref in reference(path, inputs).items():
        assert sp.shapes[name] == ref.shape
    # the plan carries every kernel launched for its shapes (and kernels_for's alternatives)
    plan = NvrtcBackend().build(path, compute_capabilities=["8.6"], ptx=False)
    from rtxpack.backends.nvrtc.plan import read_plan

    index = read_plan(plan)[2]
    allowed = {KernelSpec(k["family"], tuple(k["targs"])) for k in index["kernels"]}
    assert {ln.spec for ln in sp.launches} <= allowed


def test_unsupported_nodes_are_all_listed_before_compiling(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("TopK", ["a", "k"], ["v", "i"], name="my_topk", axis=-1),
             helper.make_node("NonZero", ["a"], ["nz"], name="my_nonzero"),
             helper.make_node("Hardmax", ["a"], ["y"], name="my_hardmax")]
    g = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor("k", TensorProto.INT64, [1], [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "bad.onnx"))
    before = nv_compile.NVRTC_CALLS
    with pytest.raises(UnsupportedModel) as e:
        NvrtcBackend().build(tmp_path / "bad.onnx", compute_capabilities=["8.6"])
    msg = str(e.value)
    for part in ("TopK", "my_topk", "NonZero", "my_nonzero", "Hardmax", "my_hardmax", "3 unsupported"):
        assert part in msg
    assert len(e.value.unsupported) == 3
    assert nv_compile.NVRTC_CALLS == before, "nothing may be compiled for an unsupported model"


def test_fusions_fold_batchnorm_residual_and_relu(models) -> None:
    graph, _ = import_onnx(models["resnet_small"])
    ops = [n["op"] for n in graph["nodes"]]
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Add" not in ops
    convs = [n for n in graph["nodes"] if n["op"] == "Conv"]
    assert all("bn" in n["attrs"] for n in convs)
    assert sum(1 for n in convs if len(n["inputs"]) > 3 and n["inputs"][3]) == 4  # one residual add per block
    assert any(n["attrs"].get("relu") for n in convs)


def test_transformer_shape_chain_runs_on_host(models) -> None:
    graph, weights = import_onnx(models["transformer"])
    where = {n["op"]: n["where"] for n in graph["nodes"] if n["op"] in ("Shape", "Concat", "Gather", "Softmax",
                                                                        "Attention")}
    # the softmax runs on the device inside the fused attention node (onnx_import.fuse_attention)
    assert where == {"Shape": "host", "Concat": "host", "Gather": "host", "Attention": "device"}
    for batch in (1, 5):   # the dynamic batch flows through Shape -> Gather -> Concat -> Reshape
        sp = plan_shapes(graph, {"x": (batch, 16, 64)}, weights, set(device_weight_names(graph)))
        assert sp.shapes["y"] == (batch, 16, 64)


def test_memory_arena_never_overlaps_live_tensors(models) -> None:
    graph, weights = import_onnx(models["resnet_small"])
    sp = plan_shapes(graph, {"x": (2, 3, 32, 32)}, weights, set(device_weight_names(graph)))
    # rebuild lifetimes from the launches and check pairwise disjointness where they overlap in time
    spans: dict[str, list[int]] = {}
    for step, ln in enumerate(sp.launches):
        for a in ln.args:
            if isinstance(a, str) and a in sp.offsets:
                spans.setdefault(a, [step, step])[1] = step
    items = [(n, sp.offsets[n], int(np.prod(sp.shapes.get(n, (0,)))) * 4, *spans[n]) for n in spans if n in sp.shapes]
    for i, (n1, o1, s1, b1, e1) in enumerate(items):
        for n2, o2, s2, b2, e2 in items[i + 1:]:
            if b1 <= e2 and b2 <= e1:
                assert o1 + s1 <= o2 or o2 + s2 <= o1, (n1, n2)
    total = sum(int(np.prod(sp.shapes[n])) * 4 for n in sp.offsets if n in sp.shapes)
    assert sp.arena_bytes < total, "the arena must reuse memory across layers"


def test_nvrtc_compiles_every_kernel_for_every_ci_target(tmp_path: Path, models) -> None:
    """All specializations any test model or operator needs, one program per arch, no GPU."""
    specs: set[KernelSpec] = set()
    paths = list(models.values()) + [b(tmp_path)[0] for _, b in CASES]
    for p in paths:
        graph, weights = import_onnx(p)
        ws = {k: v.shape for k, v in weights.items()}
        specs |= {s for nd in graph["nodes"] if nd["where"] == "device" for s in kernels_for(nd, ws)}
    source = program_source(sorted(specs, key=lambda s: s.key()))
    sms = [nv_compile.cc_to_sm(c) for c in DEFAULT_CCS]
    cubins, ptx = nv_compile.compile_targets(source, sms, max(sms))
    assert sorted(cubins) == sms
    for c in cubins.values():
        assert c[:4] == b"\x7fELF"
    assert b".target sm_120" in ptx
    assert len(specs) >= 20


def test_plan_roundtrip_header_and_inspect(models) -> None:
    b = NvrtcBackend()
    plan = b.build(models["resnet_small"], compute_capabilities=list(DEFAULT_CCS),
                   profiles={"x": {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}})
    assert is_nvrtc_plan(plan) and not is_nvrtc_plan(b"vtrt" + plan[4:])
    info = b.inspect(plan[:512])   # the header alone is enough
    assert info.backend == "nvrtc" and info.backend_version == NVRTC_BACKEND_VERSION
    assert info.compute_capabilities == ("7.5", "8.6", "8.9", "9.0", "12.0") and info.ptx and not info.stripped
    assert info.weights_digest == weights_digest(models["resnet_small"])
    assert info.details["nvrtc_version"] == "%d.%d" % nv_compile.nvrtc_version()
    assert info.details["kernels"] >= 5 and info.details["model"] == "resnet"
    h, graph, index, blobs, w = read_plan(plan)
    assert sorted(index["cubins"]) == ["sm_120", "sm_75", "sm_86", "sm_89", "sm_90"]
    assert index["ptx"]["arch"] == "compute_120"
    assert graph["profiles"]["x"]["max"] == [16, 3, 32, 32]
    assert len(w["DWGT"]) > 0 and h.sections["DWGT"][0] % 256 == 0


def test_corrupt_and_foreign_plans_are_rejected(models) -> None:
    plan = bytearray(NvrtcBackend().build(models["mlp"], compute_capabilities=["8.6"]))
    with pytest.raises(BackendError, match="not a valid nvrtc plan"):
        read_plan(bytes(plan[:300]))
    with pytest.raises(BackendError, match="truncated"):
        read_plan(bytes(plan[: len(plan) - 10]))
    graph_off = struct.unpack_from("<Q", plan, 180 + 4)[0]
    plan[graph_off + 5] ^= 0x01
    with pytest.raises(BackendError, match="sha256"):
        read_plan(bytes(plan))
    newer = bytearray(plan)
    struct.pack_into("<I", newer, 8, 99)
    with pytest.raises(BackendError, match="format 99"):
        NvrtcBackend().inspect(bytes(newer))


def test_stripped_plan_records_every_weight(models) -> None:
    import onnx

    from rtxpack.core.digest import initializers, sha256_bytes

    b = NvrtcBackend()
    full = b.build(models["resnet_small"], compute_capabilities=["8.6"])
    stripped = b.build(models["resnet_small"], compute_capabilities=["8.6"], strip_weights=True)
    assert len(stripped) < len(full) - 400_000
    info = b.inspect(stripped)
    assert info.stripped and info.weights_digest == weights_digest(models["resnet_small"])
    _, graph, _, _, w = read_plan(stripped)
    assert "DWGT" not in w and len(w["WGHT"]) == 0
    inits = initializers(onnx.load(str(models["resnet_small"])))
    recs = {r["name"]: r for r in graph["weights"]}
    assert set(recs) == set(inits)
    for name, arr in inits.items():
        assert recs[name]["dtype"] == "float32" and recs[name]["shape"] == list(arr.shape)
        assert recs[name]["sha256"] == sha256_bytes(arr.tobytes()) and not recs[name]["stored"]


def test_dynamic_batch_and_profiles(models) -> None:
    b = NvrtcBackend()
    with pytest.raises(UnsupportedModel, match="input 'nope'"):
        b.build(models["mlp"], compute_capabilities=["8.6"], profiles={"nope": {"min": [1], "opt": [1], "max": [1]}})
    with pytest.raises(UnsupportedModel, match="rank"):
        b.build(models["mlp"], compute_capabilities=["8.6"], profiles={"x": {"min": [1], "opt": [1], "max": [1]}})
    with pytest.raises(UnsupportedModel, match="fp32 and fp16"):
        b.build(models["mlp"], compute_capabilities=["8.6"], precision="int8")
    graph, _ = import_onnx(models["mlp"])
    assert graph["inputs"][0]["shape"] == ["N", 64]


def test_runtime_cache_format() -> None:
    key = CacheKey("m" * 64, "sm_90", "nvrtc", "13.0", 13000)
    c = RuntimeCache()
    c.put(key, b"\x7fELF-cubin")
    blob = c.serialize()
    back = RuntimeCache.parse(blob)
    assert back.get(key) == b"\x7fELF-cubin" and not back.status.startswith("ignored")
    assert back.get(CacheKey("m" * 64, "sm_89", "nvrtc", "13.0", 13000)) is None
    assert back.get(CacheKey("m" * 64, "sm_90", "nvrtc", "13.0", 13010)) is None
    for bad in (b"", b"junk" * 20, blob[:-1], blob[:40], b"X" + blob[1:],
                blob[:30] + bytes([blob[30] ^ 1]) + blob[31:]):
        r = RuntimeCache.parse(bad)
        assert not r.entries
        assert r.status == "empty" if not bad else r.status.startswith("ignored")


@pytest.mark.skipif(local_cc() is not None, reason="checks the no-GPU behaviour")
def test_load_without_gpu_is_a_clear_error(models) -> None:
    plan = NvrtcBackend().build(models["mlp"], compute_capabilities=["8.6"])
    with pytest.raises(BackendError):
        NvrtcBackend().load(plan)


def test_model_inputs_are_never_overwritten(tmp_path: Path) -> None:
    """Every input's arena slot lives for the whole run: no other tensor shares its bytes, so a run
    can be replayed (CUDA graph, benchmark) without copying the inputs again."""
    path = examples.transformer_block(tmp_path / "t.onnx")
    graph, weights = import_onnx(path)
    sp = plan_shapes(graph, {"x": (2, 16, 64)}, weights, set(device_weight_names(graph)))
    lo = sp.offsets["x"]
    hi = lo + 2 * 16 * 64 * 4
    for name, off in sp.offsets.items():
        if name != "x":
            size = int(np.prod(sp.shapes[name])) * 4 if name in sp.shapes else 256
            assert off >= hi or off + size <= lo, f"{name} shares the input's bytes"
