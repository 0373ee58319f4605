#!/usr/bin/env python3
"""Time to first inference of each rtxpack.load() path on a GPU (nvrtc backend), fresh processes.

(a) full plan + shipped runtime cache, (b) stripped plan + refit from the ONNX, (c) offline with
only the ONNX (JIT build on this machine), (d) a second start after (c). Ratios are against (c),
measured in the same run. Needs a GPU; prints a table (``--json`` for machines).

    python scripts/bench_load.py [--model resnet26|small] [--repeat 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import load_flow  # noqa: E402

PATHS = ("a_full_shipped_cache", "b_stripped_refit", "c_offline_jit", "d_second_start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("resnet26", "small"), default="resnet26")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--chart", type=Path, metavar="PNG", help="also draw where the time goes (scripts/charts.py)")
    a = ap.parse_args()

    from rtxpack.demo import models as examples
    from rtxpack.core.device import detect_gpus

    gpus, notes = detect_gpus()
    if not gpus:
        print(f"bench_load: needs an NVIDIA GPU ({notes[0] if notes else 'none found'})", file=sys.stderr)
        return 2
    gpu = gpus[0]
    work = Path(tempfile.mkdtemp(prefix="rtxpack-bench-load-"))
    try:
        if a.model == "resnet26":
            onnx = examples.resnet(work / "models" / "net.onnx", layers=(2, 2, 2, 2), width=64, size=224)
            shape = [1, 3, 224, 224]
        else:
            onnx = examples.small_cnn(work / "models" / "net.onnx", channels=16)
            shape = [1, 3, 32, 32]
        repo, built, warmed = load_flow.build_repo(work, onnx, gpu.compute_capability, shape)
        runs: dict[str, list[dict]] = {p: [] for p in PATHS}
        with load_flow.Server(repo) as srv:
            for i in range(a.repeat):
                for d in ("store-a", "store-b", "store-c"):
                    shutil.rmtree(work / d, ignore_errors=True)
                for k, v in load_flow.run_paths(work, srv.url, onnx, shape).items():
                    runs[k].append(v)
        table = {}
        for p in PATHS:
            fi = statistics.median(r["first_inference_s"] for r in runs[p])
            table[p] = {"first_inference_s": fi, "process_wall_s": statistics.median(r["process_wall_s"] for r in runs[p]),
                        "load_s": statistics.median(r["load_s"] for r in runs[p]),
                        "max_err": max(r["max_err"] for r in runs[p]), "path": runs[p][0]["path"],
                        "kernels": runs[p][0]["kernels"], "runtime_cache": runs[p][0]["runtime_cache"],
                        "import_s": statistics.median(r["import_s"] for r in runs[p]),
                        "steps": {name: statistics.median(
                            sum(st["seconds"] for st in r["steps"] if st["step"] == name) for r in runs[p])
                            for name in sorted({st["step"] for r in runs[p] for st in r["steps"]})}}
        base = table["c_offline_jit"]["first_inference_s"]
        for p in PATHS:
            table[p]["ratio_vs_c"] = base / table[p]["first_inference_s"]
        out = {"date": date.today().isoformat(), "gpu": gpu.name, "cc": gpu.compute_capability,
               "driver": gpu.driver_version, "model": a.model, "repeat": a.repeat,
               "farm_build_s": built.get("seconds_wall"), "paths": table}
        if a.chart:
            import charts

            charts.load_paths({p: table[p]["first_inference_s"] for p in PATHS},
                              {p: {"imports": table[p]["import_s"], **{k: v for k, v in table[p]["steps"].items()
                                                                       if v >= 0.005}} for p in PATHS}, a.chart)
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"rtxpack.load() time to first inference, {a.model}, {gpu.name} (CC {gpu.compute_capability}), "
                  f"median of {a.repeat} fresh processes, {out['date']}")
            print(f"{'path':<24}{'first inference s':>18}{'speed-up vs (c)':>17}{'max err':>10}  how")
            for p in PATHS:
                t = table[p]
                print(f"{p:<24}{t['first_inference_s']:>18.3f}{t['ratio_vs_c']:>16.1f}x{t['max_err']:>10.1e}  "
                      f"{t['path']}; cache: {t['runtime_cache'][:60]}; kernels {t['kernels']}")
            print("\nwhere the time goes (median seconds; import = python + numpy + rtxpack):")
            for p in PATHS:
                t = table[p]
                parts = [f"import {t['import_s']:.2f}"] + [f"{k} {v:.3f}" for k, v in t["steps"].items() if v >= 0.005]
                print(f"  {p:<22} " + ", ".join(parts))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
