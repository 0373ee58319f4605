"""The TensorRT-RTX runtime adapter at its boundary.

This machine (and CI) has no GPU, and the GPUs we can rent (Hopper) are outside TensorRT-RTX's
support matrix, so the adapter's *decisions* are tested here: diagnostics -> reasons, invalid
engines refused before deserializing, rejected runtime caches ignored, options mapped to enums,
refit failures named. A fake module records every call; the real module's validity check runs
on a real AOT-built plan.
"""
from types import SimpleNamespace

import pytest

from rtxpack.backends.tensorrt_rtx import runtime as rt
from rtxpack.core.errors import BackendError, ConfigError, RefitError


class Enum:
    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, SimpleNamespace(name=k, value=v))


class FakeCache:
    def __init__(self, accept: bool):
        self.accept, self.data = accept, b""

    def deserialize(self, blob):
        if self.accept:
            self.data = bytes(blob)
        return self.accept

    def serialize(self):
        return self.data + b"+jit"


class FakeConfig:
    def __init__(self, accept_cache):
        self.accept_cache, self.cache = accept_cache, None
        self.dynamic_shapes_kernel_specialization_strategy = "LAZY"
        self.cuda_graph_strategy = "DISABLED"

    def create_runtime_cache(self):
        return FakeCache(self.accept_cache)

    def set_runtime_cache(self, c):
        self.cache = c


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, accept_cache):
        self.cfg = FakeConfig(accept_cache)
        self.contexts = []

    def create_runtime_config(self):
        return self.cfg

    def create_execution_context(self, cfg):
        self.contexts.append(cfg)
        return object()

    def get_tensor_name(self, i):
        return ["x", "y"][i]

    def get_tensor_mode(self, n):
        return "IN" if n == "x" else "OUT"


def fake_trt(validity=(0, 0), accept_cache=True, refit_ok=True):
    calls = []
    engine = FakeEngine(accept_cache)

    class Runtime:
        def __init__(self, logger):
            pass

        def get_engine_validity(self, plan):
            calls.append("validity")
            return SimpleNamespace(value=validity[0]), validity[1]

        def deserialize_cuda_engine(self, plan):
            calls.append("deserialize")
            return engine

    class Refitter:
        def __init__(self, eng, logger):
            pass

        def refit_cuda_engine(self):
            return refit_ok

        def get_missing_weights(self):
            return ["fc0.weight"]

    class OnnxParserRefitter:
        def __init__(self, r, logger):
            pass

        def refit_from_file(self, path):
            calls.append(("refit_from_file", path))
            return True

    logger = SimpleNamespace(WARNING=2)
    trt = SimpleNamespace(Logger=lambda level: logger, Runtime=Runtime, Refitter=Refitter,
                          OnnxParserRefitter=OnnxParserRefitter, TensorIOMode=SimpleNamespace(INPUT="IN"),
                          DynamicShapesKernelSpecializationStrategy=Enum(LAZY=0, EAGER=1, NONE=2),
                          CudaGraphStrategy=Enum(DISABLED=0, WHOLE_GRAPH_CAPTURE=1))
    trt.Logger.WARNING = 2
    return trt, calls, engine


def test_diagnostics_become_reasons_and_invalid_is_refused_before_deserializing():
    trt, calls, _ = fake_trt(validity=(2, (1 << 1) | (1 << 2)))
    with pytest.raises(BackendError) as ei:
        rt.TensorRTRTXLoaded(b"plan", trt=trt)
    assert "UNSUPPORTED_CC" in str(ei.value) and "OLD_CUDA_DRIVER" in str(ei.value)
    assert ei.value.reasons == ["UNSUPPORTED_CC", "OLD_CUDA_DRIVER"] and ei.value.fix
    assert calls == ["validity"]                     # never deserialized


def test_invalid_without_diagnostics_says_no_driver():
    trt, _, _ = fake_trt(validity=(2, 0))
    with pytest.raises(BackendError, match="no usable CUDA driver"):
        rt.TensorRTRTXLoaded(b"plan", trt=trt)


def test_suboptimal_loads_with_notes():
    trt, _, _ = fake_trt(validity=(1, 1 << 4))
    loaded = rt.TensorRTRTXLoaded(b"plan", trt=trt)
    assert loaded.validity == "suboptimal" and "INSUFFICIENT_GPU_MEMORY" in loaded.notes[0]
    assert loaded.input_names == ["x"] and loaded.output_names == ["y"]


def test_runtime_cache_loaded_or_ignored():
    trt, _, engine = fake_trt(accept_cache=True)
    loaded = rt.TensorRTRTXLoaded(b"plan", runtime_cache=b"kernels", trt=trt)
    assert loaded.runtime_cache_status == "loaded" and engine.cfg.cache is not None
    assert loaded.runtime_cache() == b"kernels+jit"
    trt, _, _ = fake_trt(accept_cache=False)
    loaded = rt.TensorRTRTXLoaded(b"plan", runtime_cache=b"foreign", trt=trt)
    assert loaded.runtime_cache_status.startswith("ignored")
    assert loaded.runtime_cache() == b"+jit"          # an empty cache, JIT compiled again: no error


def test_options_map_to_enums_and_bad_values_are_named():
    trt, _, engine = fake_trt()
    rt.TensorRTRTXLoaded(b"p", trt=trt, options={"dynamic_shapes_kernel_specialization_strategy": "eager",
                                                  "cuda_graph_strategy": "whole_graph_capture"})
    assert engine.cfg.dynamic_shapes_kernel_specialization_strategy.name == "EAGER"
    assert engine.cfg.cuda_graph_strategy.name == "WHOLE_GRAPH_CAPTURE"
    with pytest.raises(ConfigError, match="'sometimes' is not a valid CudaGraphStrategy.*whole_graph_capture"):
        rt.TensorRTRTXLoaded(b"p", trt=fake_trt()[0], options={"cuda_graph_strategy": "sometimes"})
    with pytest.raises(ConfigError, match="unknown TensorRT-RTX runtime option"):
        rt.TensorRTRTXLoaded(b"p", trt=fake_trt()[0], options={"turbo": True})


def test_refit_success_and_failure():
    trt, calls, engine = fake_trt()
    loaded = rt.TensorRTRTXLoaded(b"p", trt=trt)
    loaded.refit("/app/model.onnx")
    assert ("refit_from_file", "/app/model.onnx") in calls and len(engine.contexts) == 2
    trt, _, _ = fake_trt(refit_ok=False)
    loaded = rt.TensorRTRTXLoaded(b"p", trt=trt)
    with pytest.raises(RefitError, match="fc0.weight"):
        loaded.refit("/app/model.onnx")


@pytest.mark.rtx
def test_real_validity_check_on_a_real_aot_plan(tmp_path):
    """The real module: an AOT plan for SM89 built here, checked by the real Runtime."""
    trt = pytest.importorskip("tensorrt_rtx")
    from rtxpack.demo import models as examples
    from rtxpack.backends.tensorrt_rtx import TensorRTRTXBackend
    from rtxpack.core.device import detect_gpus

    onnx = examples.mlp(tmp_path / "mlp.onnx")
    plan = TensorRTRTXBackend().build(onnx, compute_capabilities=["8.9"],
                                      profiles={"x": {"min": [1, 64], "opt": [4, 64], "max": [16, 64]}})
    gpus, _ = detect_gpus()
    supported = gpus and gpus[0].cc == (8, 9)
    if supported:
        loaded = rt.TensorRTRTXLoaded(plan)
        assert loaded.validity in ("valid", "suboptimal")
    else:
        with pytest.raises(BackendError) as ei:
            rt.TensorRTRTXLoaded(plan, trt=trt)
        # no driver: INVALID without diagnostics; a Hopper GPU: UNSUPPORTED_CC
        assert "not valid on this machine" in str(ei.value)
