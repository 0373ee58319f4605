"""The GPU twin of ``EmuModule.run``: compile a program with NVRTC, run one kernel on GPU 0.

Lets a test run the same kernel on the emulator and on a real GPU and compare both with numpy
(tests/test_cudaemu_shim.py: warp semantics, mma fragment layouts). Numpy arrays are copied to
the device before the launch and back into the same arrays after it.
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

import numpy as np

from .emu import _pack, parse_entries


class GpuModule:
    def __init__(self, source: str, sm: int) -> None:
        from cuda.bindings import driver as cu

        from rtxpack.backends.nvrtc.compile import compile_program

        self.cu = cu
        self.entries = parse_entries(source)
        self._check(cu.cuInit(0))
        self.dev = self._check(cu.cuDeviceGet(0))
        self.ctx = self._check(cu.cuDevicePrimaryCtxRetain(self.dev))
        self._check(cu.cuCtxSetCurrent(self.ctx))
        self._cubin = np.frombuffer(compile_program(source, sm), dtype=np.uint8).copy()
        self.module = self._check(cu.cuModuleLoadData(self._cubin.ctypes.data))

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA driver error {err}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    def run(self, entry: str, grid: Sequence[int], block: Sequence[int], *args: Any) -> None:
        cu = self.cu
        fn = self._check(cu.cuModuleGetFunction(self.module, entry.encode()))
        params = self.entries[entry]
        keep, copies = [], []
        try:
            for p, v in zip(params, args):
                if p.kind == "p":
                    addr = 0
                    if v is not None:
                        addr = int(self._check(cu.cuMemAlloc(max(v.nbytes, 1))))
                        self._check(cu.cuMemcpyHtoD(addr, v.ctypes.data, v.nbytes))
                        copies.append((addr, v))
                    b = struct.pack("<Q", addr)
                else:
                    b = _pack(p.kind, v)
                keep.append(np.frombuffer(b + b"\0" * (-len(b) % 8), dtype=np.uint8).copy())
            ptrs = np.array([k.ctypes.data for k in keep], dtype=np.uint64)
            g = tuple(grid) + (1,) * (3 - len(grid))
            bl = tuple(block) + (1,) * (3 - len(block))
            self._check(cu.cuLaunchKernel(fn, *g, *bl, 0, 0, ptrs.ctypes.data, 0))
            self._check(cu.cuCtxSynchronize())
            for addr, v in copies:
                self._check(cu.cuMemcpyDtoH(v.ctypes.data, addr, v.nbytes))
        finally:
            for addr, _ in copies:
                cu.cuMemFree(addr)

    def close(self) -> None:
        self.cu.cuModuleUnload(self.module)
        self.cu.cuDevicePrimaryCtxRelease(self.dev)
