"""The nvrtc backend: portable plans for any NVIDIA GPU, built and run with nothing but cuda-python.

It follows TensorRT-RTX's model: compile ahead of time without a GPU (NVRTC -> a cubin per
requested SM + PTX for newer GPUs), specialize on the device (use the cubin, else JIT the PTX
through the driver, else NVRTC for the exact arch), and keep JIT results in a runtime cache.

    plan = NvrtcBackend().build("model.onnx", compute_capabilities=["8.6", "9.0"], strip_weights=True)
    with NvrtcBackend().load(plan, runtime_cache=blob) as p:
        p.refit("model.onnx"); y = p.run({"x": x}); blob = p.runtime_cache()
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...core.errors import UnsupportedModel
from ...core.digest import weights_digest_from_arrays
from ...core.registry import NVRTC_FORMAT
from ..base import BackendInfo, PlanInfo
from .compile import cc_to_sm, compile_targets, nvrtc_version, sm_to_cc
from .kernels import COMPILE_OPTIONS, entry_name, kernel_digest, module_digest, program_source
from .lowering import kernels_for
from .onnx_import import import_onnx, unsupported_model
from .runtime import NvrtcLoadedPlan, driver_version
from .schedule import concrete_input_shapes, plan_shapes
from .weights import device_tensors, device_weight_names, host_weight_names
from .plan import FLAG_FP16, FLAG_PTX, FLAG_STRIPPED, FORMAT_VERSION, is_nvrtc_plan, read_header, write_plan

NVRTC_BACKEND_VERSION = NVRTC_FORMAT   # one number: core/registry.py says what it means
#: targets built when the caller names none (CI builds these)
DEFAULT_CCS: tuple[str, ...] = ("7.5", "8.6", "8.9", "9.0", "12.0")
WEIGHT_ALIGN = 256


def use_tensor_cores(graph: dict[str, Any], weights: Mapping[str, np.ndarray]) -> None:
    """fp16 plans: mark the layers that run on tensor cores (``tc``) and their operands stored as fp16
    (``tc_half``, input indices): every Conv that is an implicit GEMM (at least 8 output channels per
    group, weights from the model) and every Gemm / MatMul, its weight operands in fp16 (``tc_bt``: B's
    copy transposed to [N, K]), and every fused Attention (flash attention on tensor cores)."""
    for nd in graph["nodes"]:
        if nd["where"] == "device" and nd["op"] == "Attention":
            nd["attrs"]["tc"] = 1
        if nd["where"] != "device" or nd["op"] not in ("Conv", "Gemm", "MatMul"):
            continue
        ins, a = nd["inputs"], nd["attrs"]
        if nd["op"] == "Conv":
            w = weights.get(ins[1]) if len(ins) > 1 else None
            if w is None or w.ndim < 3 or w.shape[0] // a.get("group", 1) < 8:
                continue
            a["tc"], a["tc_half"] = 1, [1]
        else:
            a["tc"] = 1
            a["tc_half"] = [i for i in (0, 1) if i < len(ins) and ins[i] in weights
                            and np.issubdtype(weights[ins[i]].dtype, np.floating)]
            # a 2-D weight B laid out [K, N] gets its fp16 copy as [N, K]: k-contiguous rows load 8 at a time
            if 1 in a["tc_half"] and weights[ins[1]].ndim == 2 and not (nd["op"] == "Gemm" and a.get("transB", 0)):
                a["tc_bt"] = 1


def _is_stripped_dtype(arr: np.ndarray) -> bool:
    """Floating-point initializers are weights: a stripped plan omits them and a full plan carries
    them in device layout (DWGT); integer initializers are shape data, kept in WGHT."""
    return np.issubdtype(arr.dtype, np.floating)


class NvrtcBackend:
    """Backend ``nvrtc`` (see module doc); implements ``rtxpack.backends.base.Backend``."""

    name = "nvrtc"

    # ------------------------------------------------------------------ info
    def info(self) -> BackendInfo:
        """Installed NVRTC / driver versions; never raises (version None without cuda-python)."""

        v = nvrtc_version()
        details: dict[str, Any] = {"nvrtc": f"{v[0]}.{v[1]}" if v else None, "format_version": FORMAT_VERSION}
        try:

            details["driver"] = driver_version()
        except Exception:  # noqa: BLE001 - no driver / no GPU is a normal state here
            details["driver"] = None
        try:
            import cuda.bindings

            details["cuda_bindings"] = getattr(cuda.bindings, "__version__", None)
        except ImportError:
            pass
        return BackendInfo(self.name, NVRTC_BACKEND_VERSION if v else None, details)

    # ------------------------------------------------------------------ build (AOT, no GPU)
    def build(self, onnx_path: str | Path, *, compute_capabilities: Sequence[str] | None = None,
              precision: str = "fp32", strip_weights: bool = False,
              profiles: Mapping[str, Mapping[str, Sequence[int]]] | None = None, ptx: bool = True) -> bytes:
        """Import, validate (plan every shape once on the CPU), compile all kernels for every SM, pack."""

        if precision not in ("fp32", "fp16"):
            raise UnsupportedModel(f"the nvrtc backend builds fp32 and fp16 plans, not {precision!r}",
                                   fix='use precision="fp32" or "fp16" (or the tensorrt-rtx backend for bf16/fp8/int8)')
        ccs = list(compute_capabilities or DEFAULT_CCS)
        sms = sorted({cc_to_sm(c) for c in ccs})
        if precision == "fp16" and sms[0] < 75:
            raise UnsupportedModel(f"fp16 plans run on tensor cores, which compute capability {sm_to_cc(sms[0])} does "
                                   "not have (7.5 and newer do)", fix="build fp32 plans for GPUs older than Turing")
        graph, weights = import_onnx(onnx_path, keep_unsupported=True)
        graph["precision"] = precision
        if precision == "fp16":
            use_tensor_cores(graph, weights)
        profiles = {k: {kk: [int(x) for x in vv] for kk, vv in v.items()} for k, v in (profiles or {}).items()}
        names = {i["name"]: i for i in graph["inputs"]}
        for k, p in profiles.items():
            if k not in names:
                raise UnsupportedModel(f"profile names input {k!r}, which the model does not have",
                                       fix=f"name one of: {', '.join(names)}")
            if not all(len(p.get(f, ())) == len(names[k]["shape"]) for f in ("min", "opt", "max")):
                raise UnsupportedModel(f"profile for {k!r} needs min/opt/max of rank {len(names[k]['shape'])}",
                                       fix="give min, opt and max shapes with one value per dimension")
            for d, (lo, mid, hi, dim) in enumerate(zip(p["min"], p["opt"], p["max"], names[k]["shape"])):
                if not 1 <= lo <= mid <= hi:
                    raise UnsupportedModel(f"profile for {k!r}, dimension {d}: min {lo}, opt {mid}, max {hi}",
                                           fix="give 1 <= min <= opt <= max in every dimension")
                if isinstance(dim, int) and dim > 0 and not lo == hi == dim:
                    raise UnsupportedModel(f"profile for {k!r}, dimension {d}: the model fixes it at {dim}, the "
                                           f"profile says {lo}..{hi}", fix=f"use {dim} there, or export that "
                                           "dimension as dynamic")
        graph["profiles"] = profiles
        # validate the whole model on the CPU (shapes, broadcasts, launches) before compiling anything
        resident = set(device_weight_names(graph))
        opt = {k: v["opt"] for k, v in profiles.items()}
        checks = [concrete_input_shapes(graph, opt)]
        checks += [concrete_input_shapes(graph, {k: v[f] for k, v in profiles.items()}) for f in ("min", "max")
                   if profiles]
        # every node nothing can run, the importer's and the planner's, in one error before any compile
        problems = {f"#{k}": p for k, p in enumerate(graph.pop("problems", []))}
        validated = [plan_shapes(graph, shapes, weights, resident, problems=problems) for shapes in checks]
        if problems:
            raise unsupported_model(onnx_path, list(problems.values()))
        # every kernel the validated shapes launch, plus the alternatives a GPU of another size picks
        # (tile shapes, split-K); tensors computed on the host (e.g. weight-normed conv weights) have
        # their planned shapes
        wshapes = {k: v for sp in validated for k, v in sp.shapes.items()}
        wshapes.update({k: v.shape for k, v in weights.items()})
        specs = sorted({s for nd in graph["nodes"] if nd["where"] == "device" for s in kernels_for(nd, wshapes)}
                       | {ln.spec for sp in validated for ln in sp.launches}, key=lambda s: s.key())
        source = program_source(specs)
        cubins, ptx_blob = compile_targets(source, sms, max(sms) if ptx else None)
        blobs = bytearray()

        def add(blob: bytes) -> dict[str, Any]:
            import hashlib

            rec = {"offset": len(blobs), "length": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
            blobs.extend(blob)
            return rec

        index = {
            "options": list(COMPILE_OPTIONS),
            "module": module_digest(specs),
            "kernels": [{"family": s.family, "targs": list(s.targs), "entry": entry_name(s),
                         "digest": kernel_digest(s)} for s in specs],
            "source": add(source.encode()),
            "cubins": {f"sm_{sm}": add(c) for sm, c in cubins.items()},
            "ptx": ({"arch": f"compute_{max(sms)}", **add(ptx_blob)} if ptx_blob else None),
        }

        host_needed = host_weight_names(graph)
        dblob = None
        if not strip_weights:
            graph["device_tensors"], dblob = device_tensors(graph, weights)
        wblob = bytearray()
        for rec in graph["weights"]:
            arr = weights[rec["name"]]
            rec["stored"] = not _is_stripped_dtype(arr) or (not strip_weights and rec["name"] in host_needed)
            if rec["stored"]:
                wblob.extend(b"\0" * ((-len(wblob)) % WEIGHT_ALIGN))
                rec["offset"] = len(wblob)
                wblob.extend(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
        wdigest = weights_digest_from_arrays(weights)
        graph["weights_digest"] = wdigest
        graph["stripped"] = bool(strip_weights)
        v = nvrtc_version() or (0, 0)
        flags = (FLAG_STRIPPED if strip_weights else 0) | (FLAG_PTX if ptx_blob else 0) | \
            (FLAG_FP16 if precision == "fp16" else 0)
        return write_plan(backend_version=NVRTC_BACKEND_VERSION, flags=flags, nvrtc_version=v,
                          n_kernels=len(specs), sms=sms, weights_digest=wdigest, model_name=graph["name"],
                          graph=graph, kernel_index=index, kernel_blobs=bytes(blobs), weights_blob=bytes(wblob),
                          device_blob=dblob)

    # ------------------------------------------------------------------ inspect (header only)
    def inspect(self, plan: bytes) -> PlanInfo:

        h = read_header(plan)
        return PlanInfo(
            backend=self.name, backend_version=h.backend_version,
            compute_capabilities=tuple(sm_to_cc(s) for s in h.sms), ptx=h.ptx, stripped=h.stripped,
            weights_digest=h.weights_digest or None,
            details={"format_version": h.format_version, "nvrtc_version": "%d.%d" % h.nvrtc_version,
                     "precision": h.precision,
                     "kernels": h.n_kernels, "model": h.model_name,
                     "sections": {k: v[1] for k, v in h.sections.items()}})

    # ------------------------------------------------------------------ load (GPU)
    def load(self, plan: bytes, *, device: int = 0, runtime_cache: bytes | None = None,
             options: Mapping[str, Any] | None = None):
        """Deserialize on the local GPU (cubin > runtime cache > PTX JIT > NVRTC JIT)."""

        return NvrtcLoadedPlan(plan, device=device, runtime_cache=runtime_cache, options=options or {})


__all__ = ["DEFAULT_CCS", "NVRTC_BACKEND_VERSION", "NvrtcBackend", "is_nvrtc_plan"]
