#!/usr/bin/env python
"""The exported-model corpus (tests/models/) through the nvrtc backend, checked against onnxruntime.

For every model: materialize its weights (fixed seed), build the plan ahead of time (timed, plan
size), then run it at batch 1 and a larger batch, and at the profile's min and max for dynamic
sequence / spatial sizes, comparing each output with onnxruntime's CPU result (max error <= 1e-3
of the output's scale). On a GPU (``--run gpu``) it also times the batch-1 steady state (CUDA
graph replay) and, when torch is there, the same architecture in PyTorch eager captured in a
CUDA graph (the peer). ``--run emulator`` runs on the CPU CUDA emulator (tests/cudaemu) instead.

    python scripts/check_corpus.py --run gpu --jobs 8 --json out.json --md out.md
    python scripts/check_corpus.py --run emulator --models 'bert-*' 'gpt2-*'
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

import model_corpus as mc  # noqa: E402

TOL = 1e-3
TOL_FP16 = 1e-2      # fp16 plans: fp16 operands on tensor cores, fp32 accumulation
#: torch architectures of the zoo reconstructions (the zoo files themselves are Caffe2 conversions)
ZOO_PEERS = {"zoo_bvlcalexnet-9": "alexnet", "zoo_vgg19-caffe2-9": "vgg19", "zoo_squeezenet1.0-8": "squeezenet1_0",
             "zoo_inception-v1-7": "googlenet"}


def _dynamic_dims(name: str) -> dict[str, tuple[int, int, int]]:
    """Named non-batch dynamic dims -> (min, opt, max) from the corpus profile."""
    out: dict[str, tuple[int, int, int]] = {}
    for inp in mc.info(name)["inputs"]:
        prof = inp.get("profile") or {}
        for k, d in enumerate(inp["shape"]):
            if isinstance(d, str) and k > 0 and prof:
                out[d] = (prof["min"][k], prof["opt"][k], prof["max"][k])
    return out


def build_one(name: str, workdir: str, cc: str, precision: str = "fp32") -> dict[str, Any]:
    """Materialize + AOT build (runs in a worker process)."""
    from rtxpack.backends.nvrtc import NvrtcBackend

    rec: dict[str, Any] = {"model": name, "family": mc.info(name).get("family")}
    try:
        path = Path(workdir) / f"{name}.onnx"
        if not path.exists():
            mc.materialize(name, workdir, seed=0)
        t0 = time.perf_counter()
        plan = NvrtcBackend().build(path, compute_capabilities=[cc], ptx=False, profiles=mc.profiles(name),
                                    precision=precision)
        rec["build_s"] = round(time.perf_counter() - t0, 2)
        rec["plan_bytes"] = len(plan)
        (Path(workdir) / f"{name}.plan").write_bytes(plan)
        rec["status"] = "built"
    except Exception as e:  # noqa: BLE001 - a report, not a crash
        rec.update(status="build-failed", error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
    return rec


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _err(got: np.ndarray, ref: np.ndarray) -> float:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return float("inf")
    if ref.dtype == np.bool_ or np.issubdtype(ref.dtype, np.integer):
        return float(np.mean(got.astype(np.int64) != ref.astype(np.int64)))
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-6)
    if not np.all(np.isfinite(got[np.isfinite(ref)])):
        return float("inf")
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) / scale if ref.size else 0.0


def _cases(name: str, big_batch: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, input_shapes kwargs) to check: batch 1, a larger batch, the dynamic dims' min and max."""
    static_batch = all(not isinstance(inp["shape"][0], str) for inp in mc.info(name)["inputs"])
    cases = [("b1", {"batch": 1})]
    if not static_batch:
        cases.append((f"b{big_batch}", {"batch": big_batch}))
    dyn = _dynamic_dims(name)
    if dyn:
        cases.append(("min", {"batch": 1, "dims": {k: v[0] for k, v in dyn.items()}}))
        cases.append(("max", {"batch": 1 if static_batch else 2, "dims": {k: v[2] for k, v in dyn.items()}}))
    return cases


def torch_peer_call(name: str, feeds: dict[str, np.ndarray], half: bool = False) -> Any:
    """``call()`` running the same architecture as corpus model ``name`` in PyTorch on the GPU (its own
    initial weights: kernel times do not depend on the values), inputs as CUDA tensors."""
    import torch

    import export_models as em

    base = ZOO_PEERS.get(name) or name.rsplit("-", 1)[0]
    if name in ZOO_PEERS:
        module = em.import_torchvision().models.get_model(base, weights=None)
    else:
        spec = next(s for s in em.all_specs() if s.name == base)
        module = spec.make()
    fn = getattr(module, "_export_fn", None)
    module = module.cuda().eval()
    args = [torch.from_numpy(np.ascontiguousarray(v)).cuda() for v in feeds.values()]
    if half:
        module = module.half()
        args = [a.half() if a.is_floating_point() else a for a in args]
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    if fn is not None:
        return module, lambda m=module: fn(m, *args)
    return module, lambda m=module: m(*args)


def cuda_graph_ms(call: Any, iters: int) -> float:
    """Median ms of one replay of ``call`` captured in a CUDA graph (after 3 warm-up calls)."""
    import torch

    with torch.no_grad():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                call()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            call()
        return event_ms(g.replay, iters)


def event_ms(fn: Any, iters: int) -> float:
    import torch

    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def _torch_peer(name: str, feeds: dict[str, np.ndarray], iters: int) -> float | None:
    """Batch-1 median ms of the same architecture in PyTorch eager, captured in a CUDA graph."""
    return cuda_graph_ms(torch_peer_call(name, feeds)[1], iters)


def check_one(rec: dict[str, Any], workdir: str, run: str, big_batch: int, iters: int, peer: bool,
              only: tuple[str, ...] = (), tol: float = TOL) -> dict[str, Any]:
    name = rec["model"]
    if rec["status"] != "built":
        return rec
    path = Path(workdir) / f"{name}.onnx"
    plan = (Path(workdir) / f"{name}.plan").read_bytes()
    try:
        if run == "gpu":
            from rtxpack.backends.nvrtc import NvrtcBackend

            loaded = NvrtcBackend().load(plan)
        else:
            from cudaemu import EmuLoadedPlan

            loaded = EmuLoadedPlan(plan)
        worst: dict[str, float] = {}
        with loaded:
            for label, kw in _cases(name, big_batch):
                if only and label not in only and not (label.startswith("b") and "bN" in only and label != "b1"):
                    continue
                feeds = mc.typical_inputs(name, seed=1, **kw)
                ref = _ort(path, feeds)
                got = loaded.run(feeds)
                worst[label] = max(_err(got[k], v) for k, v in ref.items())
            rec["errors"] = {k: float(f"{v:.3g}") for k, v in worst.items()}
            rec["status"] = "ok" if all(v <= tol for v in worst.values()) else "mismatch"
            rec["tuning"] = dict(getattr(loaded, "tuning", {}) or {})
            if run == "gpu":
                feeds = mc.typical_inputs(name, seed=1, batch=1)
                first = loaded.run(feeds)
                for _ in range(3):      # the CUDA graph's replays give the same result as the first run
                    again = loaded.run(feeds)
                    rec["replay_error"] = max(rec.get("replay_error", 0.0),
                                              max(_err(again[k], first[k]) for k in first))
                rec["nvrtc_ms"] = round(loaded.time_steady(feeds, iters), 3)
        if run == "gpu" and peer:
            try:
                rec["torch_cuda_graph_ms"] = round(_torch_peer(name, mc.typical_inputs(name, seed=1, batch=1),
                                                              iters), 3)
                rec["ratio"] = round(rec["nvrtc_ms"] / rec["torch_cuda_graph_ms"], 2)
            except Exception as e:  # noqa: BLE001 - the peer is a reference, not the subject
                rec["peer_error"] = f"{type(e).__name__}: {e}"[:300]
    except Exception as e:  # noqa: BLE001 - a report, not a crash
        rec.update(status="run-failed", error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
    return rec


def markdown(recs: list[dict[str, Any]]) -> str:
    rows = ["| model | family | status | max error / scale (b1, bN, min, max) | build s | plan MB | nvrtc ms | "
            "PyTorch CUDA graph ms | ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        err = ", ".join(f"{k} {v:.1e}" for k, v in (r.get("errors") or {}).items()) or r.get("error", "")[:120]
        rows.append(f"| {r['model']} | {r.get('family', '')} | {r['status']} | {err} | {r.get('build_s', '')} | "
                    f"{r.get('plan_bytes', 0) / 1e6:.1f} | {r.get('nvrtc_ms', '')} | "
                    f"{r.get('torch_cuda_graph_ms', r.get('peer_error', '')[:40])} | {r.get('ratio', '')} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["*"], help="glob patterns of corpus model names")
    ap.add_argument("--run", choices=("gpu", "emulator", "none"), default="gpu")
    ap.add_argument("--cc", default=None, help="compute capability to build for (default: this GPU's, else 9.0)")
    ap.add_argument("--workdir", default="/tmp/rtxpack_corpus")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--batch", type=int, default=4, help="the larger batch")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                    help="fp16: tensor-core plans, checked within 1e-2 of the output's scale")
    ap.add_argument("--model-timeout", type=float, default=240, help="seconds per model on the GPU")
    ap.add_argument("--cases", default="", help="only these checks, e.g. b1,min (default: b1, bN, min, max)")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="")
    args = ap.parse_args(argv)
    names = [n for n in mc.list_models() if any(fnmatch.fnmatch(n, p) for p in args.models)]
    cc = args.cc
    if cc is None:
        from rtxpack.core.device import detect_gpus

        gpus, _ = detect_gpus()
        cc = gpus[0].compute_capability if gpus else "9.0"
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        built = list(pool.map(build_one, names, [args.workdir] * len(names), [cc] * len(names),
                              [args.precision] * len(names)))
    print(f"built {sum(r['status'] == 'built' for r in built)}/{len(built)} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    recs = []
    import multiprocessing

    # one fresh process per model on the GPU: a CUDA error that poisons a context stays with its model
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) if args.run == "gpu" else None
    for rec in built:
        if args.run != "none":
            job = (rec, args.workdir, args.run, args.batch, args.iters, not args.no_peer,
                   tuple(c for c in args.cases.split(",") if c), TOL_FP16 if args.precision == "fp16" else TOL)
            if pool is not None:
                try:
                    rec = pool.submit(check_one, *job).result(timeout=args.model_timeout)
                except Exception as e:  # noqa: BLE001 - a crashed or hung child fails its model only
                    rec = {**rec, "status": "run-failed", "error": f"{type(e).__name__}: {e}"[:500]}
                    pool.shutdown(cancel_futures=True)
                    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1)
            else:
                rec = check_one(*job)
        recs.append(rec)
        if args.json:     # after every model: a run cut short still leaves what it measured
            Path(args.json).write_text(json.dumps(recs, indent=1))
        print(f"{rec['model']:<28} {rec['status']:<12} {rec.get('errors', rec.get('error', ''))} "
              f"nvrtc {rec.get('nvrtc_ms', '-')} ms, torch {rec.get('torch_cuda_graph_ms', '-')} ms", flush=True)
    if pool is not None:
        pool.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(recs, indent=1))
    if args.md:
        Path(args.md).write_text(markdown(recs))
    bad = [r["model"] for r in recs if r["status"] not in ("ok", "built")]
    print(f"{len(recs) - len(bad)}/{len(recs)} ok; not ok: {', '.join(bad) or 'none'}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
