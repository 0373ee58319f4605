"""Run an nvrtc plan on the CPU: ``EmuLoadedPlan`` is ``NvrtcLoadedPlan`` with the CUDA driver
replaced by cudaemu (host memory, g++-compiled kernels).

Everything that is not the driver is rtxpack's own code, reused as is: read_plan, the host
weights (``_weights_from_plan``), ``refit``, device weights (``device_tensors`` / the DWGT
section), per-shape planning (``schedule.plan_shapes`` with a configurable ``num_sms``, default
132 as on an H100, so the same tile choices and split-K launches run), tensor addresses
(``_addr``) and the argument formats (``runtime._ARG_FORMATS``, ``kernels.param_types``).

    with EmuLoadedPlan(plan_bytes) as p:
        y = p.run({"x": x})
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from rtxpack.backends.nvrtc import compile as nv_compile
from rtxpack.backends.nvrtc import runtime as nv_runtime
from rtxpack.backends.nvrtc.kernels import FAMILIES, KernelSpec
from rtxpack.backends.nvrtc.plan import read_plan
from rtxpack.backends.nvrtc.schedule import ALIGN, ShapePlan, device_bytes
from rtxpack.backends.nvrtc.tuning import tune

from .emu import EmuError, EmuModule, compile_source

#: 0xFF bytes are float32 NaN: a kernel that reads memory nothing wrote produces NaN, not luck
POISON = 0xFF
#: bytes of NaN before and after every buffer, checked after each launch (out-of-bounds writes)
REDZONE = 4096


class HostBuffer:
    """``nbytes`` of ``ALIGN``-aligned host memory at ``addr``, between two red zones."""

    def __init__(self, nbytes: int, fill: int | None = None) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.raw = np.full(self.nbytes + 2 * REDZONE + ALIGN, POISON, dtype=np.uint8)
        base = self.raw.ctypes.data
        self.addr = base + REDZONE + (-(base + REDZONE)) % ALIGN
        self._lo, self._hi = self.addr - base, self.addr - base + self.nbytes
        if fill is not None and fill != POISON:
            self.raw[self._lo:self._hi] = fill

    @property
    def view(self) -> np.ndarray:
        return self.raw[self._lo:self._hi]

    def redzones_intact(self) -> bool:
        return not ((self.raw[:self._lo] != POISON).any() or (self.raw[self._hi:] != POISON).any())


class _EmuState:
    def __init__(self, plan: ShapePlan, arena: int, keep: HostBuffer, launches: list[tuple]) -> None:
        self.plan, self.arena, self.keep, self.launches = plan, arena, keep, launches
        self.runs = 0


class EmuLoadedPlan(nv_runtime.NvrtcLoadedPlan):
    """A plan "loaded" on the CPU emulator; same interface as ``NvrtcLoadedPlan``.

    ``module``: an already compiled ``EmuModule`` holding every kernel of the plan (e.g. one
    program with the kernels of many plans, compiled once); default: compile the plan's own
    KERN source. ``num_sms``: the SM count planning assumes. ``poison``: fill each arena with
    NaN bytes before first use. Every buffer has NaN red zones, checked after each launch.
    ``schedule``: the order the threads of a block run in between barriers ("forward", "reverse",
    "random" with ``seed``; see ``EmuModule.set_schedule``). ``wgmma``: plan as the runtime does on an
    sm_90a GPU (Hopper's gemm_wg kernels planned), else as on every other GPU (they are not).
    """

    def __init__(self, plan: bytes, *, runtime_cache: bytes | None = None, options: Mapping[str, Any] | None = None,
                 num_sms: int = 132, module: EmuModule | None = None, poison: bool = True,
                 schedule: str = "forward", seed: int = 0, wgmma: bool = False) -> None:
        t0 = time.perf_counter()
        self._opts = dict(options or {})
        self._closed = True
        if schedule not in EmuModule.SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(EmuModule.SCHEDULES)}, not {schedule!r}")
        self.header, self.graph, self._index, kblobs, wsecs = read_plan(
            plan, verify_weights=bool(self._opts.get("verify_weights", False)))
        self.input_names = [i["name"] for i in self.graph["inputs"]]
        self.output_names = list(self.graph["outputs"])
        self.stripped = bool(self.graph.get("stripped"))
        self.num_sms, self.sm, self.driver_version = int(num_sms), 0, 0
        self.poison = poison
        self.schedule, self.seed = schedule, seed
        self._runtime_cache_in = runtime_cache or b""
        self.cache_status = "emulator: no runtime cache"
        # tuning: the emulator's times say nothing about a GPU, so it tunes only with a timer a test
        # gives (options["tune_timer"](layer, label) -> ms); the choices go to the runtime cache as on a GPU
        if "tune_timer" not in self._opts:
            self._opts.setdefault("tune_budget_s", 0)
        self._cache = nv_runtime.RuntimeCache.parse(runtime_cache)
        self._init_tuning(str(self._opts.get("emu_gpu", "CPU emulator")))
        t1 = time.perf_counter()
        source = self._blob(bytes(kblobs), self._index["source"]).decode()
        self.module = module if module is not None else compile_source(source)
        n = len(self._index["kernels"])
        self.kernel_sources = {"cubin": 0, "runtime-cache": 0, "ptx-jit": 0, "nvrtc-jit": 0, "emulator": n}
        self.provenance = (f"CPU emulator: {'a shared program' if module is not None else 'the plan source'} "
                           f"compiled with g++ ({self.module.path.name})")
        # wgmma: plan as on an sm_90a GPU (Hopper's gemm_wg kernels among the candidates), else as on any other
        self.wgmma_ok = bool(wgmma)
        self._funcs: dict[KernelSpec, str] = {}
        for k in self._index["kernels"]:
            self.module.function(k["entry"])      # KeyError now, not at the first run, when it is missing
            spec = KernelSpec(k["family"], tuple(k["targs"]))
            if self._runnable(spec):
                self._funcs[spec] = k["entry"]
        t2 = time.perf_counter()
        self._host_w = self._weights_from_plan(wsecs["WGHT"])
        self.weights_digest = self.graph.get("weights_digest")
        self._weights_ready = not self.stripped
        self._wmem: HostBuffer | None = None
        self._waddr: dict[str, int] = {}
        self._states: OrderedDict[tuple, _EmuState] = OrderedDict()
        if self._weights_ready:
            self._upload_device_tensors(self.graph["device_tensors"], wsecs["DWGT"])
        self._closed = False
        t3 = time.perf_counter()
        self.load_timings = {"read_and_context": t1 - t0, "kernels": t2 - t1, "weights": t3 - t2}
        self.last_shape_plan_s = 0.0
        #: launches executed, per ``launch_label`` (e.g. "conv_igemm<32,32,8,4,4,1>/splitK")
        self.launch_counts: Counter[str] = Counter()

    # ---------------------------------------------------------------- "device" memory
    def _upload_device_tensors(self, recs: list[dict[str, Any]], blob: Any) -> None:
        host = np.frombuffer(blob, dtype=np.uint8)
        self._wmem = HostBuffer(max(int(host.size), ALIGN), fill=0)
        self._wmem.view[:host.size] = host
        self._waddr = {r["name"]: self._wmem.addr + r["offset"] for r in recs}

    def pack_launches(self, sp: ShapePlan, arena: int) -> list[tuple[KernelSpec, tuple, int, bytes, list[int]]]:
        """(spec, grid, block, argument bytes, offset of each argument): the bytes runtime.py's
        ``_state`` packs for ``cuLaunchKernel``, with these addresses."""
        out = []
        for ln in sp.launches:
            if ln.spec not in self._funcs:
                raise nv_runtime.BackendError(f"the plan has no kernel {ln.spec.key()}",
                                              fix="rebuild the plan with this rtxpack")
            buf, offs = self.pack_args(sp, arena, ln)
            out.append((ln.spec, tuple(ln.grid), int(ln.block), bytes(buf), offs))
        return out

    def _state(self, shapes: Mapping[str, tuple]) -> _EmuState:
        key = tuple(shapes[n] for n in self.input_names)
        st = self._states.get(key)
        if st is not None:
            self._states.move_to_end(key)
            return st
        t0 = time.perf_counter()
        sp = self._plan_for(shapes)
        keep = HostBuffer(max(sp.arena_bytes, ALIGN), fill=POISON if self.poison else 0)
        arena, view = keep.addr, keep.view
        for name, val in sp.uploads.items():
            b = np.frombuffer(device_bytes(val), dtype=np.uint8)
            view[sp.offsets[name]:sp.offsets[name] + b.size] = b
        launches = []
        for ln, (spec, grid, block, args, offs) in zip(sp.launches, self.pack_launches(sp, arena)):
            blob = np.frombuffer(args + b"\0" * 8, dtype=np.uint8).copy()
            ptrs = np.array([blob.ctypes.data + o for o in offs], dtype=np.uint64)
            launches.append((launch_label(ln), self._funcs[spec], grid, block, ptrs, blob))
        state = _EmuState(sp, arena, keep, launches)
        self._states[key] = state
        self.last_shape_plan_s = time.perf_counter() - t0
        while len(self._states) > nv_runtime.MAX_SHAPES:
            self._states.popitem(last=False)
        return state

    def _tune(self, sp: ShapePlan, budget_s: float, known: Mapping[str, str] | None = None
              ) -> tuple[dict[str, str], dict[str, Any]]:
        timer = self._opts["tune_timer"]
        return tune(sp, self.num_sms, lambda layer, label, launches, extra: timer(layer, label), budget_s, known)

    def _free_state(self, st: Any) -> None:   # host memory: garbage-collected with the state
        pass

    # ---------------------------------------------------------------- run
    # the device steps of the runtime's run(), on host memory
    def _activate(self) -> None:
        pass

    def _to_device(self, addr: int, a: np.ndarray) -> None:
        ctypes_buffer(addr, a.nbytes)[:] = a.view(np.uint8).reshape(-1)

    def _execute(self, st: Any) -> None:
        self.module.set_schedule(self.schedule, self.seed + st.runs)
        for i, (label, entry, grid, block, ptrs, _) in enumerate(st.launches):
            self.module.launch(entry, grid, (block, 1, 1), ptrs.ctypes.data)
            self.launch_counts[label] += 1
            if not (st.keep.redzones_intact() and self._wmem.redzones_intact()):
                raise EmuError(f"launch {i} ({label}, grid {grid}, block {block}) wrote outside the arena or the "
                               "weights (red zone overwritten)")

    def _to_host(self, o: np.ndarray, addr: int) -> None:
        o[...] = ctypes_buffer(addr, o.nbytes).view(o.dtype).reshape(o.shape)

    def _sync(self) -> None:
        pass

    def runtime_cache(self) -> bytes:
        """The emulator JIT-compiles nothing for a GPU: the cache it was given, plus tuned choices."""
        if not self._tuning.shapes:
            return self._runtime_cache_in
        cache = nv_runtime.RuntimeCache.parse(self._runtime_cache_in)
        self._tuning.store(cache)
        return cache.serialize()

    def close(self) -> None:
        if self._closed:
            return
        self._states.clear()
        self._wmem = None
        self._closed = True

    def __enter__(self) -> "EmuLoadedPlan":
        return self


def launch_label(ln: Any) -> str:
    """A launch's specialization key, + "/splitK" when it is a conv/gemm launch with S > 1."""
    names = [d.strip().rsplit(" ", 1)[1].lstrip("*") for d in FAMILIES[ln.spec.family].split(",")]
    split = "S" in names and int(ln.args[names.index("S")]) > 1
    return ln.spec.key() + ("/splitK" if split else "")


def ctypes_buffer(address: int, nbytes: int) -> np.ndarray:
    """A writable uint8 numpy view of ``nbytes`` of host memory at ``address``."""
    import ctypes

    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))


@contextlib.contextmanager
def no_nvrtc() -> Iterator[None]:
    """Within: ``NvrtcBackend.build`` skips NVRTC (empty cubins, no PTX); everything else about
    the plan (graph, kernel index, program source, weights) is what a real build writes. The
    emulator needs only the source, and NVRTC costs seconds per plan."""
    real = nv_compile.compile_targets

    def fake(source: str, sms, ptx_sm, workers: int = 2):
        return {s: b"" for s in sms}, None

    nv_compile.compile_targets = fake
    try:
        yield
    finally:
        nv_compile.compile_targets = real


def build_plan(onnx_path: str | Path, *, nvrtc: bool = False, **build_kwargs: Any) -> bytes:
    """``NvrtcBackend().build(onnx_path, **build_kwargs)``, by default without NVRTC (see ``no_nvrtc``)."""
    from rtxpack.backends.nvrtc import NvrtcBackend

    build_kwargs.setdefault("compute_capabilities", ["9.0"])
    build_kwargs.setdefault("ptx", False)
    if nvrtc:
        return NvrtcBackend().build(onnx_path, **build_kwargs)
    with no_nvrtc():
        return NvrtcBackend().build(onnx_path, **build_kwargs)


def plan_kernel_specs(plan: bytes) -> list[KernelSpec]:
    """The kernel specializations a plan's module holds (its KERN index)."""
    _, _, index, _, _ = read_plan(plan, verify_weights=False)
    return [KernelSpec(k["family"], tuple(k["targs"])) for k in index["kernels"]]
