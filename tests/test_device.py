import json

import pytest

from rtxpack.core import device
from rtxpack.core.errors import DeviceError


def test_detect_never_raises_and_reports_gpus_list(monkeypatch):
    monkeypatch.delenv("RTXPACK_DEVICE", raising=False)
    d = device.detect()
    out = d.to_dict()
    assert isinstance(out["gpus"], list) and out["os"] in ("linux", "windows")
    assert set(out["backends"]) == {"tensorrt-rtx", "nvrtc"}
    for g in out["gpus"]:
        assert set(g) >= {"name", "compute_capability", "memory_bytes", "driver_version", "uuid"}


def test_override_cc(monkeypatch):
    monkeypatch.setenv("RTXPACK_DEVICE", "8.9")
    d = device.detect()
    assert d.source == "RTXPACK_DEVICE" and d.gpus[0].compute_capability == "8.9"


def test_override_json(monkeypatch):
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps({"os": "windows", "gpus": [
        {"name": "NVIDIA GeForce RTX 5090", "compute_capability": "12.0", "memory_bytes": 32 << 30,
         "driver_version": "13.0", "uuid": "GPU-1"}], "backends": {"tensorrt-rtx": "1.6.1.120"}}))
    d = device.detect()
    assert d.os == "windows" and d.gpus[0].name == "NVIDIA GeForce RTX 5090" and d.gpus[0].cc == (12, 0)
    assert d.backend_version("tensorrt-rtx") == "1.6.1.120"
    monkeypatch.setenv("RTXPACK_DEVICE", json.dumps({"name": "X", "compute_capability": "7.5"}))
    assert device.detect().gpus[0].compute_capability == "7.5"


@pytest.mark.parametrize("value", ["banana", "{not json", '{"gpus":[{"name":"x"}]}', "8.89"])
def test_bad_override_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("RTXPACK_DEVICE", value)
    with pytest.raises(DeviceError) as ei:
        device.detect()
    assert "RTXPACK_DEVICE" in str(ei.value) and ei.value.fix


def test_cuda_missing_means_no_gpus(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **kw):
        if name.startswith("cuda"):
            raise ImportError("no cuda")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    gpus, notes = device.detect_gpus()
    assert gpus == () and "cuda-python" in notes[0]


@pytest.mark.gpu
def test_real_gpu_detection():
    gpus, notes = device.detect_gpus()
    if not gpus:
        pytest.skip(f"no GPU here: {notes}")
    g = gpus[0]
    assert g.memory_bytes > 1 << 30 and g.driver_version and g.uuid.startswith("GPU-")
    assert g.cc >= (7, 0)
