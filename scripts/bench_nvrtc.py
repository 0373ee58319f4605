#!/usr/bin/env python3
"""Benchmark the nvrtc backend on a ResNet-50-sized model (run on a GPU machine).

Measures, each in a FRESH process (so no in-process NVRTC/driver state helps):
  * time to first inference, cold: the plan has no cubin for this GPU -> JIT
    (NVRTC for the exact arch; and driver PTX JIT when the plan's PTX is usable here),
  * the same with the warm runtime cache that the cold run saved,
  * with an AOT cubin for this GPU;
and steady-state latency at batch 1 and 8 against PyTorch eager running the same model with the
same weights (torchvision ResNet-50 loaded from the ONNX initializers), in the same run.

    python3 scripts/bench_nvrtc.py --workdir /tmp/rtxbench --md scripts/BENCH_NVRTC.md
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(plan_path: str, cache_in: str, cache_out: str, batch: int) -> None:
    """One fresh process: cuInit + CUDA context first (the same for every path, reported apart),
    then load() + first run() timed; prints JSON."""
    t_proc = time.perf_counter()
    from cuda.bindings import driver as cu

    cu.cuInit(0)
    _, dev = cu.cuDeviceGet(0)
    _, ctx = cu.cuDevicePrimaryCtxRetain(dev)
    cu.cuCtxSetCurrent(ctx)
    t_imp = time.perf_counter()
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.backends.nvrtc import runtime  # noqa: F401 - an app imports its backend at startup
    import_s = time.perf_counter() - t_imp

    plan = Path(plan_path).read_bytes()
    cache = Path(cache_in).read_bytes() if cache_in else None
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    t0 = time.perf_counter()
    p = NvrtcBackend().load(plan, runtime_cache=cache)
    t1 = time.perf_counter()
    y = p.run({"x": x})["y"]
    t2 = time.perf_counter()
    if cache_out:
        Path(cache_out).write_bytes(p.runtime_cache())
    print(json.dumps({"load_s": t1 - t0, "first_run_s": t2 - t1, "total_s": t2 - t0, "init_s": t_imp - t_proc,
                      "sources": p.kernel_sources, "provenance": p.provenance, "cache_status": p.cache_status,
                      "load_timings": p.load_timings, "import_s": import_s, "shape_plan_s": p.last_shape_plan_s,
                      "checksum": float(np.abs(y).sum())}))
    p.close()


def fresh(plan: Path, cache_in: Path | None = None, cache_out: Path | None = None, cold: bool = False) -> dict:
    """Run ``child`` in a new process. ``cold``: CUDA_CACHE_DISABLE=1, so the driver's own JIT cache
    (~/.nv/ComputeCache) cannot answer a PTX JIT from an earlier run."""
    cmd = [sys.executable, __file__, "--child", str(plan), str(cache_in or ""), str(cache_out or ""), "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cold:
        env["CUDA_CACHE_DISABLE"] = "1"
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def steady(fn, iters: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def kernel_profile(plan_bytes: bytes, batch: int, reps: int = 20) -> list[dict]:
    """Per-launch GPU time (CUDA events around each launch, no graph) of the nvrtc plan; for tuning."""
    from cuda.bindings import driver as cu

    from rtxpack.backends.nvrtc import NvrtcBackend

    p = NvrtcBackend().load(plan_bytes, options={"cuda_graph": False})
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    p.run({"x": x})
    st = next(iter(p._states.values()))
    launches = st.plan.launches
    _, e0 = cu.cuEventCreate(0)
    _, e1 = cu.cuEventCreate(0)
    times = [0.0] * len(launches)
    for _ in range(reps):
        for i, packed in enumerate(st.launches):
            cu.cuEventRecord(e0, p._stream)
            p._launch(packed)
            cu.cuEventRecord(e1, p._stream)
            cu.cuEventSynchronize(e1)
            times[i] += cu.cuEventElapsedTime(e0, e1)[1] / reps
    out = [{"kernel": ln.spec.key(), "grid": list(ln.grid), "ms": t,
            "args": [a for a in ln.args if isinstance(a, int)][:16]} for ln, t in zip(launches, times)]
    p.close()
    return out


def torch_resnet50(onnx_path: Path):
    import onnx
    import torch
    import torchvision
    from onnx import numpy_helper

    m = torchvision.models.resnet50(weights=None)
    sd = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(onnx_path)).graph.initializer}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return m.eval().cuda()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="/tmp/rtxpack_bench")
    ap.add_argument("--md", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    from rtxpack.demo import models as examples
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.backends.nvrtc.compile import nvrtc_version

    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = examples.resnet(work / "resnet50.onnx")
    be = NvrtcBackend()
    cc = "%d.%d" % torch.cuda.get_device_capability(0)
    gpu = torch.cuda.get_device_name(0)
    other = "8.6" if cc != "8.6" else "7.5"
    res: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "gpu": gpu, "cc": cc,
                 "nvrtc": "%d.%d" % nvrtc_version(), "torch": torch.__version__}
    builds = {}
    for name, kw in {"aot": dict(compute_capabilities=[cc], ptx=False),
                     "jit_nvrtc": dict(compute_capabilities=[other], ptx=False),
                     "jit_ptx": dict(compute_capabilities=[other], ptx=True)}.items():
        t = time.perf_counter()
        blob = be.build(onnx_path, **kw)
        builds[name] = time.perf_counter() - t
        (work / f"{name}.plan").write_bytes(blob)
    res["build_s"] = builds
    res["plan_mb"] = (work / "aot.plan").stat().st_size / 1e6
    firsts: dict = {}
    for mode in ("jit_nvrtc", "jit_ptx"):
        cold = [fresh(work / f"{mode}.plan", None, work / f"{mode}.cache", cold=True) for _ in range(args.reps)]
        warm = [fresh(work / f"{mode}.plan", work / f"{mode}.cache") for _ in range(args.reps)]
        firsts[f"cold_{mode}"] = cold
        firsts[f"warm_{mode}"] = warm
    firsts["aot_cubin"] = [fresh(work / "aot.plan") for _ in range(args.reps)]
    res["first_inference"] = {k: {"median_total_s": statistics.median(r["total_s"] for r in v),
                                  "median_load_s": statistics.median(r["load_s"] for r in v),
                                  "median_kernels_s": statistics.median(r["load_timings"]["kernels"] for r in v),
                                  "median_context_s": statistics.median(r["init_s"] for r in v),
                                  "runs": v,
                                  "sources": v[0]["sources"], "provenance": v[0]["provenance"],
                                  "cache_status": v[0]["cache_status"]} for k, v in firsts.items()}
    # steady state, same process, same weights
    model = torch_resnet50(onnx_path)
    p = be.load((work / "aot.plan").read_bytes())
    lat: dict = {}
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        ours = p.run({"x": x})["y"]
        xt = torch.from_numpy(x).cuda()
        row = {}
        with torch.no_grad():
            for tf32 in (False, True):
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                ref = model(xt).cpu().numpy()
                key = "torch_tf32" if tf32 else "torch_fp32"
                row[f"{key}_max_abs_diff"] = float(np.max(np.abs(ref - ours)))
                row[f"{key}_scale"] = float(np.max(np.abs(ref)))

                def t_gpu_resident():
                    model(xt)
                    torch.cuda.synchronize()

                def t_numpy():
                    model(torch.from_numpy(x).cuda()).cpu().numpy()

                row[f"{key}_eager_ms"] = steady(t_gpu_resident, args.iters) * 1e3
                row[f"{key}_eager_numpy_io_ms"] = steady(t_numpy, args.iters) * 1e3
        row["nvrtc_run_numpy_io_ms"] = steady(lambda: p.run({"x": x}), args.iters) * 1e3
        lat[batch] = row
    p.close()
    res["steady"] = lat
    res["kernel_profile"] = {b: kernel_profile((work / "aot.plan").read_bytes(), b) for b in (1, 8)}
    for b, prof in res["kernel_profile"].items():
        fam: dict = {}
        for r in prof:
            fam[r["kernel"]] = fam.get(r["kernel"], 0.0) + r["ms"]
        print(f"batch {b}: sum of kernel times {sum(fam.values()):.3f} ms;",
              ", ".join(f"{k} {v:.3f}" for k, v in sorted(fam.items(), key=lambda kv: -kv[1])))
    fi = res["first_inference"]
    res["ratios"] = {
        "cold_nvrtc_over_warm": fi["cold_jit_nvrtc"]["median_total_s"] / fi["warm_jit_nvrtc"]["median_total_s"],
        "cold_ptx_over_warm": fi["cold_jit_ptx"]["median_total_s"] / fi["warm_jit_ptx"]["median_total_s"],
        "b1_torch_fp32_over_nvrtc": lat[1]["torch_fp32_eager_numpy_io_ms"] / lat[1]["nvrtc_run_numpy_io_ms"],
        "b1_torch_tf32_over_nvrtc": lat[1]["torch_tf32_eager_numpy_io_ms"] / lat[1]["nvrtc_run_numpy_io_ms"],
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    if args.md:
        Path(args.md).write_text(markdown(res))


def markdown(r: dict) -> str:
    fi, st = r["first_inference"], r["steady"]
    lines = [f"## nvrtc backend benchmark ({r['date']})", "",
             f"GPU: {r['gpu']} (CC {r['cc']}); NVRTC {r['nvrtc']} on the GPU machine; PyTorch {r['torch']}. "
             f"Model: ResNet-50 (examples.resnet defaults, 25.6 M parameters, 224x224, fp32), plan {r['plan_mb']:.0f} MB.",
             "", "### Time to first inference (fresh process; load() + first run(), batch 1; median)", "",
             "Each figure starts after cuInit, the CUDA context and importing the backend (done before the timer "
             "in every path: median {:.0f} ms for cuInit + context, {:.0f} ms for the imports, reported apart) and "
             "ends when the first output is on the host; the plan file is already in memory. Cold runs set "
             "CUDA_CACHE_DISABLE=1 so the driver's own JIT cache cannot serve them.".format(
                 statistics.median(v["median_context_s"] for v in fi.values()) * 1e3,
                 statistics.median(r["import_s"] for v in fi.values() for r in v["runs"]) * 1e3), "",
             "| path | first inference | of which load() | of which getting kernels | kernels from |",
             "| --- | --- | --- | --- | --- |"]
    for k, label in (("cold_jit_nvrtc", "cold: no cubin, no PTX -> NVRTC JIT"),
                     ("cold_jit_ptx", "cold: no cubin -> PTX JIT through the driver"),
                     ("warm_jit_nvrtc", "warm runtime cache (from the NVRTC JIT run)"),
                     ("warm_jit_ptx", "warm runtime cache (from the PTX JIT run)"),
                     ("aot_cubin", "AOT cubin for this GPU")):
        v = fi[k]
        src = ", ".join(f"{a}={b}" for a, b in v["sources"].items() if b)
        lines.append(f"| {label} | {v['median_total_s'] * 1e3:.1f} ms | {v['median_load_s'] * 1e3:.1f} ms | "
                     f"{v['median_kernels_s'] * 1e3:.1f} ms | {src} |")
    ra = r["ratios"]
    kr = fi["cold_jit_nvrtc"]["median_kernels_s"] / max(fi["warm_jit_nvrtc"]["median_kernels_s"], 1e-9)
    kp = fi["cold_jit_ptx"]["median_kernels_s"] / max(fi["warm_jit_ptx"]["median_kernels_s"], 1e-9)
    lines += ["", f"First inference, warm cache vs cold JIT: {ra['cold_nvrtc_over_warm']:.1f}x faster (NVRTC JIT), "
                  f"{ra['cold_ptx_over_warm']:.1f}x faster (PTX JIT). Target: >= 16x.",
              f"Getting the kernels alone, warm cache vs cold JIT: {kr:.0f}x (NVRTC), {kp:.0f}x (PTX).", "",
              "### Steady state (median of run() calls; numpy in, numpy out)", "",
              "| batch | nvrtc plan (CUDA graph) | PyTorch eager fp32 | PyTorch eager TF32 (default) | "
              "PyTorch fp32, GPU-resident input | max abs diff vs torch fp32 (scale) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for b, v in st.items():
        lines.append(f"| {b} | {v['nvrtc_run_numpy_io_ms']:.2f} ms | {v['torch_fp32_eager_numpy_io_ms']:.2f} ms | "
                     f"{v['torch_tf32_eager_numpy_io_ms']:.2f} ms | {v['torch_fp32_eager_ms']:.2f} ms | "
                     f"{v['torch_fp32_max_abs_diff']:.2e} ({v['torch_fp32_scale']:.2f}) |")
    lines += ["", f"Batch 1: PyTorch eager fp32 / nvrtc = {ra['b1_torch_fp32_over_nvrtc']:.2f}x, "
                  f"PyTorch eager TF32 / nvrtc = {ra['b1_torch_tf32_over_nvrtc']:.2f}x (>1 means nvrtc is faster). "
                  "Target: nvrtc no slower than PyTorch eager at batch 1.", "",
              "AOT build times on the GPU machine's CPU: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["build_s"].items()),
              ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        main()
