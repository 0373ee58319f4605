"""cudaemu: a CPU oracle for the CUDA C that rtxpack's nvrtc backend generates (test support only).

``cuda_shim.h`` lets an NVRTC program compile as C++ with g++; ``emu.compile_source`` builds and
loads it; ``EmuLoadedPlan`` runs a whole nvrtc plan with it. See tests/test_cudaemu.py.
"""
from .emu import EmuError, EmuModule, Param, compile_source, compiler, mma_device_source, parse_entries
from .emuplan import EmuLoadedPlan, build_plan, no_nvrtc, plan_kernel_specs

__all__ = ["EmuError", "EmuLoadedPlan", "EmuModule", "Param", "build_plan", "compile_source", "compiler",
           "mma_device_source", "no_nvrtc", "parse_entries", "plan_kernel_specs"]
