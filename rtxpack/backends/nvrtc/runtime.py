"""Run an nvrtc plan on the local GPU through the CUDA driver API (cuda.bindings.driver).

Kernel module, best first: the plan's cubin for this SM (or a same-major lower-minor one) >
the runtime cache > driver JIT of the plan's PTX (only when the NVRTC that made it is not newer
than the driver) > NVRTC on this machine for the exact arch. ``kernel_sources`` and
``provenance`` say which one ran and why.

Per distinct input shape: one arena allocation (liveness-planned), prepacked launch arguments
and, by default, a CUDA graph of the whole run, so a steady-state ``run`` is a few driver calls.
"""
from __future__ import annotations

import ctypes
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...core.errors import BackendError, BackendNotInstalled, RefitError
from ...core.cuda import check, driver as _driver, init as cuda_init
from .cache import CacheKey, RuntimeCache
from ...core.digest import initializers, sha256_bytes, weights_digest_from_arrays
from .compile import compile_program, nvrtc_version, nvrtc_version_probe
from .dtypes import ITEMSIZE
from .onnx_import import load_model
from .kernels import KernelSpec, param_types
from .kernels_tc import SMEM_LIMIT, WG_FAMILIES
from .plan import read_plan
from .schedule import ALIGN, ShapePlan, Tunable, check_profile, device_bytes, plan_shapes
from .tuning import TuningTable, cache_key as tuning_key, shape_key, tune, tune_budget
from .weights import device_tensors

MAX_SHAPES = 8
#: struct format and alignment of each kernel-argument kind (see kernels.param_types)
_ARG_FORMATS = {"p": ("<Q", 8), "q": ("<q", 8), "Q": ("<Q", 8), "i": ("<i", 4), "f": ("<f", 4), "I6": ("<6i", 4),
                "F6": ("<6f", 4)}


def driver_version() -> int:
    """cuDriverGetVersion() (e.g. 13000); raises without a driver."""
    cu = _driver()
    cuda_init()
    return int(check(cu.cuDriverGetVersion(), "cuDriverGetVersion"))


class _ShapeState:
    """Everything needed to run one input-shape combination: arena, packed launches, CUDA graph."""

    def __init__(self, plan: ShapePlan, arena: int, launches: list[tuple[Any, tuple, int, Any, list]]) -> None:
        self.plan, self.arena, self.launches = plan, arena, launches
        self.graph = None
        self.graph_exec = None
        self.runs = 0


def uploaded(cu: Any) -> None:
    """After ``cuMemcpyHtoD`` from pageable memory: that call may return before its DMA lands, on the
    legacy stream, which the plan's non-blocking stream does not wait for; the context sync does."""
    check(cu.cuCtxSynchronize(), "cuCtxSynchronize")


class NvrtcLoadedPlan:
    """A plan loaded on one GPU (implements ``rtxpack.backends.base.LoadedPlan``)."""

    def __init__(self, plan: bytes, *, device: int = 0, runtime_cache: bytes | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        import time

        cu = _driver()
        t0 = time.perf_counter()
        self._opts = dict(options or {})
        self._closed = True
        # GRPH/KERN are always sha256-checked; the (large) weight sections on request: the store
        # verifies the whole artifact's sha256 when it fetches it
        self.header, self.graph, self._index, kblobs, wsecs = read_plan(
            plan, verify_weights=bool(self._opts.get("verify_weights", False)))
        self.input_names = [i["name"] for i in self.graph["inputs"]]
        self.output_names = list(self.graph["outputs"])
        self.stripped = bool(self.graph.get("stripped"))
        self.kernel_sources = {"cubin": 0, "runtime-cache": 0, "ptx-jit": 0, "nvrtc-jit": 0}
        cuda_init()
        self._dev = check(cu.cuDeviceGet(device), f"cuDeviceGet({device})")
        self._ctx = check(cu.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain")
        self._closed = False
        check(cu.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
        A = cu.CUdevice_attribute
        major = check(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self._dev), "cc")
        minor = check(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self._dev), "cc")
        self.num_sms = int(check(cu.cuDeviceGetAttribute(A.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, self._dev), "sms"))
        self.sm = int(major) * 10 + int(minor)
        self.driver_version = int(check(cu.cuDriverGetVersion(), "cuDriverGetVersion"))
        self._cache = RuntimeCache.parse(runtime_cache)
        if runtime_cache and not self._cache.status.startswith("ignored"):
            self._cache.status = f"loaded {len(self._cache.entries)} entries"
        self.cache_status = self._cache.status
        name = check(cu.cuDeviceGetName(256, self._dev), "cuDeviceGetName")
        self.gpu_name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
        self._init_tuning(f"{self.gpu_name} ({self.num_sms} SMs)")
        self._stream = check(cu.cuStreamCreate(cu.CUstream_flags.CU_STREAM_NON_BLOCKING), "cuStreamCreate")
        t1 = time.perf_counter()
        #: Hopper's wgmma kernels (gemm_wg) run: an sm_90 GPU and kernels compiled for sm_90a (the plan's
        #: cubin or NVRTC here; not a driver JIT of portable PTX, where they trap). Set by _select_module.
        self.wgmma_ok = False
        cubin = self._select_module(bytes(kblobs))
        self._cubin_keep = np.frombuffer(cubin, dtype=np.uint8).copy()
        self._module = check(cu.cuModuleLoadData(self._cubin_keep.ctypes.data), "cuModuleLoadData")
        self._funcs: dict[KernelSpec, Any] = {}
        for k in self._index["kernels"]:
            spec = KernelSpec(k["family"], tuple(k["targs"]))
            if not self._runnable(spec):
                continue                  # never planned here (and its shared memory may exceed this GPU's)
            fn = self._funcs[spec] = check(cu.cuModuleGetFunction(self._module, k["entry"].encode()),
                                           "cuModuleGetFunction")
            if spec.smem_bytes > SMEM_LIMIT:
                check(cu.cuFuncSetAttribute(fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                            spec.smem_bytes), f"cuFuncSetAttribute({spec.key()} shared memory)")
        t2 = time.perf_counter()
        self._host_w: dict[str, np.ndarray] = self._weights_from_plan(wsecs["WGHT"])
        self.weights_digest = self.graph.get("weights_digest")
        self._weights_ready = not self.stripped
        self._wbuf = None
        self._waddr: dict[str, int] = {}
        self._states: OrderedDict[tuple, _ShapeState] = OrderedDict()
        if self._weights_ready:
            self._upload_device_tensors(self.graph["device_tensors"], wsecs["DWGT"])
        t3 = time.perf_counter()
        #: seconds spent in load(): reading/checking the plan + context, getting kernels, weights
        self.load_timings = {"read_and_context": t1 - t0, "kernels": t2 - t1, "weights": t3 - t2}
        self.last_shape_plan_s = 0.0

    # ---------------------------------------------------------------- kernels
    def _runnable(self, spec: KernelSpec) -> bool:
        """Whether this GPU may run ``spec``: Hopper's wgmma kernels only where ``wgmma_ok``. The kernels
        left out are left out of planning (``plan_shapes(kernels=...)`` sees only the runnable ones)."""
        return spec.family not in WG_FAMILIES or self.wgmma_ok

    def _select_module(self, blobs: bytes) -> bytes:
        idx = self._index
        module = idx["module"]
        cubins = idx.get("cubins", {})
        exact = f"sm_{self.sm}"
        same_major = sorted((int(k[3:]) for k in cubins if int(k[3:]) // 10 == self.sm // 10 and int(k[3:]) <= self.sm),
                            reverse=True)
        n = len(idx["kernels"])
        if exact in cubins or same_major:
            name = exact if exact in cubins else f"sm_{same_major[0]}"
            self.wgmma_ok = name == "sm_90"        # compile.compile_program builds sm_90 cubins for sm_90a
            self.kernel_sources["cubin"] = n
            self.provenance = f"AOT cubin {name} from the plan" + ("" if name == exact else f" (compatible with sm_{self.sm})")
            return self._blob(blobs, cubins[name])
        plan_nvrtc = "%d.%d" % self.header.nvrtc_version
        drv = (self.driver_version // 1000, (self.driver_version % 1000) // 10)
        ptx = idx.get("ptx")
        ptx_ok = bool(ptx) and int(ptx["arch"].split("_")[1]) <= self.sm and tuple(self.header.nvrtc_version) <= drv
        local = None
        try:

            local = nvrtc_version_probe()   # no NVRTC library load: a warm cache stays NVRTC-free
        except Exception:  # noqa: BLE001
            local = None
        keys = []
        if ptx_ok:
            keys.append(CacheKey(module, exact, "ptx-jit", plan_nvrtc, self.driver_version))
        # what NVRTC compiles here for sm_90 is sm_90a code (compile_program): its cache entries say so
        native = exact + ("a" if self.sm == 90 else "")
        if local:
            keys.append(CacheKey(module, native, "nvrtc", "%d.%d" % local, self.driver_version))
        for key in keys:
            hit = self._cache.get(key)
            if hit is not None:
                self.wgmma_ok = key.arch == "sm_90a"
                self.kernel_sources["runtime-cache"] = n
                self.provenance = f"runtime cache ({key.compiler} {key.compiler_version}, {exact}, driver {key.driver})"
                return hit
        if self._cache.entries and not self._cache.status.startswith("ignored"):
            self.cache_status = f"loaded {len(self._cache.entries)} entries, none for this plan/{exact}/driver {self.driver_version}"
        why = "no cubin for %s in the plan (it has %s)" % (exact, ", ".join(sorted(cubins)) or "none")
        if ptx_ok:
            cubin = self._ptx_jit(self._blob(blobs, ptx))
            self._cache.put(keys[0], cubin)
            self.kernel_sources["ptx-jit"] = n
            self.provenance = f"{why}; driver JIT of the plan's {ptx['arch']} PTX"
            return cubin
        if ptx and tuple(self.header.nvrtc_version) > drv:
            why += f"; its PTX was made by NVRTC {plan_nvrtc}, newer than this driver (CUDA {drv[0]}.{drv[1]}), so it was not attempted"
        elif ptx:
            why += f"; its PTX targets {ptx['arch']}, newer than sm_{self.sm}"
        if not local:
            raise BackendNotInstalled(f"{why}, and NVRTC is not installed to compile for {exact}",
                                      fix="pip install nvidia-cuda-nvrtc (or use a plan built for this GPU)")

        cubin = compile_program(self._blob(blobs, idx["source"]).decode(), self.sm, options=idx["options"])
        local = nvrtc_version() or local   # the library that actually compiled (now loaded anyway)
        self._cache.put(CacheKey(module, native, "nvrtc", "%d.%d" % local, self.driver_version), cubin)
        self.wgmma_ok = self.sm == 90
        self.kernel_sources["nvrtc-jit"] = n
        self.provenance = f"{why}; NVRTC {local[0]}.{local[1]} compiled the plan's kernels for {exact}"
        return cubin

    @staticmethod
    def _blob(blobs: bytes, rec: Mapping[str, Any]) -> bytes:
        import hashlib

        b = blobs[rec["offset"]:rec["offset"] + rec["length"]]
        if hashlib.sha256(b).hexdigest() != rec["sha256"]:
            raise BackendError("a kernel blob in the plan fails its sha256 check", fix="rebuild or re-download the plan")
        return b

    def _ptx_jit(self, ptx: bytes) -> bytes:
        cu = _driver()
        if not ptx.endswith(b"\0"):
            ptx += b"\0"
        buf = np.frombuffer(ptx, dtype=np.uint8).copy()
        state = check(cu.cuLinkCreate(0, [], []), "cuLinkCreate")
        try:
            check(cu.cuLinkAddData(state, cu.CUjitInputType.CU_JIT_INPUT_PTX, buf.ctypes.data, len(ptx), b"plan.ptx",
                                    0, [], []), "cuLinkAddData (PTX JIT)")
            ptr, size = check(cu.cuLinkComplete(state), "cuLinkComplete")
            return ctypes.string_at(int(ptr), int(size))
        finally:
            cu.cuLinkDestroy(state)

    # ---------------------------------------------------------------- weights
    def _weights_from_plan(self, wview: memoryview) -> dict[str, np.ndarray]:
        out = {}
        for rec in self.graph["weights"]:
            if not rec.get("stored", True):
                continue
            dt = np.dtype(rec["dtype"]).newbyteorder("<")
            n = int(np.prod(rec["shape"])) * dt.itemsize
            out[rec["name"]] = np.frombuffer(wview[rec["offset"]:rec["offset"] + n], dtype=dt).reshape(rec["shape"])
        return out

    def _upload_device_tensors(self, recs: list[dict[str, Any]], blob: Any) -> None:
        """One allocation and one host-to-device copy for every weight the kernels read (a pinned,
        double-buffered upload measured slower on an H100: pinning costs more than it saves)."""
        cu = _driver()
        host = np.frombuffer(blob, dtype=np.uint8)
        total = max(int(host.size), ALIGN)
        if self._wbuf is not None:
            check(cu.cuMemFree(self._wbuf), "cuMemFree")
            self._wbuf = None
        self._wbuf = check(cu.cuMemAlloc(total), f"cuMemAlloc({total} bytes of weights)")
        if host.size:
            check(cu.cuMemcpyHtoD(self._wbuf, host.ctypes.data, host.size), "cuMemcpyHtoD(weights)")
            uploaded(cu)
        base = int(self._wbuf)
        self._waddr = {r["name"]: base + r["offset"] for r in recs}

    def refit(self, onnx_path: str | Path) -> None:
        """Complete a stripped plan (or replace a full plan's weights) from the app's ONNX.

        Every weight is checked (name, dtype, shape and, for stripped plans, sha256) before any
        byte is uploaded; the first mismatch raises RefitError naming the weight.
        """

        new = initializers(load_model(onnx_path))
        for rec in self.graph["weights"]:
            name = rec["name"]
            arr = new.get(name)
            fix = f"refit from the ONNX this plan was built from (weights digest {self.graph['weights_digest'][:16]}...)"
            if arr is None:
                raise RefitError(f"refit: weight {name!r} is missing from {Path(onnx_path).name}", fix=fix, weight=name)
            if arr.dtype.name != rec["dtype"] or list(arr.shape) != list(rec["shape"]):
                raise RefitError(f"refit: weight {name!r} is {arr.dtype}{list(arr.shape)} in {Path(onnx_path).name}, "
                                 f"the plan expects {rec['dtype']}{rec['shape']}", fix=fix, weight=name)
            sha = sha256_bytes(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
            if (self.stripped or not rec.get("stored", True)) and sha != rec["sha256"]:
                raise RefitError(f"refit: weight {name!r} differs from the one this plan was built from "
                                 f"(sha256 {sha[:16]}... != {rec['sha256'][:16]}...)", fix=fix, weight=name,
                                 expected_sha256=rec["sha256"], actual_sha256=sha)
        self._host_w = {rec["name"]: new[rec["name"]] for rec in self.graph["weights"]}
        self.weights_digest = weights_digest_from_arrays(self._host_w)
        self._drop_states()
        recs, blob = device_tensors(self.graph, self._host_w)
        self._upload_device_tensors(recs, blob)
        self._weights_ready = True

    # ---------------------------------------------------------------- per-shape state
    def _addr(self, st: ShapePlan, arena: int, name: str, extra: Mapping[str, int] | None = None) -> int:
        if not name:
            return 0
        r = st.root.get(name, name)
        at = getattr(name, "offset", 0) * ITEMSIZE[st.dtypes.get(r, "float32")]   # an At: from an element on
        if extra and name in extra:
            return extra[name] + at
        if r in self._waddr:
            return self._waddr[r] + at
        if r in st.offsets:
            return arena + st.offsets[r] + at
        raise BackendError(f"tensor {name!r} has no device memory", fix="report this model to rtxpack")

    def pack_args(self, sp: ShapePlan, arena: int, ln: Any, extra: Mapping[str, int] | None = None
                  ) -> tuple[bytes, list[int]]:
        """The argument bytes of one launch as ``cuLaunchKernel`` takes them (each argument at its
        natural alignment), and each argument's offset; tensor names become addresses here
        (``extra``: addresses of buffers outside the arena, a tuning candidate's scratch)."""
        buf, offs = bytearray(), []
        for kind, v in zip(param_types(ln.spec.family), ln.args):
            fmt, align = _ARG_FORMATS[kind]
            buf += b"\0" * ((-len(buf)) % align)
            offs.append(len(buf))
            if kind == "p":
                buf += struct.pack(fmt, self._addr(sp, arena, v, extra))
            elif kind in ("I6", "F6"):
                buf += struct.pack(fmt, *v)
            else:
                buf += struct.pack(fmt, v)
        return bytes(buf), offs

    def _state(self, shapes: Mapping[str, tuple]) -> _ShapeState:
        key = tuple(shapes[n] for n in self.input_names)
        st = self._states.get(key)
        if st is not None:
            self._states.move_to_end(key)
            return st
        import time

        t0 = time.perf_counter()
        sp = self._plan_for(shapes)
        arena = self._arena_for(sp)
        state = _ShapeState(sp, arena, [self._packed(sp, arena, ln) for ln in sp.launches])
        self._states[key] = state
        self.last_shape_plan_s = time.perf_counter() - t0
        while len(self._states) > MAX_SHAPES:
            self._free_state(self._states.popitem(last=False)[1])
        return state

    def _arena_for(self, sp: ShapePlan) -> int:
        """A device arena for ``sp`` with its uploads (constants, im2col tables) written."""
        cu = _driver()
        arena = int(check(cu.cuMemAlloc(max(sp.arena_bytes, ALIGN)), f"cuMemAlloc({sp.arena_bytes} bytes arena)"))
        for name, val in sp.uploads.items():
            b = np.frombuffer(device_bytes(val), dtype=np.uint8).copy()
            if b.size:
                check(cu.cuMemcpyHtoD(arena + sp.offsets[name], b.ctypes.data, b.size), "cuMemcpyHtoD(constants)")
        if sp.uploads:
            uploaded(cu)
        return arena

    # ---------------------------------------------------------------- tuning (GEMM and conv layers)
    def _init_tuning(self, gpu: str) -> None:
        self._tuning = TuningTable(tuning_key(self._index["module"], self.sm, gpu, self.driver_version), self._cache)
        #: what picked the kernels of tunable layers (also a provenance step of load())
        self.tuning: dict[str, Any] = {"step": "tuning", "gpu": gpu, "source": "no tunable layers yet", "seconds": 0.0}

    def _plan_for(self, shapes: Mapping[str, tuple]) -> ShapePlan:
        """plan_shapes with this GPU's choices for these shapes: from the runtime cache, else tuned now
        (bounded by ``tune_budget_s``; 0 = the heuristic's kernels), else the heuristic's."""
        skey = shape_key(shapes, self.input_names)
        known = self._tuning.shapes.get(skey)
        sp = plan_shapes(self.graph, shapes, self._host_w, set(self._waddr), self.num_sms, choices=known,
                         kernels=self._funcs.keys())
        if not sp.tunable:
            return sp
        missing = [t for t in sp.tunable if t.node["name"] not in (known or {})]
        budget = tune_budget(self._opts)
        if not missing or budget <= 0:
            self.tuning.update(source="runtime cache" if known is not None else
                               "heuristic (tuning off: tune_budget_s=0)", shapes=skey, seconds=0.0)
            if known is not None and missing:
                self.tuning["untuned_layers"] = len(missing)   # a budget-cut record, tuned further when allowed
            return sp
        choices, report = self._tune(sp, budget, known)
        if len(choices) > len(known or {}):   # a record only of what was measured: the rest is tuned next time
            self._tuning.shapes[skey] = choices
            self._tuning.store(self._cache)
        self.tuning.update(source=("tuned on this GPU" if report["timed"] else "heuristic (tuning budget spent)")
                           + (" + runtime cache" if known else ""), shapes=skey, **report)
        return plan_shapes(self.graph, shapes, self._host_w, set(self._waddr), self.num_sms, choices=choices,
                           kernels=self._funcs.keys())

    def _tune(self, sp: ShapePlan, budget_s: float, known: Mapping[str, str] | None = None
              ) -> tuple[dict[str, str], dict[str, Any]]:
        """Time each candidate in the arena of ``sp`` as the plan runs it: in a CUDA graph (``_graph_ms``)."""
        cu = _driver()
        arena = self._arena_for(sp)
        start, end = check(cu.cuEventCreate(0), "cuEventCreate"), check(cu.cuEventCreate(0), "cuEventCreate")

        def timer(layer: Tunable, label: str, launches: list[Any], extra: dict[str, Any]) -> float:
            sizes = {k: (len(device_bytes(v)) if isinstance(v, np.ndarray) else int(v)) for k, v in extra.items()}
            offs, pos = {}, 0
            for k, n in sizes.items():
                offs[k], pos = pos, pos + -(-max(n, 1) // ALIGN) * ALIGN
            tmp = int(check(cu.cuMemAlloc(max(pos, ALIGN)), "cuMemAlloc(tuning scratch)")) if extra else 0
            try:
                tables = {k: v for k, v in extra.items() if isinstance(v, np.ndarray)}
                for k, v in tables.items():
                    b = np.frombuffer(device_bytes(v), dtype=np.uint8).copy()
                    check(cu.cuMemcpyHtoD(tmp + offs[k], b.ctypes.data, b.size), "cuMemcpyHtoD(tuning table)")
                if tables:
                    uploaded(cu)
                over = {k: tmp + o for k, o in offs.items()}
                packed = [self._packed(sp, arena, ln, over) for ln in launches]
                return self._graph_ms(packed, start, end)
            finally:
                if tmp:
                    cu.cuMemFree(tmp)

        try:
            return tune(sp, self.num_sms, timer, budget_s, known)
        finally:
            cu.cuEventDestroy(start)
            cu.cuEventDestroy(end)
            cu.cuMemFree(arena)

    def _packed(self, sp: ShapePlan, arena: int, ln: Any, extra: Mapping[str, int] | None = None
                ) -> tuple[Any, tuple, int, Any, Any]:
        """(function, grid, block, argument pointers, argument bytes kept alive, dynamic shared memory) of one
        launch."""
        fn = self._funcs.get(ln.spec)
        if fn is None:
            raise BackendError(f"the plan has no kernel {ln.spec.key()}", fix="rebuild the plan with this rtxpack")
        buf, offs = self.pack_args(sp, arena, ln, extra)
        blob = np.frombuffer(buf + b"\0" * 8, dtype=np.uint8).copy()
        return (fn, ln.grid, ln.block, np.array([blob.ctypes.data + o for o in offs], dtype=np.uint64), blob,
                ln.spec.smem_bytes)

    def _launch(self, packed: Any) -> None:
        fn, grid, block, ptrs, _, smem = packed
        check(_driver().cuLaunchKernel(fn, grid[0], grid[1], grid[2], block, 1, 1, smem, self._stream,
                                       ptrs.ctypes.data, 0), "cuLaunchKernel")

    #: runs of a tuning candidate per CUDA graph, and graph launches timed (the median is kept)
    TUNE_REPS, TUNE_RUNS = 5, 3

    def _graph_ms(self, packed: list[Any], start: Any, end: Any) -> float:
        """Milliseconds of one run of these launches, replayed from a CUDA graph of TUNE_REPS runs (median
        of TUNE_RUNS replays after a warm-up): what they cost in the plan's own graph. Launched one by one
        from the host instead, kernels of a few microseconds measure the host's launch rate and its jitter,
        and a candidate with a split-K reduce pays a host launch the graph does not."""
        cu = _driver()
        graph = self._captured(packed * self.TUNE_REPS)
        try:
            exe = check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
            try:
                times = []
                for _ in range(self.TUNE_RUNS + 1):
                    check(cu.cuEventRecord(start, self._stream), "cuEventRecord")
                    check(cu.cuGraphLaunch(exe, self._stream), "cuGraphLaunch")
                    check(cu.cuEventRecord(end, self._stream), "cuEventRecord")
                    check(cu.cuEventSynchronize(end), "cuEventSynchronize")
                    times.append(float(check(cu.cuEventElapsedTime(start, end), "cuEventElapsedTime")))
                return sorted(times[1:])[self.TUNE_RUNS // 2] / self.TUNE_REPS    # the first: a warm-up
            finally:
                cu.cuGraphExecDestroy(exe)
        finally:
            cu.cuGraphDestroy(graph)

    def _launch_all(self, packed: list[Any]) -> None:
        for p in packed:
            self._launch(p)

    def _captured(self, packed: list[Any]) -> Any:
        """A CUDA graph of these launches (captured from the stream, not instantiated)."""
        cu = _driver()
        check(cu.cuStreamBeginCapture(self._stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
              "cuStreamBeginCapture")
        try:
            self._launch_all(packed)
        finally:
            graph = check(cu.cuStreamEndCapture(self._stream), "cuStreamEndCapture")
        return graph

    def _capture(self, state: _ShapeState) -> None:
        cu = _driver()
        state.graph = graph = self._captured(state.launches)
        state.graph_exec = check(cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")

    def _free_state(self, st: _ShapeState) -> None:
        cu = _driver()
        if st.graph_exec is not None:
            cu.cuGraphExecDestroy(st.graph_exec)
        if st.graph is not None:
            cu.cuGraphDestroy(st.graph)
        cu.cuMemFree(st.arena)

    def _drop_states(self) -> None:
        while self._states:
            self._free_state(self._states.popitem()[1])

    # ---------------------------------------------------------------- run
    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run with ``{name: numpy array}`` (float32); returns ``{name: numpy array}``."""
        if self._closed:
            raise BackendError("this plan was closed", fix="load it again")
        if not self._weights_ready:
            raise BackendError("this plan is weight-stripped and has no weights yet",
                               fix="call refit(onnx_path) with the model's ONNX before run()")
        self._activate()
        arrays = self.input_arrays(inputs)
        shapes = {n: tuple(a.shape) for n, a in arrays.items()}
        check_profile(self.graph, self.graph.get("profiles") or {}, shapes)
        st = self._state(shapes)
        for n, a in arrays.items():
            if a.nbytes:
                self._to_device(self._addr(st.plan, st.arena, n), a)
        self._execute(st)
        st.runs += 1
        outs: dict[str, Any] = {}
        for n in self.output_names:
            if n in st.plan.host:
                outs[n] = np.array(st.plan.host[n])
                continue
            o = self.output_buffer(st.plan, n)
            if o.nbytes:
                self._to_host(o, self._addr(st.plan, st.arena, n))
            outs[n] = o
        self._sync()
        cast = self.graph.get("output_io_dtypes") or {}
        return {n: (o.view(np.bool_) if st.plan.dtypes.get(n) == "bool" else o.astype(cast[n]) if n in cast else o)
                for n, o in outs.items()}

    # the device steps of run() (the CPU emulator in tests/cudaemu overrides these five)
    def _activate(self) -> None:
        check(_driver().cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")

    def _to_device(self, addr: int, a: np.ndarray) -> None:
        check(_driver().cuMemcpyHtoDAsync(addr, a.ctypes.data, a.nbytes, self._stream), "cuMemcpyHtoDAsync")

    def _execute(self, st: _ShapeState) -> None:
        # the first run of a shape launches directly (lowest time to first inference); the second
        # captures the whole run into a CUDA graph, replayed from then on with one launch
        if st.graph_exec is None and st.runs >= 1 and st.launches and self._opts.get("cuda_graph", True):
            self._capture(st)
        if st.graph_exec is not None:
            check(_driver().cuGraphLaunch(st.graph_exec, self._stream), "cuGraphLaunch")
        else:
            self._launch_all(st.launches)

    def _to_host(self, o: np.ndarray, addr: int) -> None:
        check(_driver().cuMemcpyDtoHAsync(o.ctypes.data, addr, o.nbytes, self._stream), "cuMemcpyDtoHAsync")

    def _sync(self) -> None:
        check(_driver().cuStreamSynchronize(self._stream), "cuStreamSynchronize")

    def time_steady(self, inputs: Mapping[str, Any], iters: int = 50) -> float:
        """Median milliseconds of one steady-state run (the CUDA graph replay, CUDA events around
        each; inputs copied once before), the number a latency benchmark compares."""
        cu = _driver()
        self.run(inputs)
        self.run(inputs)                 # the second run captures the graph
        st = self._state({n: tuple(a.shape) for n, a in self.input_arrays(inputs).items()})
        events = [(check(cu.cuEventCreate(0), "cuEventCreate"), check(cu.cuEventCreate(0), "cuEventCreate"))
                  for _ in range(iters)]
        try:
            for start, end in events:
                check(cu.cuEventRecord(start, self._stream), "cuEventRecord")
                if st.graph_exec is not None:
                    check(cu.cuGraphLaunch(st.graph_exec, self._stream), "cuGraphLaunch")
                else:
                    self._launch_all(st.launches)
                check(cu.cuEventRecord(end, self._stream), "cuEventRecord")
            check(cu.cuStreamSynchronize(self._stream), "cuStreamSynchronize")
            times = sorted(float(check(cu.cuEventElapsedTime(a, b), "cuEventElapsedTime")) for a, b in events)
        finally:
            for a, b in events:
                cu.cuEventDestroy(a)
                cu.cuEventDestroy(b)
        return times[len(times) // 2]

    def profile(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Milliseconds of each launch of a run on these inputs, timed as the tuner times a candidate (replayed
        from a CUDA graph, ``_graph_ms``): where a model's time goes, launch gaps included as the plan's graph
        has them. (Timed from host launches instead, every kernel of a few microseconds reads as the host's
        launch rate, several times what it costs in the graph.)"""
        cu = _driver()
        self.run(inputs)
        st = self._state({n: tuple(a.shape) for n, a in self.input_arrays(inputs).items()})
        start, end = check(cu.cuEventCreate(0), "cuEventCreate"), check(cu.cuEventCreate(0), "cuEventCreate")
        out = []
        try:
            for ln, p in zip(st.plan.launches, st.launches):
                ms = self._graph_ms([p], start, end)
                out.append({"kernel": ln.spec.key(), "grid": list(ln.grid), "block": ln.block, "ms": ms})
        finally:
            cu.cuEventDestroy(start)
            cu.cuEventDestroy(end)
        return out

    def input_arrays(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The inputs as the device stores them (each in its model input's type; bool as bytes)."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise BackendError(f"missing input(s) {missing}", fix=f"pass every input: {self.input_names}")
        out = {}
        for spec in self.graph["inputs"]:
            name, dt = spec["name"], spec.get("dtype", "float32")
            a = np.asarray(inputs[name])
            if a.dtype.name != dt and not (dt == "float32" and a.dtype.kind == "f") and not (
                    dt in ("int64", "int32") and a.dtype.kind in "iu"):
                raise BackendError(f"input {name!r} is {a.dtype.name}, the model takes {dt}",
                                   fix=f"pass a numpy array of dtype {dt}", input=name)
            out[name] = np.ascontiguousarray(a.astype(np.uint8 if dt == "bool" else dt, copy=False))
        return out

    @staticmethod
    def output_buffer(plan: ShapePlan, name: str) -> np.ndarray:
        """An empty host array for output ``name`` in the device's storage type."""
        dt = plan.dtypes.get(name, "float32")
        return np.empty(plan.shapes[name], dtype=np.uint8 if dt == "bool" else dt)

    def runtime_cache(self) -> bytes:
        """Serialized runtime cache (JIT results and tuned kernel choices of this and any earlier
        loads it was given)."""
        return self._cache.serialize()

    def close(self) -> None:
        if self._closed:
            return
        cu = _driver()
        self._drop_states()
        if self._wbuf is not None:
            cu.cuMemFree(self._wbuf)
            self._wbuf = None
        if getattr(self, "_module", None) is not None:
            cu.cuModuleUnload(self._module)
            self._module = None
        if getattr(self, "_stream", None) is not None:
            cu.cuStreamDestroy(self._stream)
            self._stream = None
        cu.cuDevicePrimaryCtxRelease(self._dev)
        self._closed = True

    def __enter__(self) -> "NvrtcLoadedPlan":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() is the contract
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
