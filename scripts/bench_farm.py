#!/usr/bin/env python
"""Build-farm benchmark: throughput at -j 1 vs -j 2, unchanged rebuild of a 50-cell plan, and
repository bytes for one portable multi-CC engine vs one engine per CC.

    python scripts/bench_farm.py [--out scripts/BENCH_FARM.md] [--date 2026-11-20]

Uses the real TensorRT-RTX builder of this interpreter (CPU only) on the small example models.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtxpack import examples  # noqa: E402
from rtxpack.farm import build, load_config, make_plan  # noqa: E402
from rtxpack.manifest import Manifest  # noqa: E402

PROFILE = "[models.inputs.x]\nmin = [1, 64]\nopt = [4, 64]\nmax = [16, 64]\n"


def config(work: Path, n_mlp: int, cnn: bool, targets: list[list[str]]) -> Path:
    models = work / "models"
    parts = ['[project]\nname = "bench"\nversion = "1"\n']
    for i in range(n_mlp):
        examples.mlp(models / f"mlp{i}.onnx", seed=i)
        parts.append(f'[[models]]\nname = "mlp{i}"\nonnx = "models/mlp{i}.onnx"\n{PROFILE}')
    if cnn:
        examples.small_cnn(models / "cnn.onnx")
        parts.append('[[models]]\nname = "cnn"\nonnx = "models/cnn.onnx"\n')
    for k, ccs in enumerate(targets):
        parts.append(f'[[targets]]\nname = "t{k}"\ncompute_capabilities = {ccs!r}\n'.replace("'", '"'))
    p = work / "rtxpack.toml"
    p.write_text("".join(parts))
    return p


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from rtxpack.backends.tensorrt_rtx import installed_version

    v, cuda = installed_version()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, tensorrt-rtx {v} (cu{cuda}), no GPU")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as Markdown here")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--repeat", type=int, default=3, help="rebuild timings: best of N")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rtxpack-bench-"))
    os.environ["RTXPACK_CACHE_DIR"] = str(work / "cache")
    rows: list[tuple[str, str]] = []
    try:
        # 1. throughput: the same 12 cells at -j 1 and -j 2, each into a fresh repository
        cfg = config(work / "tp", 3, True, [["8.6", "8.9", "12.0"], ["12.0"], ["8.9"]])
        n = len(make_plan(load_config(cfg)).buildable)
        rate = {}
        for j in (1, 2):
            repo = work / f"tp-repo-j{j}"
            t = time.perf_counter()
            rep = build(cfg, repo, jobs=j)
            dt = time.perf_counter() - t
            assert rep.count("built") == n, rep.to_dict()
            rate[j] = n / dt * 60
            rows.append((f"build {n} cells, -j {j}", f"{dt:.2f} s = {rate[j]:.0f} cells/min"))
        rows.append(("speed-up -j 2 vs -j 1", f"{rate[2] / rate[1]:.2f}x"))

        # 2. unchanged rebuild of a 50-cell plan (10 models x 5 targets)
        cfg50 = config(work / "fifty", 10, False, [["8.6", "8.9", "12.0"], ["12.0"], ["8.9"], ["8.6"], ["8.0"]])
        repo50 = work / "fifty-repo"
        t = time.perf_counter()
        first = build(cfg50, repo50, jobs=2)
        full = time.perf_counter() - t
        assert first.count("built") == 50, first.to_dict()
        rows.append(("first build of the 50-cell plan, -j 2", f"{full:.2f} s"))
        lib, cli = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            again = build(cfg50, repo50, jobs=2)
            lib.append(time.perf_counter() - t)
            assert again.builder_runs == 0 and again.count("up-to-date") == 50
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "rtxpack.cli", "build", str(cfg50), "--repo", str(repo50), "--json"],
                           check=True, capture_output=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            cli.append(time.perf_counter() - t)
        rows.append(("unchanged rebuild, 50 cells, library call (best)", f"{min(lib):.3f} s (0 builder runs)"))
        rows.append(("unchanged rebuild, 50 cells, `rtxpack build` process (best)", f"{min(cli):.3f} s (target < 2 s)"))

        # 3. repository bytes: one portable engine vs one engine per CC
        for name, onnx_rows in (("mlp", 1), ("cnn", 0)):
            cfgb = config(work / f"bytes-{name}", onnx_rows, name == "cnn",
                          [["8.6", "8.9", "12.0"], ["8.6"], ["8.9"], ["12.0"]])
            repob = work / f"bytes-{name}-repo"
            build(cfgb, repob, jobs=2)
            m = Manifest.load(repob)
            portable = sum(a.size for a in m if len(a.compute_capabilities) == 3)
            single = sum(a.size for a in m if len(a.compute_capabilities) == 1)
            rows.append((f"{name}: one portable engine (8.6+8.9+12.0)", f"{portable:,} bytes"))
            rows.append((f"{name}: three single-CC engines (8.6, 8.9, 12.0)", f"{single:,} bytes "
                         f"({single / portable:.2f}x the portable engine)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"date {args.date}; {machine()}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.out:
        lines = [f"# Build-farm benchmark ({args.date})", "", f"Machine: {machine()}.", "",
                 "Command: `python scripts/bench_farm.py --out scripts/BENCH_FARM.md`. Models: rtxpack.examples "
                 "(MLP with dynamic batch, small CNN), fp32, real TensorRT-RTX AOT builds on the CPU.", "",
                 "| measurement | result |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
