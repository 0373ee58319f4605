"""The small interface every backend implements (AOT build, inspect, load, refit, runtime cache, run).

Modelled on Polygraphy's loaders: each step is a plain call with explicit inputs, so the farm,
the runtime and the tests compose them without knowing the backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class BackendInfo:
    """What is installed here for a backend."""

    name: str                       # "tensorrt-rtx" | "nvrtc"
    version: str | None             # exact version string, None when not installed
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"nvrtc": "13.0", "cuda": "13"}


@dataclass(frozen=True)
class PlanInfo:
    """What a plan says about itself, read without a GPU (``rtxpack inspect``)."""

    backend: str
    backend_version: str
    compute_capabilities: tuple[str, ...]   # e.g. ("8.6", "8.9", "12.0")
    ptx: bool = False                       # also runs on newer GPUs through PTX JIT
    stripped: bool = False
    weights_digest: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class LoadedPlan(Protocol):
    """A plan deserialized on the local GPU, ready to run."""

    input_names: Sequence[str]
    output_names: Sequence[str]

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run with ``{name: numpy array}``; returns ``{name: numpy array}``."""

    def refit(self, onnx_path: str | Path) -> None:
        """Fill in / replace the weights of a (stripped) plan from the app's ONNX."""

    def runtime_cache(self) -> bytes:
        """Serialize what the JIT compiled so far (to persist on close)."""

    def close(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str

    def info(self) -> BackendInfo:
        """Installed version and details; never raises when the backend is missing."""

    def build(
        self,
        onnx_path: str | Path,
        *,
        compute_capabilities: Sequence[str] | None = None,
        precision: str = "fp32",
        strip_weights: bool = False,
        profiles: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
    ) -> bytes:
        """AOT-compile an ONNX model into plan bytes (no GPU needed unless the backend says so)."""

    def inspect(self, plan: bytes) -> PlanInfo:
        """Read a plan's header without a GPU."""

    def load(
        self,
        plan: bytes,
        *,
        device: int = 0,
        runtime_cache: bytes | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> LoadedPlan:
        """Deserialize on the local GPU; a runtime cache that does not match is ignored."""
