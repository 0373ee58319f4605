"""The farm-to-PC flow on a GPU with the nvrtc backend, shared by tests/test_e2e_gpu.py and
scripts/bench_load.py.

1. build a repository on the CPU (``CUDA_VISIBLE_DEVICES=`` hides the GPU from the build):
   a portable plan for CC 8.6/8.9/12.0 with PTX (this GPU runs it forward) and a weight-stripped
   plan for exactly this GPU's CC;
2. ``rtxpack warm`` on the GPU adds runtime caches for this GPU;
3. serve the repository on loopback (http.server);
4. in fresh processes, ``rtxpack.load()``: (a) full plan + shipped runtime cache, (b) stripped plan
   + refit from the ONNX, (c) offline with only the ONNX (JIT), (d) a second start after (c).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
t_start = time.perf_counter()
import numpy as np
args = json.loads(sys.argv[1])
import rtxpack
from rtxpack.demo import models as examples
t_import = time.perf_counter()
s = rtxpack.load(args["model"], repo=args.get("repo"), onnx=args.get("onnx"), backend="nvrtc")
t_loaded = time.perf_counter()
x = np.random.default_rng(0).standard_normal(args["shape"]).astype(np.float32)
y = s.run({s.input_names[0]: x})
t_first = time.perf_counter()
ref = examples.reference_run(args["ref_onnx"], {s.input_names[0]: x})
err = max(float(np.abs(y[k] - ref[k]).max()) / max(1.0, float(np.abs(ref[k]).max())) for k in ref)
s.close()
p = s.provenance.to_dict()
kernels = next((st["sources"] for st in p["steps"] if st["step"] == "kernels"), None)
print("RESULT " + json.dumps({"path": p["path"], "plan": p["plan"], "runtime_cache": p["runtime_cache"],
      "fallbacks": p["fallbacks"], "kernels": kernels, "max_err": err,
      "import_s": t_import - t_start, "load_s": t_loaded - t_import, "first_run_s": t_first - t_loaded,
      "first_inference_s": t_first - t_start, "steps": p["steps"]}))
'''


def config_text(model_file: str, gpu_cc: str, *, warm_shape: list[int]) -> str:
    portable = [cc for cc in ("8.6", "8.9", "12.0") if cc != gpu_cc]
    return f'''[project]
name = "e2e"
version = "1.0.0"
[[models]]
name = "net"
onnx = "{model_file}"
warmup = [{{x = {warm_shape}}}]
[[targets]]
name = "portable"
backend = "nvrtc"
compute_capabilities = {json.dumps(portable)}
ptx = true
[[targets]]
name = "stripped"
backend = "nvrtc"
compute_capabilities = ["{gpu_cc}"]
strip_weights = true
'''


def env_for(cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTXPACK_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RTXPACK_CACHE_DIR"] = str(cache_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def rtxpack_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> dict:
    r = subprocess.run([sys.executable, "-m", "rtxpack.cli", *args, "--json"], capture_output=True, text=True,
                       env=env, timeout=timeout, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"rtxpack {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(r.stdout)


def build_repo(work: Path, onnx: Path, gpu_cc: str, warm_shape: list[int]) -> tuple[Path, dict, dict]:
    cfg = work / "rtxpack.toml"
    cfg.write_text(config_text(str(onnx), gpu_cc, warm_shape=warm_shape))
    repo = work / "repo"
    t0 = time.perf_counter()
    built = rtxpack_cli(["build", str(cfg), "--repo", str(repo), "-j", "2"],
                        env_for(work / "farm-cache", CUDA_VISIBLE_DEVICES=""))   # the build sees no GPU
    built["seconds_wall"] = time.perf_counter() - t0
    warmed = rtxpack_cli(["warm", str(cfg), "--repo", str(repo)], env_for(work / "farm-cache"))
    return repo, built, warmed


class Server:
    """Static files of a repository on 127.0.0.1 (any HTTP server or CDN would do)."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_Quiet, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass


def child(args: dict, env: dict[str, str], timeout: float = 600) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=ROOT)
    wall = time.perf_counter() - t0
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"load child failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    out["process_wall_s"] = wall
    return out


def run_paths(work: Path, url: str, onnx: Path, shape: list[int]) -> dict[str, dict]:
    """(a)..(d), each in a fresh process; (a) and (b) with an empty local store of their own."""
    base = {"model": "net", "shape": shape, "ref_onnx": str(onnx)}
    res = {}
    res["a_full_shipped_cache"] = child({**base, "repo": url}, env_for(work / "store-a"))
    res["b_stripped_refit"] = child({**base, "repo": url, "onnx": str(onnx)}, env_for(work / "store-b"))
    res["c_offline_jit"] = child({**base, "onnx": str(onnx)}, env_for(work / "store-c", RTXPACK_OFFLINE="1"))
    res["d_second_start"] = child({**base, "onnx": str(onnx)}, env_for(work / "store-c", RTXPACK_OFFLINE="1"))
    return res
