"""What this machine is: GPUs (name, CC, memory, driver, UUID), OS family, installed backends.

Detection uses cuda-python's driver API and never raises: no driver, no GPU or no cuda-python
all mean ``gpus == ()``. ``RTXPACK_DEVICE`` overrides detection (headless machines, tests):
either a compute capability (``8.9``) or a JSON object with the same fields ``detect --json``
prints (a single GPU's fields are accepted too).
"""
from __future__ import annotations

import json
import logging
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from . import config, registry
from .cuda import check
from .errors import DeviceError
from .versions import format_cc, parse_cc

log = logging.getLogger(__name__)


def os_family() -> str:
    return "windows" if sys.platform.startswith("win") else "linux" if sys.platform.startswith("linux") else sys.platform


@dataclass(frozen=True)
class GPU:
    name: str
    compute_capability: str            # "8.9"
    memory_bytes: int = 0
    driver_version: str | None = None  # CUDA driver API version, "13.0"
    uuid: str | None = None
    index: int = 0

    @property
    def cc(self) -> tuple[int, int]:
        return parse_cc(self.compute_capability)

    @property
    def driver_major(self) -> int | None:
        return int(self.driver_version.split(".")[0]) if self.driver_version else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability, "memory_bytes": self.memory_bytes,
                "driver_version": self.driver_version, "uuid": self.uuid, "index": self.index}


@dataclass(frozen=True)
class Device:
    os: str
    gpus: tuple[GPU, ...] = ()
    backends: tuple[tuple[str, str | None], ...] = ()   # (name, exact version or None)
    source: str = "detected"                            # "detected" | "RTXPACK_DEVICE"
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def gpu(self) -> GPU | None:
        return self.gpus[0] if self.gpus else None

    def backend_version(self, name: str) -> str | None:
        return dict(self.backends).get(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"os": self.os, "gpus": [g.to_dict() for g in self.gpus],
                               "backends": dict(self.backends), "source": self.source}
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# ---- backends --------------------------------------------------------------------------------------
def installed_backends() -> tuple[tuple[str, str | None], ...]:
    """(name, installed version or None) of every registered backend (see ``core.registry``)."""
    return registry.installed()


# ---- detection -------------------------------------------------------------------------------------
def detect_gpus() -> tuple[tuple[GPU, ...], list[str]]:
    """GPUs through the CUDA driver API; ``((), [why])`` when there is no usable driver."""
    try:
        from cuda.bindings import driver as cu
    except Exception as e:  # cuda-python missing or broken
        return (), [f"cuda-python not available ({type(e).__name__}): pip install rtxpack[gpu]"]
    try:
        check(cu.cuInit(0))
        count = check(cu.cuDeviceGetCount())
        drv = check(cu.cuDriverGetVersion())
        driver_version = f"{drv // 1000}.{(drv % 1000) // 10}"
        gpus = []
        for i in range(count):
            dev = check(cu.cuDeviceGet(i))
            name = check(cu.cuDeviceGetName(256, dev))
            name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
            major = check(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev))
            minor = check(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev))
            mem = check(cu.cuDeviceTotalMem(dev))
            try:
                raw = check(cu.cuDeviceGetUuid(dev)).bytes
                h = bytes(raw).hex()
                uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
            except Exception:
                uuid = None
            gpus.append(GPU(name=name, compute_capability=f"{major}.{minor}", memory_bytes=int(mem),
                            driver_version=driver_version, uuid=uuid, index=i))
        return tuple(gpus), []
    except Exception as e:  # no driver (DynamicLibNotFoundError), no device, driver error
        return (), [f"no usable CUDA driver/GPU ({type(e).__name__}: {e})"]


def _gpu_from_obj(obj: Mapping[str, Any], index: int) -> GPU:
    if not isinstance(obj, dict):
        raise TypeError(f"GPU entry {index} is not an object")
    cc = obj.get("compute_capability", obj.get("cc"))
    if cc is None:
        raise DeviceError("RTXPACK_DEVICE: a GPU entry has no compute_capability",
                          fix='e.g. RTXPACK_DEVICE=\'{"gpus":[{"name":"RTX 4090","compute_capability":"8.9"}]}\'',
                          variable="RTXPACK_DEVICE")
    try:
        # a JSON number (8.9) is accepted here: the override is typed by hand
        cc_s = format_cc(parse_cc(str(cc) if isinstance(cc, (int, float)) and not isinstance(cc, bool) else cc))
    except ValueError as e:
        raise DeviceError(f"RTXPACK_DEVICE: {e}", fix="use a compute capability such as 8.9",
                          variable="RTXPACK_DEVICE") from e
    return GPU(name=str(obj.get("name") or f"forced sm_{cc_s.replace('.', '')}"), compute_capability=cc_s,
               memory_bytes=int(obj.get("memory_bytes", 0) or 0), driver_version=obj.get("driver_version"),
               uuid=obj.get("uuid"), index=int(obj.get("index", index)))


def parse_override(value: str) -> Device:
    """Parse ``RTXPACK_DEVICE``: ``8.9`` or a JSON object. Anything else is one DeviceError naming
    the variable (a JSON list, a string where an object belongs, a non-number memory size...)."""
    try:
        return _parse_override(value)
    except DeviceError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as e:
        raise DeviceError(f"RTXPACK_DEVICE is not a valid device description ({type(e).__name__}: {e})",
                          fix='set RTXPACK_DEVICE=8.9, or to the JSON `rtxpack detect --json` prints '
                              '(e.g. {"gpus":[{"name":"RTX 4090","compute_capability":"8.9"}]})',
                          variable="RTXPACK_DEVICE") from e


def _parse_override(value: str) -> Device:
    text = value.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise DeviceError(f"RTXPACK_DEVICE is not valid JSON ({e})",
                              fix="set it to a compute capability such as 8.9 or to the JSON `rtxpack detect --json` prints",
                              variable="RTXPACK_DEVICE") from e
        if not isinstance(obj, dict):
            raise TypeError("the JSON is not an object")
        gpus_obj = obj.get("gpus")
        if gpus_obj is not None and not isinstance(gpus_obj, list):
            raise TypeError("'gpus' is not a list")
        if gpus_obj is None and ("compute_capability" in obj or "cc" in obj):
            gpus_obj = [obj]
        gpus = tuple(_gpu_from_obj(g, i) for i, g in enumerate(gpus_obj or []))
        backends = dict(installed_backends())
        backends.update(obj.get("backends") or {})
        return Device(os=obj.get("os") or os_family(), gpus=gpus, backends=tuple(sorted(backends.items())),
                      source="RTXPACK_DEVICE")
    try:
        cc_s = format_cc(parse_cc(text))
    except ValueError as e:
        raise DeviceError(f"RTXPACK_DEVICE={value!r} is neither a compute capability nor JSON",
                          fix="set RTXPACK_DEVICE=8.9 (for example) or unset it to detect the GPU",
                          variable="RTXPACK_DEVICE") from e
    gpu = GPU(name=f"forced sm_{cc_s.replace('.', '')}", compute_capability=cc_s)
    return Device(os=os_family(), gpus=(gpu,), backends=installed_backends(), source="RTXPACK_DEVICE")


def detect(*, use_override: bool = True) -> Device:
    """This machine. Never raises for a missing driver or GPU; raises DeviceError for a bad override."""
    override = config.device_override() if use_override else None
    if override:
        return parse_override(override)
    gpus, notes = detect_gpus()
    return Device(os=os_family(), gpus=gpus, backends=installed_backends(), notes=tuple(notes))


def describe(device: Device) -> str:
    if not device.gpus:
        return f"{device.os}, no GPU"
    g = device.gpus[0]
    drv = f", driver CUDA {g.driver_version}" if g.driver_version else ""
    return f"{g.name} (CC {g.compute_capability}{drv}, {device.os})"


def machine() -> str:
    return f"{platform.system()} {platform.machine()}"
